"""--mode=predict (parallelnet/predict.py) on a real TFDS test split and on
a manifest folder without labels."""

import csv
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from parallelnet import checkpointing
from parallelnet import models
from parallelnet import predict
from parallelnet import train
from parallelnet.models import scaling as model_scaling
import train_helpers

pytestmark = pytest.mark.usefixtures('fast_compile')


def _config(tmp_path):
  return train_helpers.tiny_config(data_dir=str(tmp_path / 'tfds'),
                                   synthetic_size=40)


def _checkpoint(config, workdir):
  """A 'best' checkpoint of freshly initialised variables (no training)."""
  model = models.get_model(config)
  v = models.init_variables(model, config, jax.random.key(3),
                            load_pretrained=False)
  ckpts = checkpointing.Checkpoints(workdir, config, async_save=False)
  ckpts.save('best', 5, dict(step=jnp.int32(5), params=v['params'],
                             batch_stats=v['batch_stats']), {})
  ckpts.wait()
  ckpts.close()
  return model, v


def _rows(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope='module')
def scored(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('predict')
  config = _config(tmp)
  workdir = str(tmp / 'work')
  model, variables = _checkpoint(config, workdir)
  metrics = train.evaluate(config, workdir)
  out = predict.predict(config, workdir)
  return config, workdir, model, variables, metrics, out


@pytest.mark.slow
def test_test_split_accuracy_equals_eval(scored):
  config, workdir, _, _, metrics, out = scored
  classes = list(config.dataset.classes)
  rows = _rows(os.path.join(workdir, 'predictions.csv'))
  with open(os.path.join(workdir, 'eval_metrics.json')) as f:
    written = json.load(f)
  total = int(np.sum(written['confusion_matrix']))
  assert len(rows) == total == out['num_examples']
  assert len({r['id'] for r in rows}) == total  # Every example once.
  assert list(rows[0]) == (['id', 'label', 'predicted'] +
                           [f'p_{c}' for c in classes] + ['missing'])
  assert {r['missing'] for r in rows} == {''}
  accuracy = np.mean([r['label'] == r['predicted'] for r in rows])
  assert accuracy == pytest.approx(metrics['accuracy'], abs=1e-9)
  assert out['accuracy'] == pytest.approx(written['accuracy'], abs=1e-9)
  for r in rows:
    p = np.array([float(r[f'p_{c}']) for c in classes])
    assert p.sum() == pytest.approx(1.0, abs=1e-4)
    assert classes[int(np.argmax(p))] == r['predicted']


@pytest.mark.slow
def test_test_split_rows_line_up_with_a_direct_forward_pass(scored):
  """Example by example: each row's id, label and probabilities are those
  of the same stored example through the model (a mix-up of ids, labels or
  rows across a batch or the padding would fail here)."""
  config, workdir, model, variables, _, _ = scored
  import input_pipeline  # pylint: disable=g-import-not-at-top
  classes = list(config.dataset.classes)
  ex = input_pipeline.load_examples(model_scaling.resolve_config(config),
                                    'test')
  logits, _ = jax.jit(lambda v, i, s: model.apply(v, i, s, train=False))(
      variables, ex['image'], ex['spectrogram'])
  want = np.asarray(jax.nn.softmax(logits, -1))
  rows = _rows(os.path.join(workdir, 'predictions.csv'))
  assert [r['id'] for r in rows] == list(ex['id'])  # Stored order.
  # Rows differ, so a permutation of them would not pass unnoticed.
  assert np.abs(want[:, None] - want[None]).max(-1)[~np.eye(len(want),
                                                             dtype=bool)
                                                   ].min() > 1e-7
  for r, label, p in zip(rows, ex['label'], want):
    assert r['label'] == classes[int(label)]
    got = np.array([float(r[f'p_{c}']) for c in classes])
    np.testing.assert_allclose(got, p, atol=1e-5, err_msg=r['id'])
    assert r['predicted'] == classes[int(np.argmax(p))]


@pytest.mark.slow
def test_unlabelled_manifest_folder(scored, tmp_path, caplog):
  config, workdir, model, variables, _, _ = scored
  import input_pipeline  # pylint: disable=g-import-not-at-top
  from input_pipeline import manifest  # pylint: disable=g-import-not-at-top
  # Three pairs of the synthetic corpus, copied and listed without labels.
  corpus, _ = _corpus_rows(config)
  folder = tmp_path / 'new'
  folder.mkdir()
  with open(folder / 'manifest.csv', 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['id', 'image', 'audio'])
    for i, row in enumerate(corpus[:3]):
      names = [f'{i}_{os.path.basename(row[c])}' for c in ('image', 'audio')]
      for col, name in zip(('image', 'audio'), names):
        shutil.copy(row[col], folder / name)
      w.writerow([f'new{i}'] + names)
  # The last clip twice as long: cropped, with one notice line.
  wav, sr = sf.read(folder / names[1])
  sf.write(folder / names[1], np.concatenate([wav, wav]), sr)
  rows_read, bad = manifest.read_manifest(str(folder), config.dataset.classes,
                                          require_label=False)
  assert not bad and [r['label'] for r in rows_read] == [-1, -1, -1]
  with caplog.at_level('WARNING'):
    cfg, out_dir, out = predict_folder(config, workdir, folder, tmp_path)
  assert '1 audio file(s) differ' in caplog.text
  assert out['accuracy'] is None and out['num_examples'] == 3
  rows = _rows(out_dir / 'predictions_new.csv')
  # A folder's rows have their own file: the test split's is not overwritten.
  assert not (out_dir / 'predictions.csv').exists()
  assert [r['id'] for r in rows] == ['new0', 'new1', 'new2']
  assert 'label' not in rows[0]
  # The probabilities are the model's on the preprocessed pairs.
  for r, row in zip(rows, rows_read):
    pair = input_pipeline.preprocess_pair(
        model_scaling.resolve_config(cfg), row['image'], row['audio'])
    logits, _ = model.apply(variables, pair['image'][None],
                            pair['spectrogram'][None], train=False)
    want = np.asarray(jax.nn.softmax(logits, -1))[0]
    got = np.array([float(r[f'p_{c}']) for c in cfg.dataset.classes])
    np.testing.assert_allclose(got, want, atol=1e-5)


def predict_folder(config, workdir, folder, tmp_path):
  """predict on manifest folder `folder` with `workdir`'s checkpoint, the
  output in a new workdir tmp_path/out. Returns (config, out_dir, result)."""
  cfg = config.copy_and_resolve_references()
  cfg.predict.manual_dir = str(folder)
  out_dir = tmp_path / 'out'
  out_dir.mkdir()
  os.symlink(os.path.join(workdir, 'checkpoints'), out_dir / 'checkpoints')
  return cfg, out_dir, predict.predict(cfg, str(out_dir))


def _corpus_rows(config):
  """The synthetic corpus's manifest rows (absolute paths)."""
  import glob  # pylint: disable=g-import-not-at-top
  from input_pipeline import manifest  # pylint: disable=g-import-not-at-top
  found = glob.glob(os.path.join(config.dataset.data_dir, '**',
                                 'manifest.csv'), recursive=True)
  assert found, 'no synthetic corpus manifest under data_dir'
  return manifest.read_manifest(os.path.dirname(found[0]),
                                config.dataset.classes)
