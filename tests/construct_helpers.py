"""Helpers for tests/test_construct.py: a generated source folder, a
command-template TTS (a sine WAV per text) and callable teachers."""

import csv
import os
import sys

import numpy as np
from PIL import Image

from parallelnet.core.classes import EMOTIONS
WORDS = ('sunny', 'storm', 'smile', 'tears', 'angry', 'party', 'quiet',
         'broken', 'bright', 'lost')


def make_source(folder, n, *, image_size=40, seed=0, labels=EMOTIONS):
  """source.csv + PNGs; row i's image has class i % 4 in its red channel
  (as tests/train_helpers.ArrayData plants it), a short English text and a
  `label` and `likes` column."""
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(folder, 'img'), exist_ok=True)
  rows = []
  for i in range(n):
    cls = i % len(EMOTIONS)
    x = rng.random((image_size, image_size, 3)) * 0.5
    x[..., 0] += cls / len(EMOTIONS)
    Image.fromarray((np.clip(x, 0, 1) * 255).astype(np.uint8)).save(
        os.path.join(folder, 'img', f'{i}.png'))
    text = ' '.join(rng.choice(WORDS, size=2 + i % 4))
    rows.append([f'tw{i:03d}', text, f'img/{i}.png', labels[i % len(labels)],
                 str(i * 7)])
  with open(os.path.join(folder, 'source.csv'), 'w', newline='',
            encoding='utf-8') as f:
    w = csv.writer(f)
    w.writerow(['id', 'text', 'image', 'label', 'likes'])
    w.writerows(rows)
  return rows


SINE_TTS = r'''
import array, math, sys, wave
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
text = open(args['--text-file'], encoding='utf-8').read()
if 'FAIL' in text:
    sys.exit('cannot say that')
if args.get('--log'):
    open(args['--log'], 'a').write(text + '\n')
if args.get('--slow-pids') and text.startswith('slow'):
    import os, time
    open(os.path.join(args['--slow-pids'], str(os.getpid())), 'w').close()
    time.sleep(60)
sr, f0 = 11025, 200 + 10 * len(text)
n = int(sr * (0.3 + 0.05 * len(text)))
pcm = array.array('h', (int(9000 * math.sin(2 * math.pi * f0 * i / sr))
                        for i in range(n)))
with wave.open(args['--out'], 'wb') as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(sr)
    w.writeframes(pcm.tobytes())
'''


def sine_tts_template(folder, log=None, slow_pids=None):
  """A --tts_cmd template running a tiny python TTS (sine of text length;
  standard library only, so it starts fast). With `slow_pids` (a folder),
  a text starting with 'slow' leaves the command's pid there and hangs for
  a minute first."""
  script = os.path.join(folder, 'sine_tts.py')
  with open(script, 'w') as f:
    f.write(SINE_TTS)
  cmd = f'{sys.executable} {script} --out {{out}} --text-file {{text_file}}'
  return (cmd + (f' --log {log}' if log else '')
          + (f' --slow-pids {slow_pids}' if slow_pids else ''))


def image_red_teacher(paths):
  """A callable IER teacher: softmax of how red each image is."""
  out = []
  for p in paths:
    red = np.asarray(Image.open(p).convert('RGB'), np.float64)[..., 0].mean()
    logits = -((red / 255 - (np.arange(4) / 4 + 0.25)) ** 2) * 200
    e = np.exp(logits - logits.max())
    out.append(e / e.sum())
  return np.array(out)


def speech_uniformish_teacher(paths):
  """A callable SER teacher over five classes (two needing the class map)."""
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  out = []
  for p in paths:
    n = sf.info(p).frames
    v = np.array([1.0, 2.0, 1.0 + (n % 3), 1.0, 3.0])
    out.append(v / v.sum())
  return np.array(out)


speech_uniformish_teacher.classes = ('anger', 'happy', 'excitement', 'sad',
                                     'disgust')


def image_fear_teacher(paths):
  """image_red_teacher whose fourth class is 'fear', a class that maps to
  none of the targets."""
  return image_red_teacher(paths)


image_fear_teacher.classes = ('anger', 'happy', 'hate', 'fear')
