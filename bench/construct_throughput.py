"""Dataset-construction throughput (paper §3.1): rows/s with espeak-ng.

Builds a generated B-T4SA-style source (tweet-length texts, PNG images) into
a dataset with `input_pipeline.construct.construct_dataset`, espeak-ng as the
TTS and two workdir teachers (speech-only and image-only, restored from
their workdirs like `--ser_teacher/--ier_teacher`; fresh init, which runs at
the speed of a trained model), once per worker count. Prints rows/s and where
the time goes per row: TTS (espeak-ng + writing the WAV), decoding (image and
spectrogram with each teacher's preprocessing; both in the workers) and
teacher inference (batched, jitted, in the main process). The baseline is
the 1-worker run in the same process; ratio = rows/s of the most workers /
rows/s of 1 worker.

  nice -n 10 python bench/construct_throughput.py --quick
  nice -n 10 python bench/construct_throughput.py --rows=400 --size=demo
  nice -n 10 python bench/construct_throughput.py --rows=64 --size=paper
"""

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top
from PIL import Image  # pylint: disable=g-import-not-at-top

from bench import common  # pylint: disable=g-import-not-at-top

WORDS = ('love', 'this', 'sunny', 'day', 'so', 'angry', 'about', 'the',
         'traffic', 'again', 'what', 'a', 'beautiful', 'view', 'feeling',
         'sad', 'tonight', 'cannot', 'believe', 'it', 'best', 'party', 'ever',
         'hate', 'waiting', 'in', 'line', 'with', 'my', 'friends')


def make_source(folder, n, image_px=256, seed=0):
  """n rows of 8-20 random words and a random image_px PNG each."""
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(folder, 'img'), exist_ok=True)
  with open(os.path.join(folder, 'source.csv'), 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['id', 'text', 'image'])
    for i in range(n):
      img = (rng.random((image_px // 8, image_px // 8, 3)) * 255).astype(
          np.uint8)
      Image.fromarray(img).resize((image_px, image_px)).save(
          os.path.join(folder, 'img', f'{i}.png'))
      w.writerow([f'r{i}', ' '.join(rng.choice(WORDS, rng.integers(8, 21))),
                  f'img/{i}.png'])


def make_teacher_workdir(workdir, config):
  """A workdir as training leaves it (config.json + a best checkpoint),
  holding freshly initialised variables."""
  from parallelnet import checkpointing  # pylint: disable=g-import-not-at-top
  from parallelnet import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from parallelnet import models  # pylint: disable=g-import-not-at-top
  from parallelnet import train  # pylint: disable=g-import-not-at-top
  mesh = mesh_lib.make_mesh()
  state = train.init_train_state(config, models.get_model(config), mesh)
  ckpts = checkpointing.Checkpoints(workdir, config, async_save=False)
  ckpts.save('best', 0, train.checkpoint_tree(state), {})
  ckpts.wait()
  ckpts.close()
  checkpointing.write_config(config, workdir)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--rows', type=int, default=200)
  p.add_argument('--size', default='demo', choices=['demo', 'paper'],
                 help='teacher configs: configs/demo.py or configs/parallelnet.py'
                 ' with :ser_only / :ier_only')
  p.add_argument('--workers', default='1,2', help='worker counts to time')
  p.add_argument('--batch_size', type=int, default=32)
  p.add_argument('--quick', action='store_true', help='--rows=64, demo size')
  p.add_argument('--no_append', action='store_true',
                 help='do not append a row to BENCHMARKS.md')
  a = p.parse_args(argv)
  if a.quick:
    a.rows, a.size = 64, 'demo'
  from input_pipeline import construct  # pylint: disable=g-import-not-at-top
  from parallelnet import teachers  # pylint: disable=g-import-not-at-top

  work = tempfile.mkdtemp(prefix='construct_bench_')
  try:
    make_source(os.path.join(work, 'src'), a.rows)
    tt = {}
    for modality, variant in (('speech', 'ser_only'), ('image', 'ier_only')):
      name = 'demo' if a.size == 'demo' else 'parallelnet'
      config = common.load_config(name, variant)
      wd = os.path.join(work, modality)
      make_teacher_workdir(wd, config)
      tt[modality] = teachers.WorkdirTeacher(wd, modality,
                                             batch_size=a.batch_size)
      spec = tt[modality].input_spec
      shape = ((spec['num_frames'], spec['n_mels'], 1) if modality == 'speech'
               else (spec['image_size'], spec['image_size'], 3))
      tt[modality].predict(np.zeros((a.batch_size,) + shape))  # Compile.
    tts = construct.EspeakTTS(sample_rate=16000)
    machine = common.machine()
    rows_out = []
    results = {}
    for w in [int(x) for x in a.workers.split(',')]:
      out = os.path.join(work, f'out{w}')
      start = time.perf_counter()
      stats = construct.construct_dataset(
          os.path.join(work, 'src'), out, tts=tts, ser_teacher=tt['speech'],
          ier_teacher=tt['image'], workers=w, batch_size=a.batch_size,
          show_progress=False)
      wall = time.perf_counter() - start
      t = stats['timing']
      n = stats['rows']
      results[w] = n / wall
      rows_out.append([w, f'{n / wall:.2f}', f'{1000 * t["tts_s"] / n:.1f}',
                       f'{1000 * t["decode_s"] / n:.1f}',
                       f'{1000 * t["teachers_s"] / n:.1f}', f'{wall:.1f}'])
      shutil.rmtree(out)
    common.print_table(
        f'construction, {a.rows} rows, espeak-ng, {a.size} teachers '
        f'({common.config_name(tt["image"].config)}), batch {a.batch_size}; '
        f'{machine}',
        ['workers', 'rows/s', 'TTS ms/row', 'decode ms/row',
         'teachers ms/row', 'wall s'], rows_out)
    most = max(results)
    ratio = results[most] / results[min(results)]
    print(f'ratio {most} workers / {min(results)} worker: {ratio:.2f}x')
    if not a.no_append:
      numbers = '; '.join(
          f'{r[0]} worker(s): {r[1]} rows/s (per row: TTS {r[2]} ms, decode '
          f'{r[3]} ms, teachers {r[4]} ms)' for r in rows_out)
      common.append_row(
          'construct_throughput',
          f'{numbers}; {a.rows} rows, {a.size} teachers, espeak-ng',
          f'{ratio:.2f}x ({most} vs {min(results)} workers)',
          machine_desc=machine, versions_desc=common.versions())
  finally:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
  main()
