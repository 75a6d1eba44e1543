"""The run report (explain/report): sections and bad input on a fabricated
workdir, and the page rendered by a real headless browser (slow)."""

import html.parser
import json
import os
import re
import shutil
import subprocess
import urllib.parse

import numpy as np
import pytest
import soundfile as sf

from explain import report

CLASSES = ('anger', 'happy', 'hate', 'sad')
CHROMIUM = '/usr/bin/chromium'
# A 1x1 PNG: the smallest image a browser decodes.
PNG = bytes.fromhex(
    '89504e470d0a1a0a0000000d4948445200000001000000010806000000'
    '1f15c4890000000d49444154789c6360f8cf00000301010018dd8db00000'
    '000049454e44ae426082')


def make_workdir(root, n=6, *, modalities='both', history=False,
                 metrics=True, explanations=True, study=False):
  """A workdir as train + explain leave it, with tiny media files."""
  wd = os.path.join(str(root), 'wd')
  os.makedirs(os.path.join(wd, 'checkpoints', 'best', '12'))
  config = dict(dataset=dict(name='synthetic_sier', classes=list(CLASSES)),
                model=dict(name='parallelnet', modalities=modalities),
                train=dict(num_epochs=3, learning_rate=1e-3))
  with open(os.path.join(wd, 'config.json'), 'w') as f:
    json.dump(config, f)
  if history:
    with open(os.path.join(wd, 'history.jsonl'), 'w') as f:
      for epoch in (1, 2, 3):
        f.write(json.dumps({'epoch': epoch, 'step': 4 * epoch,
                            'seconds': 1.5, 'time': 1.7e9 + epoch,
                            'train/loss': 2.0 / epoch,
                            'train/accuracy': 0.3 * epoch,
                            'val/loss': 2.2 / epoch,
                            'val/accuracy': 0.25 * epoch,
                            'val/macro_f1': 0.2 * epoch,
                            'val/cohen_kappa': 0.1 * epoch,
                            'lr': 1e-3}) + '\n')
  if metrics:
    cm = [[3, 1, 0, 0], [0, 4, 0, 1], [1, 0, 2, 0], [0, 0, 0, 5]]
    with open(os.path.join(wd, 'eval_metrics.json'), 'w') as f:
      json.dump(dict(confusion_matrix=cm, checkpoint_step=12, split='test',
                     per_class={c: {} for c in CLASSES}), f)
  if explanations:
    out = os.path.join(wd, 'explain')
    os.makedirs(out)
    rng = np.random.default_rng(0)
    used = ('image', 'speech') if modalities == 'both' else (modalities,)
    examples = []
    for i in range(n):
      name = f'ex{i:04d}'
      true, pred = CLASSES[i % 4], CLASSES[(i // 2) % 4]
      scores = {'image': 0.3 if i % 3 else 0.01, 'speech': 0.02 if i % 3
                else 0.2}
      examples.append(dict(
          id=name, file=name, true=true, predicted=pred, correct=true == pred,
          probability=0.5 + i / (4 * n), baseline_probability=0.25,
          modality_scores={m: scores[m] for m in used},
          segments_s=[[0.0, 0.4]], top_image_region_hits_cue=bool(i % 2),
          top_speech_span_hits_cue=True))
      with open(os.path.join(out, f'{name}.png'), 'wb') as f:
        f.write(PNG)
      wave = rng.uniform(-0.1, 0.1, 800).astype(np.float32)
      for suffix in ('', '_kept'):
        sf.write(os.path.join(out, f'{name}{suffix}.wav'), wave, 8000,
                 subtype='PCM_16')
    with open(os.path.join(out, 'summary.json'), 'w') as f:
      json.dump(dict(split='test', num_examples=n, checkpoint_step=12,
                     mode='dnc', depth=2, examples=examples,
                     image_cue_hit_rate=0.5, image_cue_chance_rate=0.25,
                     image_cue_examples=n), f)
  if study:
    with open(os.path.join(wd, 'study.csv'), 'w') as f:
      f.write('row,accuracy,macro_f1,cohen_kappa\nproposed,0.9,0.8,0.7\n'
              'ser_only,0.5,0.4,0.3\n')
    os.makedirs(os.path.join(wd, 'proposed'))
  return wd


class _Refs(html.parser.HTMLParser):
  """Every element's attributes, by tag."""

  def __init__(self):
    super().__init__()
    self.tags = []

  def handle_starttag(self, tag, attrs):
    self.tags.append((tag, dict(attrs)))


def _parse(text):
  p = _Refs()
  p.feed(text)
  return p.tags


def _read(path):
  with open(path, encoding='utf-8') as f:
    return f.read()


def test_sections_cards_and_media(tmp_path):
  wd = make_workdir(tmp_path, n=6, history=True)
  page = _read(report.write_report(wd))
  for sid in ('run', 'curves', 'metrics', 'aggregates', 'explanations'):
    assert f'<section id="{sid}">' in page, sid
  assert 'id="missing"' not in page and 'id="problems"' not in page
  tags = _parse(page)
  cards = [a for t, a in tags if 'data-example-id' in a]
  assert [c['data-example-id'] for c in cards] == [
      f'ex{i:04d}' for i in range(6)]
  # Accuracy 14/17, recomputed from the confusion matrix.
  assert '<td>0.8235</td>' in page
  assert 'Row-normalised' in page and '0.80' in page  # happy: 4 of 5.
  for tag, a in tags:
    src = a.get('src')
    if tag in ('img', 'audio', 'source') and src:
      assert not src.startswith(('http:', 'https:', '//'))
      path = os.path.join(wd, 'report', urllib.parse.unquote(src))
      assert os.path.isfile(path), src
    if tag == 'img' and src.startswith('../explain/'):
      assert a.get('loading') == 'lazy'
    if tag == 'audio':
      assert a.get('preload') == 'none'
  assert os.path.isfile(os.path.join(wd, 'report', 'curves.png'))
  assert os.path.isfile(os.path.join(wd, 'report', 'modality_share.png'))
  # Config diff against configs/parallelnet.py: only the changed fields.
  assert 'train.learning_rate' in page and 'train.batch_size' not in page
  assert '<script src' not in page and '<link' not in page  # Self-contained.


def test_unimodal_shows_one_modality(tmp_path):
  wd = make_workdir(tmp_path, n=3, modalities='speech')
  page = _read(report.write_report(wd))
  assert 'speech score' in page and 'image score' not in page
  assert 'id="f-share"' not in page  # No modality share for one modality.


def test_missing_parts_name_the_command(tmp_path):
  wd = make_workdir(tmp_path, history=False, metrics=False,
                    explanations=False)
  shutil.rmtree(os.path.join(wd, 'checkpoints'))
  page = _read(report.write_report(wd))
  missing = page.split('<section id="missing">')[1].split('</section>')[0]
  assert missing.count('<li>') == 4
  assert f'--workdir={wd} --mode=eval' in missing
  assert f'--workdir={wd} --mode=explain' in missing
  assert 'data-example-id' not in page


def test_damaged_json_and_missing_media_are_named(tmp_path, capsys):
  wd = make_workdir(tmp_path, n=3)
  with open(os.path.join(wd, 'eval_metrics.json'), 'w') as f:
    f.write('{"accuracy": 0.5, ')
  with open(os.path.join(wd, 'history.jsonl'), 'w') as f:
    f.write('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n{not json\n')
  os.remove(os.path.join(wd, 'explain', 'ex0001_kept.wav'))
  page = _read(report.write_report(wd))
  problems = page.split('<section id="problems">')[1].split('</section>')[0]
  assert 'eval_metrics.json: damaged JSON' in problems
  assert 'history.jsonl:4' in problems
  assert 'ex0001_kept.wav: missing media file' in problems
  assert 'missing: explain/ex0001_kept.wav' in page  # On the card too.
  assert len(re.findall('data-example-id=', page)) == 3
  assert 'Traceback' not in page


def test_damaged_summary_keeps_the_rest(tmp_path):
  wd = make_workdir(tmp_path, n=3)
  with open(os.path.join(wd, 'explain', 'summary.json'), 'w') as f:
    f.write('[1, 2')
  page = _read(report.write_report(wd))
  assert 'summary.json: damaged JSON' in page
  assert '<section id="metrics">' in page and 'data-example-id' not in page


def test_study_rows_link_their_own_reports(tmp_path):
  wd = make_workdir(tmp_path, n=2, study=True)
  page = _read(report.write_report(wd))
  assert 'href="../proposed/report/index.html"' in page
  assert os.path.isfile(os.path.join(wd, 'proposed', 'report', 'index.html'))
  assert 'href="../ser_only/' not in page  # No folder: no link.


def test_runs_are_recorded_and_config_file_defaults_compared(tmp_path):
  wd = make_workdir(tmp_path, n=2)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = dict(mode='train', config_file=os.path.join(
      root, 'configs', 'demo.py') + ':runlocal', overrides={},
             started=1.7e9, seconds=12.0,
             splits=dict(train=40, validation=4, test=19))
  page = _read(report.write_report(wd, run=run))
  assert 'train 40, validation 4, test 19' in page
  assert 'demo.py:runlocal defaults' in page
  with open(os.path.join(wd, report.RUNS_FILE)) as f:
    assert json.loads(f.readline())['seconds'] == 12.0


# ------------------------------------------------------------ browser --


def _chromium(url, *args, timeout=120):
  if not os.path.exists(CHROMIUM):
    pytest.skip(f'{CHROMIUM} is not installed (apt-get install chromium).')
  return subprocess.run(
      [CHROMIUM, '--headless=new', '--no-sandbox', '--disable-gpu',
       '--hide-scrollbars', '--enable-logging=stderr', '--v=0',
       '--virtual-time-budget=3000', *args, url],
      capture_output=True, text=True, timeout=timeout, check=False)


def render(index, fragment=''):
  """The DOM after scripts ran, and chromium's stderr."""
  url = 'file://' + index + fragment
  out = _chromium(url, '--dump-dom', '--window-size=1000,4000')
  assert '<html' in out.stdout, out.stderr[-2000:]
  return out.stdout, out.stderr


def _hidden_ids(dom):
  return {a['data-example-id'] for _, a in _parse(dom)
          if 'data-example-id' in a and 'hidden' in a}


@pytest.mark.slow
def test_browser_renders_filters_and_screenshot(tmp_path):
  wd = make_workdir(tmp_path, n=12)
  index = report.write_report(wd)
  dom, err = render(index)
  tags = _parse(dom)
  ids = [a['data-example-id'] for _, a in tags if 'data-example-id' in a]
  assert sorted(ids) == [f'ex{i:04d}' for i in range(12)]
  root = next(a for t, a in tags if t == 'html')
  assert 'data-js-errors' not in root, root['data-js-errors']
  assert 'Uncaught' not in err, err[-2000:]
  assert root.get('data-shown') == '12'
  # Audio players of the cards in view were made from their templates.
  assert dom.count('<template>') < 12
  assert not _hidden_ids(dom)
  for tag, a in tags:
    src = a.get('src')
    if tag in ('img', 'audio', 'source') and src:
      assert src.startswith('data:') or os.path.isfile(
          os.path.join(wd, 'report', urllib.parse.unquote(src))), src
  # The filters read the URL hash: true class 'happy', then wrong only.
  dom, _ = render(index, '#true=happy')
  shown = set(ids) - _hidden_ids(dom)
  assert shown == {f'ex{i:04d}' for i in range(12) if i % 4 == 1}
  dom, _ = render(index, '#correct=wrong&sort=p')
  shown_in_order = [a['data-example-id'] for _, a in _parse(dom)
                    if 'data-example-id' in a and 'hidden' not in a]
  wrong = [i for i in range(12) if i % 4 != (i // 2) % 4]
  assert shown_in_order == [f'ex{i:04d}' for i in sorted(wrong, reverse=True)]
  shot = os.path.join(str(tmp_path), 'shot.png')
  _chromium('file://' + index, f'--screenshot={shot}',
            '--window-size=1000,1400')
  from parallelnet.core import plotting  # pylint: disable=g-import-not-at-top
  pixels = plotting.pyplot().imread(shot)[..., :3]
  assert pixels.shape[:2] == (1400, 1000)
  assert pixels.std() > 0.05  # Not one colour.
