"""Missing and degraded modalities: modality dropout (parallelnet/modality.py),
pairs lacking a modality in --mode=predict, the degradations of
input_pipeline/degrade.py and --mode=robustness (parallelnet/robustness.py)."""

import csv
import os
import shutil

import jax
import numpy as np
import pytest

from input_pipeline import degrade
from parallelnet import losses
from parallelnet import modality
from parallelnet.core.errors import UserError
from tests import test_predict
from tests import train_helpers

pytestmark = pytest.mark.usefixtures('fast_compile')


# ------------------------------------------------------- modality dropout --


def test_dropout_replaces_the_chosen_modality_at_the_rate():
  n, rate, split = 4000, 0.3, 0.25
  rng = np.random.default_rng(0)
  batch = dict(image=rng.random((n, 4, 4, 3), np.float32) + 1,
               spectrogram=rng.random((n, 3, 2, 1), np.float32) + 1,
               label=np.arange(n, dtype=np.int32))
  fn = jax.jit(lambda b, k: modality.apply_modality_dropout(b, k, rate, split))
  counts = np.zeros(3)
  draws = 5
  for d in range(draws):
    out = jax.device_get(fn(batch, jax.random.key(d)))
    gone_i = np.all(out['image'].reshape(n, -1) == 0, axis=1)
    gone_s = np.all(out['spectrogram'].reshape(n, -1) == 0, axis=1)
    assert not np.any(gone_i & gone_s)  # At most one modality per example.
    # Kept inputs are untouched, bit for bit; labels too.
    np.testing.assert_array_equal(out['image'][~gone_i], batch['image'][~gone_i])
    np.testing.assert_array_equal(out['spectrogram'][~gone_s],
                                  batch['spectrogram'][~gone_s])
    np.testing.assert_array_equal(out['label'], batch['label'])
    counts += [gone_i.sum(), gone_s.sum(), (~gone_i & ~gone_s).sum()]
  total = n * draws
  for got, p in zip(counts / total,
                    (rate * split, rate * (1 - split), 1 - rate)):
    assert abs(got - p) < 4 * np.sqrt(p * (1 - p) / total)
  # Rate 0 (the paper's recipe) leaves the batch as it is.
  assert modality.apply_modality_dropout(batch, jax.random.key(0), 0.0,
                                         0.5) is batch


@pytest.fixture(scope='module')
def tiny_n2():
  """The variant putting train_helpers' tiny trunk in both N2 trunks, kept
  registered for the whole module (the `trained` checkpoint is read by
  several tests): none of these tests is about the trunk."""
  from parallelnet.models import backbones  # pylint: disable=g-import-not-at-top
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(backbones._REGISTRY, train_helpers.TINY_TRUNK,  # pylint: disable=protected-access
               train_helpers.tiny_trunk)
    yield f'n2={train_helpers.TINY_TRUNK}'


@pytest.mark.slow
def test_train_step_reads_the_dropped_batch(tiny_n2):
  """With rate 1 and split 1 every image is dropped: the step does not
  depend on the images (zeroing them changes nothing), but does on the
  speech. One compilation: the fresh TrainState (quick variables, Adam) is
  built inside the step (a random initialiser would compile for longer than
  the step; the initialisers are not the subject)."""
  from parallelnet import models  # pylint: disable=g-import-not-at-top
  from parallelnet import train  # pylint: disable=g-import-not-at-top
  config = train_helpers.tiny_config(tiny_n2)
  model = models.get_model(config)
  variables = train_helpers.quick_variables(
      lambda k: models.init_variables(model, config, k))
  data = train_helpers.ArrayData(config)
  batch = {k: v[:8] for k, v in data.splits['train'].items()}

  @jax.jit
  def step(variables, batch, key):
    tc = config.train
    state = train.create_train_state(
        model, variables, jax.random.key_data(jax.random.key(0)),
        learning_rate=tc.learning_rate, plateau_factor=tc.plateau_factor,
        plateau_patience=tc.plateau_patience)
    return train.train_step(state, batch, key,
                            loss_kwargs=losses.loss_weights(tc),
                            modality_dropout=(1.0, 1.0))

  key = jax.random.key(1)
  dropped, out = step(variables, batch, key)
  zeroed, out_z = step(variables,
                       dict(batch, image=np.zeros_like(batch['image'])), key)
  assert float(out['loss']) == float(out_z['loss'])
  jax.tree.map(np.testing.assert_array_equal, dropped.params, zeroed.params)
  _, out_s = step(variables, dict(
      batch, spectrogram=np.zeros_like(batch['spectrogram'])), key)
  assert float(out_s['loss']) != pytest.approx(float(out['loss']), rel=1e-6)


@pytest.mark.parametrize('field,value', [
    ('modality_dropout', 1.5), ('modality_dropout', -0.1),
    ('modality_dropout_split', 2.0)])
def test_bad_dropout_settings_name_the_field(field, value):
  config = train_helpers.tiny_config()
  config.train[field] = value
  with pytest.raises(UserError) as e:
    modality.dropout_settings(config)
  assert f'config.train.{field}=' in str(e.value)
  assert '\n' not in str(e.value)


# ------------------------------------------------------------ degradations --


def _speechlike(n=6, samples=8000, seed=0):
  rng = np.random.default_rng(seed)
  t = np.arange(samples) / 8000
  f0 = rng.uniform(100, 300, (n, 1))
  return (np.sin(2 * np.pi * f0 * t) * rng.uniform(0.1, 0.5, (n, 1))
          ).astype(np.float32)


def _snr(clean, noisy):
  clean = clean.astype(np.float64)
  noise = noisy.astype(np.float64) - clean
  return 10 * np.log10(np.mean(clean ** 2) / np.mean(noise ** 2))


@pytest.mark.parametrize('kind', ['speech_snr', 'babble_snr'])
@pytest.mark.parametrize('snr', [20, 10, 0])
def test_noise_at_its_snr(kind, snr):
  wav = _speechlike()
  image = np.zeros((len(wav), 8, 8, 3), np.uint8)
  c = degrade.parse_condition(f'{kind}_{snr}')
  assert (c.kind, c.value, c.modality) == (kind, snr, 'speech')
  img_out, out = degrade.degrade_raw(c, image, wav, seed=3)
  assert img_out is image
  for clean, noisy in zip(wav, out):
    assert _snr(clean, noisy) == pytest.approx(snr, abs=0.01)
  again = degrade.degrade_raw(c, image, wav, seed=3)[1]
  np.testing.assert_array_equal(out, again)  # Deterministic from the seed.
  assert not np.array_equal(out, degrade.degrade_raw(c, image, wav,
                                                     seed=4)[1])
  if kind == 'babble_snr':  # Babble is other clips, never the clip itself.
    rng = degrade.rng_for(0, 'x')
    b = degrade.babble(wav, 2, rng, talkers=5)
    parts = np.delete(wav, 2, axis=0)
    parts = parts / np.sqrt(np.mean(parts.astype(np.float64) ** 2, axis=1,
                                    keepdims=True))
    np.testing.assert_allclose(b, parts.sum(0), atol=1e-5)


@pytest.mark.parametrize('percent', [25, 50])
def test_occlusion_covers_its_area_at_random_places(percent):
  size = 32
  image = np.full((20, size, size, 3), 255, np.uint8)
  c = degrade.parse_condition(f'image_occlusion_{percent}')
  out, wav = degrade.degrade_raw(c, image, np.zeros((20, 10)), seed=0)
  covered = np.all(out == degrade.OCCLUSION_FILL, axis=-1)
  assert np.all((out == 255) | covered[..., None])
  area = covered.reshape(20, -1).mean(1)
  assert np.all(np.abs(area - percent / 100) <= 1.5 / size)
  corners = {tuple(np.argwhere(m)[0]) for m in covered}
  assert len(corners) > 5  # Random places.
  assert wav.shape == (20, 10)


def test_blur_smooths_the_image():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
  c = degrade.parse_condition('image_blur', blur_sigma=2.0)
  assert c.value == 2.0 and degrade.parse_condition('image_blur_1.5').value == 1.5
  out, _ = degrade.degrade_raw(c, image, np.zeros((3, 10)))
  assert out.dtype == np.uint8 and out.shape == image.shape
  grad = lambda x: np.abs(np.diff(x.astype(np.float64), axis=2)).mean()
  assert grad(out) < 0.2 * grad(image)
  assert abs(out.astype(float).mean() - image.astype(float).mean()) < 2


@pytest.mark.parametrize('conditions,needle', [
    ('full,no_audio', "unknown condition 'no_audio'"),
    ('speech_snr_loud', "SNR (dB) 'loud' is not a number"),
    ('babble_snr_', "SNR (dB) '' is not a number"),
    ('speech_snr', 'needs a number'),
    ('image_occlusion_150', 'in [0, 100]'),
    ('full,full', 'listed twice'),
    ('', 'is empty')])
def test_bad_conditions_name_the_field(conditions, needle):
  with pytest.raises(UserError) as e:
    degrade.parse_conditions(conditions)
  assert str(e.value).startswith('config.robustness.conditions')
  assert needle in str(e.value) and '\n' not in str(e.value)


# ------------------------------------- predict and robustness on a model --


@pytest.fixture(scope='module')
def trained(tmp_path_factory, tiny_n2):
  """A 40-example corpus (built) and a 'best' checkpoint of fresh weights
  (tiny N2 trunks; train_helpers.quick_variables, as no test here is about
  the initialisers: test_predict._checkpoint's random init compiles)."""
  from configs import parallelnet as config_lib  # pylint: disable=g-import-not-at-top
  from parallelnet import checkpointing  # pylint: disable=g-import-not-at-top
  from parallelnet import models  # pylint: disable=g-import-not-at-top
  import input_pipeline  # pylint: disable=g-import-not-at-top
  tmp = tmp_path_factory.mktemp('modality')
  config = test_predict._config(tmp)  # pylint: disable=protected-access
  config_lib.apply_variant(config, tiny_n2)
  input_pipeline.get_builder(config)
  workdir = str(tmp / 'work')
  model = models.get_model(config)
  variables = train_helpers.quick_variables(
      lambda k: models.init_variables(model, config, k, load_pretrained=False),
      seed=3)
  ckpts = checkpointing.Checkpoints(workdir, config, async_save=False)
  ckpts.save('best', 5, dict(step=jax.numpy.int32(5),
                             params=variables['params'],
                             batch_stats=variables['batch_stats']), {})
  ckpts.wait()
  ckpts.close()
  return config, workdir, model, variables


@pytest.mark.slow
def test_predict_folder_with_blank_cells(trained, tmp_path, caplog):
  from input_pipeline import manifest  # pylint: disable=g-import-not-at-top
  from parallelnet import predict  # pylint: disable=g-import-not-at-top
  from parallelnet.models import scaling as model_scaling  # pylint: disable=g-import-not-at-top
  import input_pipeline  # pylint: disable=g-import-not-at-top
  config, workdir, model, variables = trained
  corpus, _ = test_predict._corpus_rows(config)  # pylint: disable=protected-access
  folder = tmp_path / 'new'
  folder.mkdir()
  blanks = [(), ('image',), ('audio',), ()]
  with open(folder / 'manifest.csv', 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['id', 'image', 'audio', 'label'])
    for i, (row, blank) in enumerate(zip(corpus, blanks)):
      cells = []
      for col in ('image', 'audio'):
        name = f'{i}_{os.path.basename(row[col])}'
        shutil.copy(row[col], folder / name)
        cells.append('' if col in blank else name)
      w.writerow([f'r{i}'] + cells + [config.dataset.classes[row['label']]])
  # A dataset build refuses the blank cells unless allow_missing.
  _, bad = manifest.read_manifest(str(folder), config.dataset.classes)
  assert [b[0] for b in bad] == ['r1', 'r2']
  assert all('allow_missing=True' in b[2] for b in bad)
  rows_read, bad = manifest.read_manifest(
      str(folder), config.dataset.classes, allow_missing=True)
  assert not bad
  assert [r['missing'] for r in rows_read] == ['', 'image', 'speech', '']
  with caplog.at_level('WARNING'):
    cfg, out_dir, out = test_predict.predict_folder(config, workdir, folder,
                                                    tmp_path)
  assert caplog.text.count('trained without modality dropout') == 1
  assert out['num_examples'] == 4 and out['accuracy'] is not None
  rows = test_predict._rows(out_dir / 'predictions_new.csv')  # pylint: disable=protected-access
  assert [r['id'] for r in rows] == ['r0', 'r1', 'r2', 'r3']
  assert [r['missing'] for r in rows] == ['', 'image', 'speech', '']
  resolved = model_scaling.resolve_config(cfg)
  absent = modality.missing_inputs(resolved)
  for r, row in zip(rows, rows_read):
    pair = input_pipeline.preprocess_pair(resolved, row['image'], row['audio'])
    assert pair['missing'] == r['missing']
    image = absent['image'] if pair['image'] is None else pair['image']
    spec = (absent['spectrogram'] if pair['spectrogram'] is None
            else pair['spectrogram'])
    logits, _ = model.apply(variables, image[None], spec[None], train=False)
    want = np.asarray(jax.nn.softmax(logits, -1))[0]
    got = np.array([float(r[f'p_{c}']) for c in cfg.dataset.classes])
    np.testing.assert_allclose(got, want, atol=1e-5)
  # A named but unreadable file is damage, not absence.
  with open(folder / 'manifest.csv', 'a', newline='') as f:
    csv.writer(f).writerow(['r4', 'nope.png', '', ''])
  with pytest.raises(UserError, match='missing file'):
    predict.predict(cfg, str(out_dir))


@pytest.mark.slow
def test_robustness_full_row_equals_eval(trained, tmp_path):
  from parallelnet import robustness  # pylint: disable=g-import-not-at-top
  from parallelnet import train  # pylint: disable=g-import-not-at-top
  config, workdir, _, _ = trained
  cfg = config.copy_and_resolve_references()
  cfg.robustness.conditions = ('full,no_image,no_speech,speech_snr_0,'
                               'babble_snr_10,image_occlusion_50,image_blur')
  metrics = train.evaluate(cfg, workdir)
  rows = robustness.run_robustness(cfg, workdir)
  assert [r['condition'] for r in rows] == cfg.robustness.conditions.split(',')
  for k in robustness.COLUMNS[1:]:
    assert rows[0][k] == pytest.approx(metrics[k], abs=1e-12)
  with open(os.path.join(workdir, 'robustness.csv'), newline='') as f:
    written = list(csv.DictReader(f))
  assert list(written[0]) == list(robustness.COLUMNS)
  assert [r['condition'] for r in written] == [r['condition'] for r in rows]
  assert float(written[0]['accuracy']) == pytest.approx(metrics['accuracy'],
                                                        abs=1e-6)
  assert os.path.getsize(os.path.join(workdir, 'robustness.png')) > 1000
  cfg.robustness.conditions = 'full,speech_snr_x'
  with pytest.raises(UserError, match='config.robustness.conditions'):
    robustness.run_robustness(cfg, workdir)


@pytest.mark.slow
def test_study_robustness_columns(trained, tmp_path):
  from parallelnet import robustness  # pylint: disable=g-import-not-at-top
  from parallelnet import study  # pylint: disable=g-import-not-at-top
  config, workdir, _, _ = trained
  cfg = config.copy_and_resolve_references()
  cfg.study.robustness = True
  got = study._robustness(cfg, workdir)  # pylint: disable=protected-access
  cfg.robustness.conditions = 'no_image,no_speech'
  want = robustness.run_robustness(cfg, workdir)
  assert got == {f"{r['condition']}_accuracy": r['accuracy'] for r in want}
  path = tmp_path / 'study.csv'
  study.write_csv([dict(row='proposed', test_accuracy=0.5, test_macro_f1=0.5,
                        test_cohen_kappa=0.0, val_accuracy=0.5,
                        val_macro_f1=0.5, trainable_params=1, frozen_params=0,
                        train_seconds=1.0, **got)], str(path), False, True)
  with open(path, newline='') as f:
    table = list(csv.DictReader(f))
  # After row, the test and validation metrics: the two robustness columns.
  assert list(table[0])[6:8] == ['no_image_accuracy', 'no_speech_accuracy']
  assert float(table[0]['no_image_accuracy']) == pytest.approx(
      got['no_image_accuracy'], abs=1e-5)


@pytest.mark.slow
def test_explain_a_pair_without_its_image(trained, tmp_path, capsys):
  from explain import run as explain_run  # pylint: disable=g-import-not-at-top
  config, workdir, _, _ = trained
  corpus, _ = test_predict._corpus_rows(config)  # pylint: disable=protected-access
  cfg = config.copy_and_resolve_references()
  cfg.explain.baseline = 'mean'
  out = tmp_path / 'out'
  out.mkdir()
  os.symlink(os.path.join(workdir, 'checkpoints'), out / 'checkpoints')
  summary = explain_run.explain_files(cfg, str(out), None, corpus[0]['audio'])
  assert summary['missing'] == 'image' and summary['image'] is None
  assert list(summary['modality_scores']) == ['speech']
  # The absent image is absent in every coalition (its baseline is the
  # missing input too): the speech takes the whole change of probability.
  assert summary['modality_scores']['speech'] == pytest.approx(
      summary['probability'] - summary['baseline_probability'], abs=1e-5)
  name = os.path.splitext(os.path.basename(corpus[0]['audio']))[0]
  with np.load(out / 'explain' / f'{name}.npz') as saved:
    assert str(saved['missing']) == 'image'
  assert 'image: absent' in capsys.readouterr().out


def test_allow_missing_builds_rows_without_a_modality(tmp_path):
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  from tests import test_input_pipeline as tip  # pylint: disable=g-import-not-at-top
  folder = tmp_path / 'data'
  folder.mkdir()
  rows = tip._good_folder(folder, n=10, unusual=False)  # pylint: disable=protected-access
  rows[0][1] = ''  # No image.
  rows[1][2] = ''  # No audio.
  tip._write_manifest(folder, rows)  # pylint: disable=protected-access
  c = tip._config(tmp_path, manual_dir=folder)  # pylint: disable=protected-access
  c.input.image_scaling = 'unit'
  with pytest.raises(UserError, match='allow_missing=True'):
    pipeline.get_builder(c)
  c.dataset.allow_missing = True
  ex = {}
  for split in ('train', 'test'):
    got = pipeline.load_examples(c, split)
    for i, row_id in enumerate(got['id']):
      ex[row_id] = {k: got[k][i] for k in ('image', 'spectrogram', 'waveform')}
  assert len(ex) == 10
  absent = modality.missing_inputs(c)
  np.testing.assert_array_equal(ex[rows[0][0]]['image'], absent['image'])
  np.testing.assert_array_equal(ex[rows[1][0]]['spectrogram'],
                                absent['spectrogram'])
  assert not np.any(ex[rows[1][0]]['waveform'])
  assert np.any(ex[rows[0][0]]['spectrogram'])
  assert np.any(ex[rows[1][0]]['image']) and np.any(ex[rows[2][0]]['image'])
