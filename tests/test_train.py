"""Training loop tests: loss goes down, plateau, NaN guard, checkpoint
refusal, restore for inference, and kill-and-resume equals no interruption."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from parallelnet import checkpointing
from parallelnet import mesh as mesh_lib
from parallelnet import models
from parallelnet import train
import resume_worker
import train_helpers
import workers

pytestmark = pytest.mark.usefixtures('fast_compile')

HERE = os.path.dirname(os.path.abspath(__file__))


def _speech_config():
  c = train_helpers.tiny_config()
  c.model.modalities = 'speech'  # Half the compile time of the fused model.
  return c


@pytest.mark.slow
def test_steps_reduce_loss_on_fixed_batch():
  config = _speech_config()
  mesh = mesh_lib.make_mesh()
  model = models.get_model(config)
  steps = train.Steps(config, mesh)
  state = train.init_train_state(config, model, mesh)
  batch = next(train_helpers.ArrayData(config).train_batches(
      config, mesh, epoch=0))
  losses = []
  for step in range(6):
    state, out = steps.train(state, batch, steps.step_key(state.rng, step))
    losses.append(float(out['loss']))
  assert int(state.step) == 6
  assert all(b < a for a, b in zip(losses, losses[1:])), losses
  assert losses[-1] < 0.85 * losses[0], losses
  # eval_step agrees with the masked mean of the same loss in eval mode.
  ev = steps.eval(state, dict(batch, mask=jnp.ones(8, bool)))
  assert int(ev['count']) == 8 and int(ev['confusion'].sum()) == 8


def test_plateau_cuts_learning_rate_after_patience_epochs():
  tx = optax.adam(1.0)
  params = {'w': jnp.zeros(3)}
  state = train.TrainState.create(
      apply_fn=None, params=params, tx=tx,
      plateau=train.plateau_transform(0.5, 2).init(params))
  scales = []
  for val_loss in (1.0, 0.9, 0.95, 0.92, 0.91, 0.5):
    state = train.update_plateau(state, jnp.float32(val_loss),
                                 plateau_factor=0.5, plateau_patience=2)
    scales.append(float(state.plateau.scale))
  # Two epochs without beating 0.9 (0.95, 0.92) halve the scale once.
  assert scales == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5]


def test_early_stopping_counts_like_keras():
  stopper = train.make_early_stopping(2)
  stopped_after = None
  for epoch, val_loss in enumerate((1.0, 0.8, 0.9, 0.85, 0.7)):
    stopper = stopper.update(val_loss)
    if stopper.should_stop:
      stopped_after = epoch
      break
  # Best at epoch 1; epochs 2 and 3 do not improve: stop after epoch 3.
  assert stopped_after == 3
  assert stopper.best_metric == 0.8


@pytest.mark.slow
def test_nan_guard_mismatch_refusal_and_restore(tmp_path):
  config = _speech_config()
  config.train.num_epochs = 2
  workdir = str(tmp_path / 'run')
  data = train_helpers.ArrayData(config, sizes=(32, 8, 8), nan_at=(1, 1))
  # 4 steps per epoch: step 4 is the 2nd batch of epoch 1, with a NaN pixel.
  with pytest.raises(FloatingPointError,
                     match=r'Non-finite loss \(nan\) at training step 5.*'
                           r'last good checkpoint is step 4'):
    train.train_and_evaluate(config, workdir, data=data)
  assert not os.path.exists(os.path.join(workdir, 'eval_metrics.json'))

  model, variables, step = checkpointing.restore_for_inference(
      config, workdir, 'latest')
  assert step == 4
  # The workdir alone restores too: training wrote its full config.
  saved, _, v_alone, step_alone = checkpointing.restore_from_workdir(
      workdir, 'latest')
  assert step_alone == 4 and saved.model.to_dict() == config.model.to_dict()
  assert list(saved.dataset.classes) == list(config.dataset.classes)
  assert saved.train.learning_rate == config.train.learning_rate
  jax.tree.map(np.testing.assert_array_equal, v_alone, variables)
  with pytest.raises(checkpointing.errors.UserError, match='No config.json'):
    checkpointing.read_config(str(tmp_path))
  assert all(np.isfinite(x).all()
             for x in jax.tree.leaves(variables['params']))
  logits, _ = model.apply(variables, *models.dummy_inputs(config, 2),
                          train=False)
  assert logits.shape == (2, 4)

  other = _speech_config()
  other.model.head_dim = 16
  with pytest.raises(ValueError, match=r'model\.head_dim is 8 in the '
                                       r'checkpoint but 16 in the config'):
    train.train_and_evaluate(other, workdir, data=data)
  with pytest.raises(ValueError, match=r'model\.head_dim'):
    checkpointing.restore_for_inference(other, workdir)
  with pytest.raises(FileNotFoundError, match='No .best. checkpoint'):
    checkpointing.restore_for_inference(config, str(tmp_path / 'empty'))
  assert not (tmp_path / 'empty').exists()  # Nothing created on failure.


class _FoldData:
  """ArrayData whose examples depend on config.dataset.fold."""

  def __getattr__(self, name):
    def call(config, *args, **kw):
      data = train_helpers.ArrayData.per_fold(config, sizes=(16, 8, 8))
      return getattr(data, name)(config, *args, **kw)
    return call


@pytest.mark.slow
def test_cross_validate_reports_mean_and_std_over_folds(tmp_path):
  config = _speech_config()
  config.dataset.num_folds = 2
  config.train.num_epochs = 1
  result = train.cross_validate(config, str(tmp_path), data=_FoldData())
  saved = json.loads((tmp_path / 'cv_metrics.json').read_text())
  assert saved == result and result['num_folds'] == 2
  for k in ('accuracy', 'macro_f1', 'cohen_kappa'):
    per_fold = [json.loads((tmp_path / f'fold_{i}' / 'eval_metrics.json')
                           .read_text())[k] for i in range(2)]
    assert result[k]['mean'] == pytest.approx(np.mean(per_fold))
    assert result[k]['std'] == pytest.approx(np.std(per_fold))
  # TensorBoard gets the test metrics and the confusion-matrix figure.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tags = set()
  for events in (tmp_path / 'fold_0').glob('events.out.tfevents.*'):
    for event in tf.compat.v1.train.summary_iterator(str(events)):
      tags.update(v.tag for v in event.summary.value)
  assert {'test/accuracy', 'test/confusion_matrix'} <= tags, tags


def _run(tmp_path, name, args, env):
  return workers.start('resume_worker', args, tmp_path / f'{name}.log',
                       env=env)


@pytest.mark.slow
@pytest.mark.xdist_group('resume_reference')
def test_sigkill_and_resume_equals_uninterrupted_run(tmp_path,
                                                    resume_reference):
  """Real pipeline (synthetic corpus) and model; a checkpoint every step.
  The uninterrupted run and the compilation cache: conftest's
  resume_reference."""
  data_dir, env = resume_reference.data_dir, resume_reference.env
  full, killed = resume_reference.workdir, tmp_path / 'killed'
  b = _run(tmp_path, 'killed', [killed, data_dir], env)
  latest = killed / 'checkpoints' / 'latest'
  deadline = time.time() + 240
  # Kill once a mid-training checkpoint (step >= 4 of 6) is being written.
  while not (latest.exists() and any(
      p.name.split('.')[0].isdigit() and int(p.name.split('.')[0]) >= 4
      for p in latest.iterdir())):
    assert b.popen.poll() is None, b.output()[-3000:]
    assert time.time() < deadline
    time.sleep(0.02)
  b.popen.send_signal(signal.SIGKILL)
  b.popen.wait()
  assert not (killed / 'eval_metrics.json').exists()
  out_b = workers.finish([_run(tmp_path, 'resumed', [killed, data_dir],
                               env)], timeout=240)[0]
  assert 'Resuming at epoch' in out_b
  expected = json.loads((full / 'eval_metrics.json').read_text())
  got = json.loads((killed / 'eval_metrics.json').read_text())
  assert got == expected
  # Stronger than the JSON: the best parameters are bit-identical.
  cfg = resume_worker.config(data_dir)
  _, v_full, _ = checkpointing.restore_for_inference(cfg, str(full))
  _, v_killed, _ = checkpointing.restore_for_inference(cfg, str(killed))
  for x, y in zip(jax.tree.leaves(v_full), jax.tree.leaves(v_killed)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_checkpointing_does_not_import_train():
  """train imports checkpointing, never the reverse (DESIGN.md): a fresh
  interpreter that imports checkpointing and restores nothing has no train."""
  out = subprocess.run(
      [sys.executable, '-c',
       'import ast, inspect, sys; from parallelnet import checkpointing; '
       'tree = ast.parse(inspect.getsource(checkpointing)); '
       'names = [a.name for n in ast.walk(tree) '
       'if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names]; '
       'print("train" in names, "parallelnet.train" in sys.modules)'],
      capture_output=True, text=True, cwd=os.path.dirname(HERE), check=True)
  assert out.stdout.split() == ['False', 'False'], out.stdout
