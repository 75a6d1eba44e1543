"""Dataset construction (paper §3.1, PAPER.md, "Building the dataset"): the labelling rule, the class
map, TTS backends, bad input, and end to end with two tiny trained teachers
(espeak-ng and a command-template TTS): the output builds with iitr_sier and
trains a step; a resumed run and a 2-worker run give identical folders."""

import csv
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from input_pipeline import construct
from parallelnet.core.errors import UserError
import construct_helpers

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EMOTIONS = construct.EMOTIONS


# ------------------------------------------------------------ label_pair --


def test_label_pair_paper_example():
  # §3.1: IER 0.1/0.8/0.05/0.05, SER 0.1/0.1/0.7/0.1 -> the second class.
  assert construct.label_pair([0.1, 0.8, 0.05, 0.05],
                              [0.1, 0.1, 0.7, 0.1]) == (1, 'kept')
  # Swapped modalities: the speech teacher is now the more confident one.
  assert construct.label_pair([0.1, 0.1, 0.7, 0.1],
                              [0.1, 0.8, 0.05, 0.05]) == (1, 'kept')
  assert construct.label_pair([0.1, 0.1, 0.7, 0.1],
                              [0.05, 0.05, 0.1, 0.8]) == (3, 'kept')


def test_label_pair_threshold_boundary():
  at = [0.5, 0.2, 0.2, 0.1]
  below = [0.49, 0.21, 0.2, 0.1]
  assert construct.label_pair(at, below) == (0, 'kept')  # == threshold kept.
  assert construct.label_pair(below, below) == (None, 'low_confidence')
  assert construct.label_pair(below, [0.1, 0.1, 0.2, 0.6]) == (3, 'kept')
  assert construct.label_pair(below, below, threshold=0.49) == (0, 'kept')
  assert construct.label_pair(at, at, threshold=0.51) == (None,
                                                          'low_confidence')


def test_label_pair_ties_go_to_image():
  assert construct.label_pair([0.6, 0.4, 0, 0],
                              [0, 0, 0.4, 0.6]) == (0, 'kept')
  # Within one vector, the lower class index.
  assert construct.label_pair([0.1, 0.45, 0.45, 0.0],
                              [0.25] * 4, threshold=0.4) == (1, 'kept')


def test_label_pair_agreement_switch():
  pi, ps = [0.1, 0.8, 0.05, 0.05], [0.1, 0.1, 0.7, 0.1]
  assert construct.label_pair(pi, ps, require_agreement=True) == (
      None, 'disagreement')
  agree = [0.1, 0.6, 0.2, 0.1]
  assert construct.label_pair(pi, agree, require_agreement=True) == (1, 'kept')
  # Low confidence is reported before disagreement.
  low = [0.4, 0.3, 0.2, 0.1]
  assert construct.label_pair(low, [0.1, 0.4, 0.3, 0.2],
                              require_agreement=True) == (None,
                                                          'low_confidence')


def test_label_pair_rejects_non_probabilities():
  with pytest.raises(ValueError, match='not a probability vector'):
    construct.label_pair([2.0, -1.0, 0, 0], [0.25] * 4)
  with pytest.raises(ValueError, match='one length'):
    construct.label_pair([0.5, 0.5], [0.25] * 4)


def test_class_map():
  cmap = construct.parse_class_map(construct.DEFAULT_CLASS_MAP)
  assert cmap == {'excitement': 'happy', 'disgust': 'hate'}
  with pytest.raises(UserError, match='teacher_class:target_class'):
    construct.parse_class_map('excitement-happy')
  teacher = ('anger', 'excitement', 'happy', 'sad', 'disgust')
  paper = construct.ClassMapping(teacher, EMOTIONS, cmap)  # class_merge=max.
  summed = construct.ClassMapping(teacher, EMOTIONS, cmap, merge='sum')
  # The paper relabels the argmax class: excitement -> happy, disgust -> hate.
  assert paper.vote([0.1, 0.6, 0.1, 0.1, 0.1]) == (1, 0.6)
  assert paper.vote([0.1, 0.1, 0.0, 0.1, 0.7]) == (2, 0.7)
  # happy 0.3 + excitement 0.3 + anger 0.4: the paper's maximum over the
  # teacher's own classes is anger at 0.4, below 0.5, so the pair is
  # discarded; summing first would give happy at 0.6 and keep it.
  p = [0.4, 0.3, 0.3, 0.0, 0.0]
  assert paper.vote(p) == (0, 0.4)
  np.testing.assert_allclose(summed.vote(p), (1, 0.6))
  image = (0, 0.3)  # An image teacher's vote: anger at 0.3.
  assert construct.combine(image, paper.vote(p)) == (None, 'low_confidence')
  assert construct.combine(image, summed.vote(p)) == (1, 'kept')
  np.testing.assert_allclose(p @ construct.class_matrix(teacher, EMOTIONS,
                                                        cmap), [0.4, 0.6, 0, 0])

  # A class that maps to no target (fear): the pair it labels is dropped as
  # unmapped; it counts only when its teacher is the more confident one.
  fearful = construct.ClassMapping(('anger', 'happy', 'hate', 'sad', 'fear'),
                                   EMOTIONS, cmap)
  fear = fearful.vote([0.1, 0.1, 0.0, 0.1, 0.7])
  assert fear == (None, 0.7)
  assert construct.combine((3, 0.6), fear) == (None, 'unmapped')
  assert construct.combine((3, 0.7), fear) == (3, 'kept')  # Ties: image.
  assert construct.combine((3, 0.8), fear, require_agreement=True) == (
      None, 'disagreement')
  assert construct.combine((3, 0.3), (None, 0.4)) == (None, 'low_confidence')
  # Summing needs every class to map; a typo in the map is always an error.
  with pytest.raises(UserError, match=r"'fear'.*--class_merge=max"):
    construct.ClassMapping(fearful.classes, EMOTIONS, cmap, merge='sum')
  with pytest.raises(UserError, match=r"'neutral'.*--class_map"):
    construct.class_matrix(('anger', 'neutral'), EMOTIONS, cmap)
  with pytest.raises(UserError, match='unknown class'):
    construct.ClassMapping(('fear',), EMOTIONS, {'fear': 'scared'})
  with pytest.raises(UserError, match='class_merge'):
    construct.ClassMapping(teacher, EMOTIONS, cmap, merge='mean')


# --------------------------------------------------------- TTS backends --


@pytest.mark.slow
def test_tts_backends_write_complete_wavs(tmp_path):
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  espeak = construct.EspeakTTS(sample_rate=8000)
  espeak.check()
  out = tmp_path / 'a.wav'
  espeak.synthesize('Hello there, what a lovely day.', str(out))
  data, sr = sf.read(out)
  assert sr == 8000 and data.ndim == 1 and len(data) > 8000 * 0.8
  assert np.abs(data).max() > 0.05
  assert os.listdir(tmp_path) == ['a.wav']  # No temporary files left.

  cmd = construct.CommandTTS(construct_helpers.sine_tts_template(
      str(tmp_path)), sample_rate=0)
  cmd.check()
  cmd.synthesize('four', str(tmp_path / 'b.wav'))
  data, sr = sf.read(tmp_path / 'b.wav')
  assert sr == 11025 and len(data) == int(11025 * 0.5)  # 0.3 + 0.05 * 4 s.
  with pytest.raises(construct.TTSError, match='cannot say that'):
    cmd.synthesize('FAIL', str(tmp_path / 'c.wav'))
  assert not os.path.exists(tmp_path / 'c.wav')

  with pytest.raises(UserError, match='apt-get install espeak-ng'):
    construct.EspeakTTS(program='no-such-espeak').check()
  with pytest.raises(UserError, match='voice'):
    construct.EspeakTTS(voice='xx-nosuch').check()
  with pytest.raises(UserError, match='must contain {out}'):
    construct.CommandTTS('mytts --text-file {text_file}').check()


def test_tts_command_past_its_timeout_or_stopped_is_killed(tmp_path):
  """A TTS command that outlives its timeout, or is running when the build
  stops (tts.stop_on's event), is killed, not left running."""
  import threading  # pylint: disable=g-import-not-at-top
  from input_pipeline.construct import tts as tts_lib  # pylint: disable=g-import-not-at-top
  pid = tmp_path / 'pid'
  hang = f"sh -c 'echo $$ > {pid}; exec sleep 30' {{out}}"
  with pytest.raises(construct.TTSError, match='timed out after 0.5 s'):
    construct.CommandTTS(hang, timeout_s=0.5).synthesize(
        'hi', str(tmp_path / 'a.wav'))
  assert not _running(int(pid.read_text()))
  pid.unlink()
  stop = threading.Event()
  threading.Timer(0.3, stop.set).start()
  tts_lib.stop_on(stop)
  try:
    with pytest.raises(tts_lib.Stopped):
      construct.CommandTTS(hang).synthesize('hi', str(tmp_path / 'b.wav'))
  finally:
    tts_lib.stop_on(None)
  assert not _running(int(pid.read_text()))
  assert os.listdir(tmp_path) == ['pid']  # No temporaries left.


# -------------------------------------------- bad input, callable teachers --


def test_file_names_from_ids():
  assert construct._safe_name('tw_001-a') == 'tw_001-a'
  odd = ['../x', 'a/b', 'a b', 'a_b', 'é', '.hidden', 'a/b/']
  names = [construct._safe_name(i) for i in odd]
  assert len(set(names)) == len(odd)
  assert all(n[0].isalnum() and '/' not in n and '.' not in n for n in names)


def _callable_teachers():
  ier = construct.load_callable_teacher(
      'construct_helpers:image_red_teacher', 'image', EMOTIONS)
  ser = construct.load_callable_teacher(
      'construct_helpers:speech_uniformish_teacher', 'speech', EMOTIONS)
  return ser, ier


def _read_csv(path):
  with open(path, newline='', encoding='utf-8') as f:
    return list(csv.DictReader(f))


@pytest.mark.slow
def test_bad_input_strict_and_skip_bad(tmp_path):
  src = tmp_path / 'src'
  rows = construct_helpers.make_source(str(src), 8)
  rows[1][1] = ''  # Empty text.
  rows[2][2] = 'img/missing.png'  # Missing file.
  rows[3][1] = 'please FAIL here'  # The TTS command fails.
  rows[5][2] = '../outside.png'  # Leaves the folder.
  (src / 'img' / '6.png').write_bytes(b'not a png')  # Undecodable.
  with open(src / 'source.csv', 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['id', 'text', 'image', 'label', 'likes'])
    w.writerows(rows)
  ser, ier = _callable_teachers()
  tts = construct.CommandTTS(construct_helpers.sine_tts_template(str(tmp_path)))
  kw = dict(tts=tts, ser_teacher=ser, ier_teacher=ier, batch_size=4,
            show_progress=False)
  out = tmp_path / 'out'
  with pytest.raises(construct.ConstructError) as e:
    construct.construct_dataset(str(src), str(out), **kw)
  msg = str(e.value)
  assert msg.startswith('5 bad source row(s)')
  for needle in ("id='tw001': empty text", "id='tw002': missing image file",
                 "id='tw003': tts: the TTS command failed",
                 "id='tw005': image path '../outside.png'",
                 "id='tw006': image: undecodable image"):
    assert needle in msg, msg
  assert not (out / 'manifest.csv').exists()
  with pytest.raises(UserError, match='other settings.*batch_size'):
    construct.construct_dataset(str(src), str(out), **dict(kw, batch_size=2))

  # --skip_bad: recorded as bad_input and left out (the journal is reused).
  stats = construct.construct_dataset(str(src), str(out), skip_bad=True, **kw)
  assert stats['decisions']['bad_input'] == 5
  dec = {r['id']: r for r in _read_csv(out / 'decisions.csv')}
  assert [dec[f'tw00{i}']['decision'] for i in (1, 2, 3, 5, 6)] == [
      'bad_input'] * 5
  assert dec['tw001']['image_probs'] == '' and dec['tw003']['reason']
  manifest = _read_csv(out / 'manifest.csv')
  assert {r['id'] for r in manifest} <= {'tw000', 'tw004', 'tw007'}
  assert sorted(os.listdir(out / 'audio')) == sorted(
      f'{r["id"]}.wav' for r in manifest)
  assert not (out / construct.STATE_DIR).exists()
  # decisions.csv records each teacher's own probabilities: the SER
  # teacher's five classes, in the order stats.json lists.
  assert stats['settings']['ser_classes'] == [
      'anger', 'happy', 'excitement', 'sad', 'disgust']
  for r in dec.values():
    if r['speech_probs']:
      p = np.array(r['speech_probs'].split(), float)
      assert p.shape == (5,) and abs(p.sum() - 1) < 1e-5
      m = round(3 / p[4]) - 8  # v = (1, 2, 1 + m, 1, 3) / (8 + m).
      np.testing.assert_allclose(p, np.array([1, 2, 1 + m, 1, 3]) / (8 + m),
                                 atol=2e-6)
  # A finished folder is not overwritten.
  with pytest.raises(UserError, match='finished construction'):
    construct.construct_dataset(str(src), str(out), **kw)


@pytest.mark.slow
def test_unmapped_teacher_class_drops_the_pair(tmp_path):
  """An IER teacher whose fourth class is 'fear': the row it labels fear is
  dropped as unmapped (the paper's rule), counted, and left out."""
  src = tmp_path / 'src'
  construct_helpers.make_source(str(src), 4)
  ser, _ = _callable_teachers()
  ier = construct.load_callable_teacher(
      'construct_helpers:image_fear_teacher', 'image', EMOTIONS)
  kw = dict(tts=construct.CommandTTS(construct_helpers.sine_tts_template(
      str(tmp_path))), ser_teacher=ser, ier_teacher=ier, batch_size=4,
            show_progress=False)
  with pytest.raises(UserError, match=r"'fear'.*--class_merge=max"):
    construct.construct_dataset(str(src), str(tmp_path / 'sum'),
                                class_merge='sum', **kw)
  out = tmp_path / 'out'
  stats = construct.construct_dataset(str(src), str(out), **kw)
  dec = _read_csv(out / 'decisions.csv')
  assert [r['decision'] for r in dec] == ['kept', 'kept', 'kept', 'unmapped']
  assert [r['label'] for r in dec] == ['anger', 'happy', 'hate', '']
  assert "image teacher's class 'fear'" in dec[3]['reason']
  assert stats['decisions']['unmapped'] == 1 and stats['kept'] == 3
  assert stats['label_modality'] == {'image': 3, 'speech': 0}
  assert [r['id'] for r in _read_csv(out / 'manifest.csv')] == [
      'tw000', 'tw001', 'tw002']


@pytest.mark.slow
def test_label_from_source_gives_sentiment_manifest(tmp_path):
  from input_pipeline import builders  # pylint: disable=g-import-not-at-top
  from input_pipeline import manifest  # pylint: disable=g-import-not-at-top
  src = tmp_path / 'src'
  rows = construct_helpers.make_source(str(src), 6,
                                       labels=builders.SENTIMENTS)
  tts = construct.CommandTTS(construct_helpers.sine_tts_template(str(tmp_path)))
  out = tmp_path / 'out'
  stats = construct.construct_dataset(
      str(src), str(out), tts=tts, classes=builders.SENTIMENTS,
      label_from='source', batch_size=4, show_progress=False)
  assert stats['kept'] == 6 and stats['label_modality'] == {'source': 6}
  got, bad = manifest.read_manifest(str(out), builders.SENTIMENTS)
  assert not bad
  assert [builders.SENTIMENTS[r['label']] for r in got] == [r[3] for r in rows]
  assert [r['text'] for r in got] == [r[1] for r in rows]
  # It builds as b_t4sa (Table 3's setting).
  import input_pipeline  # pylint: disable=g-import-not-at-top
  from configs import parallelnet as configs_lib  # pylint: disable=g-import-not-at-top
  c = configs_lib.get_config('sentiment,runlocal')
  c.dataset.manual_dir = str(out)
  c.dataset.data_dir = str(tmp_path / 'tfds')
  builder = input_pipeline.get_builder(c)
  assert builder.name == 'b_t4sa'
  assert sum(s.num_examples for s in builder.info.splits.values()) == 6
  with pytest.raises(UserError, match='needs both --ser_teacher'):
    construct.construct_dataset(str(src), str(tmp_path / 'o2'), tts=tts)


@pytest.mark.slow
def test_library_imports_nothing_of_parallelnet():
  """Only the ground floor (parallelnet.core) of the model package loads."""
  code = ('import sys; import input_pipeline.construct; '
          'bad = [m for m in sys.modules if m.split(".")[0] in '
          '("parallelnet", "explain", "jax", "tensorflow") and not '
          '(m == "parallelnet" or m.startswith("parallelnet.core"))]; '
          'print(bad)')
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True,
                       capture_output=True, text=True).stdout
  assert out.strip() == '[]', out


@pytest.mark.slow
def test_command_line_with_callable_teachers(tmp_path):
  src = tmp_path / 'src'
  construct_helpers.make_source(str(src), 4)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE]))
  cmd = [sys.executable, '-m', 'parallelnet.construct',
         f'--source={src}', f'--out={tmp_path / "out"}',
         '--ser_teacher=construct_helpers:speech_uniformish_teacher',
         '--ier_teacher=construct_helpers:image_red_teacher',
         '--tts_cmd=' + construct_helpers.sine_tts_template(str(tmp_path)),
         '--workers=2']
  p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  assert p.returncode == 0, p.stderr
  assert 'of 4 rows kept' in p.stdout
  assert json.loads((tmp_path / 'out' / 'stats.json').read_text())['rows'] == 4
  # A user error is one line, exit 1, no traceback.
  p = subprocess.run(cmd[:4] + ['--out=' + str(tmp_path / 'o2'),
                                '--ser_teacher=nosuchmodule:fn'],
                     cwd=ROOT, env=env, capture_output=True, text=True)
  assert p.returncode == 1 and 'Traceback' not in p.stderr
  assert "cannot import module 'nosuchmodule'" in p.stderr


# ------------------------------------------ end to end, trained teachers --


def _teacher_config(modality):
  import train_helpers  # pylint: disable=g-import-not-at-top
  c = train_helpers.tiny_config()
  c.model.modalities = modality
  c.input.image_scaling = 'unit'  # As ArrayData's images (and the source's).
  c.model.bn_momentum = 0.5  # Eval statistics settle within a few steps.
  c.train.learning_rate = 1e-2
  c.train.num_epochs = 4 if modality == 'image' else 1
  c.train.max_steps_per_epoch = 6 if modality == 'image' else 1
  return c


@pytest.fixture(scope='module')
def teachers(tmp_path_factory, fast_compile):
  """Two tiny trained teachers (speech-only and image-only workdirs),
  restored from their workdirs alone."""
  del fast_compile
  import train_helpers  # pylint: disable=g-import-not-at-top
  from parallelnet import teachers as teachers_lib  # pylint: disable=g-import-not-at-top
  from parallelnet import train  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('teachers')
  out = {}
  for modality in ('speech', 'image'):
    c = _teacher_config(modality)
    workdir = str(root / modality)
    train.train_and_evaluate(
        c, workdir, data=train_helpers.ArrayData(c, sizes=(48, 8, 8)))
    out[modality] = teachers_lib.WorkdirTeacher(workdir, modality,
                                                batch_size=8)
  with pytest.raises(UserError, match="model.modalities='image'"):
    teachers_lib.WorkdirTeacher(str(root / 'image'), 'speech')
  return out


def _folder_bytes(folder):
  out = {}
  for d, _, files in os.walk(folder):
    for f in files:
      p = os.path.join(d, f)
      with open(p, 'rb') as fh:
        out[os.path.relpath(p, folder)] = fh.read()
  return out


class _Stop(Exception):
  pass


def _stop_after(chunk):
  def hook(k):
    if k == chunk:
      raise _Stop()
  return hook


def _running(pid):
  """Whether process `pid` runs (a zombie has ended)."""
  try:
    with open(f'/proc/{pid}/stat', encoding='utf-8') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except FileNotFoundError:
    return False


@pytest.mark.slow
def test_interrupted_build_leaves_no_tts_command_running(tmp_path):
  """A 2-worker build stopped mid-way (Ctrl-C, a teacher's error) ends the
  TTS commands in flight before it returns: left running, they would write
  into the output folder afterwards (or into a resumed run's)."""
  src = tmp_path / 'src'
  construct_helpers.make_source(str(src), 8)
  with open(src / 'source.csv', encoding='utf-8') as f:
    rows = list(csv.reader(f))
  for r in rows[5:9]:  # Chunk 1 (rows 4-7) hangs in the TTS.
    r[1] = 'slow ' + r[1]
  with open(src / 'source.csv', 'w', newline='', encoding='utf-8') as f:
    csv.writer(f).writerows(rows)
  pids = tmp_path / 'pids'
  pids.mkdir()
  tts = construct.CommandTTS(construct_helpers.sine_tts_template(
      str(tmp_path), slow_pids=str(pids)))

  def stop_while_chunk_1_speaks(k):
    assert k == 0
    deadline = time.monotonic() + 60
    while not any(pids.iterdir()):
      assert time.monotonic() < deadline, 'chunk 1 never reached the TTS'
      time.sleep(0.05)
    raise _Stop()

  out = tmp_path / 'out'
  try:
    with pytest.raises(_Stop):
      construct.construct_dataset(
          str(src), str(out), tts=tts, label_from='source', batch_size=4,
          workers=2, show_progress=False, on_chunk=stop_while_chunk_1_speaks)
    started = [int(p.name) for p in pids.iterdir()]
    assert started and not [p for p in started if _running(p)]
    # The hung rows' temporaries went with them.
    assert sorted(os.listdir(out / 'audio')) == [
        f'tw{i:03d}.wav' for i in range(4)]
  finally:
    for p in pids.iterdir():
      if _running(int(p.name)):
        os.kill(int(p.name), 9)


@pytest.mark.slow
def test_end_to_end_espeak(teachers, tmp_path):
  """espeak-ng + the trained teachers: the manifest builds with iitr_sier and
  trains a step; 2 workers and an interrupted-then-resumed run give
  byte-identical folders."""
  src = tmp_path / 'src'
  construct_helpers.make_source(str(src), 20)
  kw = dict(tts=construct.EspeakTTS(sample_rate=8000),
            ser_teacher=teachers['speech'], ier_teacher=teachers['image'],
            threshold=0.3, batch_size=8, show_progress=False)
  one = tmp_path / 'one'
  stats = construct.construct_dataset(str(src), str(one), workers=1, **kw)
  dec = _read_csv(one / 'decisions.csv')
  manifest = _read_csv(one / 'manifest.csv')
  assert len(dec) == 20 and stats['rows'] == 20
  # Every decision is label_pair of the recorded probabilities.
  for r in dec:
    pi = np.array(r['image_probs'].split(), float)
    ps = np.array(r['speech_probs'].split(), float)
    label, decision = construct.label_pair(pi / pi.sum(), ps / ps.sum(),
                                           threshold=0.3)
    assert r['decision'] == decision
    assert r['label'] == ('' if label is None else EMOTIONS[label])
  assert [r['id'] for r in manifest] == [r['id'] for r in dec
                                         if r['decision'] == 'kept']
  assert stats['kept'] == len(manifest) >= 16
  assert sum(stats['classes'].values()) == stats['kept']
  assert list(manifest[0]) == ['id', 'image', 'audio', 'label', 'text',
                               'source_label', 'likes']
  assert (one / 'stats.png').stat().st_size > 10000

  # 2 workers, and 1 worker interrupted after chunk 0 then resumed.
  two = tmp_path / 'two'
  construct.construct_dataset(str(src), str(two), workers=2, **kw)
  resumed = tmp_path / 'resumed'
  with pytest.raises(_Stop):
    construct.construct_dataset(str(src), str(resumed), workers=1,
                                on_chunk=_stop_after(0), **kw)
  assert not (resumed / 'manifest.csv').exists()
  (resumed / 'audio' / '.tw019.wav.tmp123').write_bytes(b'half')  # A kill.
  construct.construct_dataset(str(src), str(resumed), workers=1, **kw)
  ref = _folder_bytes(one)
  assert _folder_bytes(two) == ref
  assert _folder_bytes(resumed) == ref

  # The folder builds with the iitr_sier builder and trains one step.
  import input_pipeline  # pylint: disable=g-import-not-at-top
  from parallelnet import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from parallelnet import models  # pylint: disable=g-import-not-at-top
  from parallelnet import train  # pylint: disable=g-import-not-at-top
  # The image teacher's model, optimizer and batch size: its compiled
  # training step is reused.
  c = _teacher_config('image')
  c.dataset.name = 'iitr_sier'
  c.dataset.manual_dir = str(one)
  c.dataset.data_dir = str(tmp_path / 'tfds')
  c.dataset.val_fraction = 0.0
  builder = input_pipeline.get_builder(c)
  assert sum(s.num_examples for s in builder.info.splits.values()) == len(
      manifest)
  mesh = mesh_lib.make_mesh()
  batch = next(input_pipeline.train_batches(c, mesh, epoch=0))
  assert batch['spectrogram'].shape == (c.train.batch_size, 32, 32, 1)
  state = train.init_train_state(c, models.get_model(c), mesh)
  steps = train.Steps(c, mesh)
  state, out = steps.train(state, batch, steps.step_key(state.rng, 0))
  assert int(state.step) == 1 and np.isfinite(float(out['loss']))


@pytest.mark.slow
def test_end_to_end_command_tts_resume_skips_done_rows(teachers, tmp_path):
  """A command-template TTS with the trained teachers; a resumed run does not
  synthesise the rows of finished chunks again."""
  src = tmp_path / 'src'
  construct_helpers.make_source(str(src), 12)
  log = tmp_path / 'tts.log'
  kw = dict(tts=construct.CommandTTS(construct_helpers.sine_tts_template(
      str(tmp_path), log=str(log)), sample_rate=8000),
            ser_teacher=teachers['speech'], ier_teacher=teachers['image'],
            batch_size=4, workers=2, show_progress=False)
  out = tmp_path / 'out'
  with pytest.raises(_Stop):
    construct.construct_dataset(str(src), str(out), on_chunk=_stop_after(1),
                                **kw)
  said_first = log.read_text().splitlines()
  construct.construct_dataset(str(src), str(out), **kw)
  said_second = log.read_text().splitlines()[len(said_first):]
  texts = [r['text'] for r in _read_csv(src / 'source.csv')]
  assert set(texts[:8]) <= set(said_first)  # Chunks 0 and 1 (4 rows each)
  assert sorted(said_second) == sorted(texts[8:])  # are not redone.
  ref = tmp_path / 'ref'
  construct.construct_dataset(str(src), str(ref), **dict(kw, workers=1))
  assert _folder_bytes(out) == _folder_bytes(ref)
  dec = _read_csv(out / 'decisions.csv')
  kept = [r for r in dec if r['decision'] == 'kept']
  assert len(kept) == len(_read_csv(out / 'manifest.csv'))
  assert {r['decision'] for r in dec} <= set(construct.DECISIONS)


_MESH_SCRIPT = """
import sys, numpy as np
from parallelnet import teachers
t = teachers.WorkdirTeacher(sys.argv[1], 'image', batch_size=6)
assert t.mesh.devices.size == 4 and t.batch_size == 8, (t.mesh, t.batch_size)
np.save(sys.argv[3], t.predict(np.load(sys.argv[2])))
"""


@pytest.mark.slow
def test_teacher_inference_on_a_4_device_mesh(teachers, tmp_path):
  """The same probabilities with the batch sharded over 4 (simulated) CPU
  devices as on 1, padding included (5 inputs, batch 8)."""
  x = np.random.default_rng(0).random((5, 32, 32, 3)).astype(np.float32)
  np.save(tmp_path / 'x.npy', x)
  env = dict(os.environ, PYTHONPATH=ROOT,
             XLA_FLAGS='--xla_force_host_platform_device_count=4')
  p = subprocess.run([sys.executable, '-c', _MESH_SCRIPT,
                      teachers['image'].workdir, str(tmp_path / 'x.npy'),
                      str(tmp_path / 'p.npy')], env=env, capture_output=True,
                     text=True)
  assert p.returncode == 0, p.stderr[-3000:]
  np.testing.assert_allclose(np.load(tmp_path / 'p.npy'),
                             teachers['image'].predict(x), atol=1e-5)


@pytest.mark.slow  # The `teachers` fixture trains two models.
def test_teacher_uses_the_pipelines_image_scaling(teachers, tmp_path):
  """A workdir trained with image_scaling='auto' decodes as the input
  pipeline resolves it (no pretrained weights: caffe)."""
  import shutil  # pylint: disable=g-import-not-at-top
  from parallelnet import teachers as teachers_lib  # pylint: disable=g-import-not-at-top
  assert teachers['image'].input_spec == dict(kind='image', image_size=32,
                                              image_scaling='unit')
  workdir = tmp_path / 'auto'
  shutil.copytree(teachers['image'].workdir, workdir)
  config = json.loads((workdir / 'config.json').read_text())
  config['input']['image_scaling'] = 'auto'
  (workdir / 'config.json').write_text(json.dumps(config))
  t = teachers_lib.WorkdirTeacher(str(workdir), 'image')
  assert t.input_spec['image_scaling'] == 'caffe'
  assert teachers['speech'].input_spec == dict(
      kind='spectrogram', sample_rate=8000, n_fft=512, hop_length=256,
      n_mels=32, num_frames=32, duration_s=31 * 256 / 8000)
