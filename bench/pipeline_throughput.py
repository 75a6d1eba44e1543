"""Input-pipeline throughput against what the training step consumes.

At the demo configuration: examples per second that
`input_pipeline.train_batches` delivers (global jax.Arrays on the mesh, after
the dataset is built; the first batch, which fills the shuffle buffer, is not
timed) and, beside it, examples per second that `parallelnet.train`'s
training step consumes on the same machine at the same batch. Ratio
pipeline / step; target >= 3 (the pipeline is never the bottleneck).

  python bench/pipeline_throughput.py --quick
  python bench/pipeline_throughput.py --data_dir=~/tensorflow_datasets

`--build` instead measures the dataset build itself: examples/s and peak
memory (RSS high-water of the building process, and of its largest decode
worker, from getrusage) of a whole `iitr_sier` build at 500 and 20,000
examples of tiny files (32 px images, 0.3-1.5 s clips, runlocal settings),
each in a fresh subprocess, ours and the hold-everything build of commit
--baseline (the build before streaming), in the same run:

  nice -n 10 python bench/pipeline_throughput.py --build

(--rounds builds of each, alternating which goes first; median rate, largest
RSS.)
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from bench import common  # pylint: disable=g-import-not-at-top


def pipeline_rate(config, epochs):
  """(examples/s, examples timed, build seconds) of train_batches."""
  import jax  # pylint: disable=g-import-not-at-top
  import input_pipeline  # pylint: disable=g-import-not-at-top
  from parallelnet import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  input_pipeline.get_builder(config)  # Builds on first use (not timed).
  build_s = time.perf_counter() - start
  mesh = mesh_lib.make_mesh()
  examples, seconds = 0, 0.0
  for epoch in range(epochs):
    it = input_pipeline.train_batches(config, mesh, epoch=epoch)
    jax.block_until_ready(next(it))  # Shuffle-buffer fill: not timed.
    start = time.perf_counter()
    for batch in it:
      jax.block_until_ready(batch)
      examples += batch['label'].shape[0]
    seconds += time.perf_counter() - start
  if not examples:
    raise RuntimeError('The train split gave one batch per epoch or fewer; '
                       'use a larger dataset.synthetic_size.')
  return examples / seconds, examples, build_s


def step_rate(config, rounds, min_seconds=2.0):
  """Examples/s of the jitted training step at config.train.batch_size."""
  # Imported here: the --build children measure a process without them.
  import jax  # pylint: disable=g-import-not-at-top
  from bench import train_throughput  # pylint: disable=g-import-not-at-top
  bs = config.train.batch_size
  step = train_throughput.OursStep(config, train_throughput._batch(config, bs))  # pylint: disable=protected-access
  for _ in range(2):
    jax.block_until_ready(step())
  best = float('inf')
  for _ in range(rounds):
    n, start = 0, time.perf_counter()
    while True:
      jax.block_until_ready(step())
      n += 1
      elapsed = time.perf_counter() - start
      if elapsed >= min_seconds / rounds:
        break
    best = min(best, elapsed / n)
  return bs / best


BASELINE = '4f9159b'  # Last commit whose build held every example in memory.


def _tiny_folder(folder, n):
  """n manifest rows over 24 small files (rows share files; each row is
  decoded on its own): 32 px PNG/JPEG images, 0.3-1.5 s WAV/FLAC clips at
  8-44.1 kHz, mono and stereo."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  os.makedirs(folder, exist_ok=True)
  files = []
  for k in range(24):
    img = f'i{k}.{"png" if k % 2 else "jpg"}'
    Image.fromarray(rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)).save(
        os.path.join(folder, img))
    sr = (8000, 16000, 22050, 44100)[k % 4]
    ch = 1 + k % 2
    aud = f'a{k}.{"wav" if k % 3 else "flac"}'
    sf.write(os.path.join(folder, aud), 0.1 * rng.standard_normal(
        (int(sr * (0.3 + 0.05 * k)), ch)).astype(np.float32), sr)
    files.append((img, aud))
  classes = ('anger', 'happy', 'hate', 'sad')
  with open(os.path.join(folder, 'manifest.csv'), 'w') as f:
    f.write('id,image,audio,label\n')
    for i in range(n):
      img, aud = files[i % len(files)]
      f.write(f'x{i:06d},{img},{aud},{classes[i % 4]}\n')


def _build_child(n, work, code_dir):
  """Runs in a fresh process: one whole build; prints a JSON result line."""
  sys.path.insert(0, code_dir)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from input_pipeline import builders  # pylint: disable=g-import-not-at-top
  tfds.display_progress_bar(False)
  config = common.load_config('parallelnet', 'runlocal')
  config.dataset.name = 'iitr_sier'
  folder = os.path.join(work, 'data')
  _tiny_folder(folder, n)
  settings = builders.settings_from_config(config)
  b = builders.IitrSier(
      config=builders.make_builder_config(settings, builders.EMOTIONS),
      data_dir=os.path.join(work, 'tfds'))
  start = time.perf_counter()
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=folder))
  seconds = time.perf_counter() - start
  written = sum(s.num_examples for s in b.info.splits.values())
  assert written == n, (written, n)
  kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB.
  child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  print('RESULT ' + json.dumps(dict(
      n=n, seconds=seconds, rate=n / seconds, rss_mib=kib / 1024,
      worker_rss_mib=child / 1024)))


def build_rows(sizes, baseline, rounds):
  """[(label, n, result dict)] for ours and the baseline commit, per size:
  `rounds` builds each, in alternating order (ours first in even rounds),
  combined as the median rate and the largest RSS."""
  runs = []
  with tempfile.TemporaryDirectory(prefix='bench_build_') as tmp:
    old = os.path.join(tmp, 'baseline_code')
    os.makedirs(old)
    archive = subprocess.run(
        ['git', '-C', common.REPO, 'archive', baseline, 'input_pipeline',
         'configs'], check=True, capture_output=True).stdout
    subprocess.run(['tar', '-x', '-C', old], input=archive, check=True)
    contenders = [('streaming (ours)', common.REPO),
                  (f'hold-all ({baseline})', old)]
    for n in sizes:
      for k in range(rounds):
        for label, code in contenders[::1 if k % 2 == 0 else -1]:
          work = tempfile.mkdtemp(dir=tmp)
          out = subprocess.run(
              [sys.executable, os.path.abspath(__file__), '--_child', str(n),
               work, code], check=True, capture_output=True, text=True)
          line = [l for l in out.stdout.splitlines()
                  if l.startswith('RESULT ')]
          r = json.loads(line[-1][len('RESULT '):])
          runs.append((label, n, r))
          print(f'{label:24s} n={n:6d}  {r["rate"]:7.1f} ex/s  '
                f'RSS {r["rss_mib"]:6.0f} MiB  worker RSS '
                f'{r["worker_rss_mib"]:5.0f} MiB  ({common.machine()})',
                flush=True)
  results = []
  for n in sizes:
    for label, _ in contenders:
      rs = [r for l, m, r in runs if (l, m) == (label, n)]
      results.append((label, n, dict(
          rate=common.median([r['rate'] for r in rs]),
          rss_mib=max(r['rss_mib'] for r in rs),
          worker_rss_mib=max(r['worker_rss_mib'] for r in rs))))
  return results


def build_main(a):
  machine = common.machine()
  sizes = [int(x) for x in a.build_sizes.split(',')]
  results = build_rows(sizes, a.baseline, a.rounds)
  common.print_table(
      f'Dataset build (iitr_sier, runlocal settings, tiny files; median of '
      f'{a.rounds} alternating builds), {machine}',
      ['build', 'examples', 'examples/s', 'peak RSS (MiB)',
       'largest worker RSS (MiB)'],
      [[label, str(n), f'{r["rate"]:.0f}', f'{r["rss_mib"]:.0f}',
        f'{r["worker_rss_mib"]:.0f}'] for label, n, r in results])
  ours = {n: r for label, n, r in results if label.startswith('streaming')}
  base = {n: r for label, n, r in results if not label.startswith('streaming')}
  lo, hi = min(sizes), max(sizes)
  growth = ours[hi]['rss_mib'] - ours[lo]['rss_mib']
  base_growth = base[hi]['rss_mib'] - base[lo]['rss_mib']
  print(f'\npeak RSS growth {lo} -> {hi} examples: ours {growth:+.0f} MiB, '
        f'hold-all {base_growth:+.0f} MiB; build rate at {hi}: ours '
        f'{ours[hi]["rate"]:.0f} ex/s, hold-all {base[hi]["rate"]:.0f} ex/s')
  if not a.no_row:
    common.append_row(
        'pipeline_throughput --build',
        '; '.join(f'{label} n={n}: {r["rate"]:.0f} ex/s, peak RSS '
                  f'{r["rss_mib"]:.0f} MiB (worker {r["worker_rss_mib"]:.0f})'
                  for label, n, r in results),
        f'RSS growth {lo}->{hi}: ours {growth:+.0f} MiB, hold-all '
        f'{base_growth:+.0f} MiB; rate ours/hold-all '
        f'{ours[hi]["rate"] / base[hi]["rate"]:.2f}x',
        machine_desc=machine, versions_desc=common.versions('tensorflow'))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--quick', action='store_true',
                 help='a 400-example demo corpus (built in a bench folder), '
                      'two epochs.')
  p.add_argument('--data_dir', default=None,
                 help='where the dataset is (or is built); default the '
                      'config\'s, or /tmp/parallelnet_bench_data with --quick.')
  p.add_argument('--epochs', type=int, default=None)
  p.add_argument('--no_row', action='store_true')
  p.add_argument('--build', action='store_true',
                 help='measure the dataset build instead (see above).')
  p.add_argument('--build_sizes', default='500,20000')
  p.add_argument('--rounds', type=int, default=2,
                 help='--build: builds per contender and size (alternating).')
  p.add_argument('--baseline', default=BASELINE,
                 help='commit whose input_pipeline is the baseline build.')
  p.add_argument('--_child', nargs=3, help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  if a._child:  # pylint: disable=protected-access
    return _build_child(int(a._child[0]), a._child[1], a._child[2])  # pylint: disable=protected-access
  if a.build:
    return build_main(a)
  config = common.load_config('demo')
  if a.quick:
    config.dataset.synthetic_size = 400
    config.dataset.data_dir = '/tmp/parallelnet_bench_data'
  if a.data_dir:
    config.dataset.data_dir = a.data_dir
  epochs = a.epochs or (2 if a.quick else 3)
  machine = common.machine()

  pipe, n, build_s = pipeline_rate(config, epochs)
  train = step_rate(config, rounds=3)
  ratio = pipe / train
  common.print_table(
      f'Input pipeline vs training step, demo config '
      f'({common.config_name(config)}, batch {config.train.batch_size}), '
      f'{machine}',
      ['what', 'examples/s', 'notes'],
      [['input_pipeline.train_batches', f'{pipe:.0f}',
        f'{n} examples over {epochs} epoch(s); build {build_s:.0f} s '
        '(not timed)'],
       ['train_step (jitted, donated)', f'{train:.0f}',
        'best of 3 rounds, warm-up excluded']])
  print(f'\nratio pipeline / training step: {ratio:.1f}x (target >= 3)')
  if not a.no_row:
    common.append_row(
        'pipeline_throughput',
        f'pipeline {pipe:.0f} ex/s ({n} ex, {epochs} epochs); train step '
        f'{train:.0f} ex/s; demo {common.config_name(config)}, batch '
        f'{config.train.batch_size}', f'{ratio:.1f}x',
        machine_desc=machine, versions_desc=common.versions('tensorflow'))
  return ratio


if __name__ == '__main__':
  main()
