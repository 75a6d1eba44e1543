"""The accelerator run in one command: step, MFU, explanations, pipeline, memory.

On whatever JAX backend it finds (GPU, TPU or CPU), at paper size
(configs/parallelnet.py: VGG16/VGG19 trunks, 128x128 inputs, fresh weights),
prints one table of
  * the training step (forward, backward, Adam; `parallelnet.train.train_step`
    jitted with the state donated, as training runs it) at `--batch_per_chip`
    examples per chip, once per compute dtype (`config.model.dtype`:
    bfloat16 compute with float32 parameters, and float32): examples/s and
    MFU = (FLOPs of one step from the compiled HLO's cost analysis, per chip)
    / (step seconds) / (the chip's dense peak for that dtype, from PEAKS);
  * factorized exact DnCShap at depth 3 (`explain.dncshap_batch` with
    `explain.run.probability_fn`'s default, the modality-factorized fn):
    explanations/s, per dtype;
  * the input pipeline (`input_pipeline.train_batches` over a synthetic_sier
    corpus at paper input sizes, built first, build not timed): examples/s
    against what the fastest step consumes;
  * peak device memory (`memory_stats()['peak_bytes_in_use']` where the
    backend reports it; else the host's peak RSS);
and the jax/jaxlib versions, backend and device, so one run also checks the
README's GPU install line:

  pip install "jax[cuda12]==0.10.2" && python bench/accelerator.py   # < 8 min on one GPU
  python bench/accelerator.py --quick     # runlocal sizes, a CPU check (< 2 min)

Timings exclude compilation; each figure is the median of `--rounds` rounds.
"""

import argparse
import gc
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# The XLA:CPU defaults of every CPU run (PARALLELNET_CPU_FLAGS=0: without).
from parallelnet.core import cpu_flags  # pylint: disable=g-import-not-at-top
cpu_flags.apply()

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from bench import common  # pylint: disable=g-import-not-at-top

# Dense peak FLOP/s per chip, (bfloat16, float32), from the vendors' data
# sheets (no sparsity). float32 on NVIDIA is the non-tensor-core figure (XLA
# may use TF32 tensor cores for float32 dots, so float32 MFU can exceed 100%
# of it); TPUs have no separate float32 peak (None: not printed).
PEAKS = (  # (substring of device_kind, bf16, fp32)
    ('H200', 989e12, 67e12),
    ('H100', 989e12, 67e12),
    ('A100', 312e12, 19.5e12),
    ('L4', 121e12, 30.3e12),
    ('TPU v6', 918e12, None),
    ('TPU v5p', 459e12, None),
    ('TPU v5', 197e12, None),  # v5e / v5 lite.
    ('TPU v4', 275e12, None),
)


def chip_peak(device_kind, dtype, override=None):
  """Peak FLOP/s of one chip for `dtype`, or None when unknown."""
  if override:
    return override * 1e12
  for name, bf16, fp32 in PEAKS:
    if name.lower() in device_kind.lower():
      return bf16 if dtype == 'bfloat16' else fp32
  return None


def step_flops(compiled):
  """FLOPs of one call of a compiled executable (per device program)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get('flops', float('nan')))


def peak_memory():
  """(bytes, what): device peak where reported, else host peak RSS."""
  stats = None
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    pass
  if stats and 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'], 'device 0 peak_bytes_in_use'
  return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
          'host peak RSS (backend reports no device memory)')


def timed_rounds(fn, sync, rounds, min_round_s):
  """Median seconds of one call: `rounds` rounds of k calls each, k chosen
  so that a round lasts >= min_round_s."""
  once = common.time_call(fn, sync)
  k = max(1, int(np.ceil(min_round_s / max(once, 1e-6))))
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    for _ in range(k):
      out = fn()
    sync(out)
    times.append((time.perf_counter() - start) / k)
  return common.median(times)


def paper_config(quick, dtype):
  config = common.load_config('parallelnet', 'runlocal' if quick else None)
  config.model.dtype = dtype
  return config


def measure_step(config, batch_size, rounds, min_round_s):
  """(examples/s, FLOPs per step per chip, compile seconds)."""
  from bench import train_throughput  # pylint: disable=g-import-not-at-top
  batch = train_throughput._batch(config, batch_size)  # pylint: disable=protected-access
  start = time.perf_counter()
  step = train_throughput.OursStep(config, batch)
  compile_s = time.perf_counter() - start
  flops = step_flops(step.step)
  sync = jax.block_until_ready
  sync(step())  # Warm-up.
  seconds = timed_rounds(step, sync, rounds, min_round_s)
  del step
  gc.collect()
  return batch_size / seconds, flops, seconds, compile_s


def measure_explain(config, examples, depth, rounds, min_round_s):
  """(explanations/s, compile seconds) of factorized exact DnCShap."""
  import functools  # pylint: disable=g-import-not-at-top
  from explain import dncshap_batch  # pylint: disable=g-import-not-at-top
  from explain.run import probability_fn  # pylint: disable=g-import-not-at-top
  from parallelnet import models  # pylint: disable=g-import-not-at-top
  model = models.get_model(config)
  variables = models.init_variables(model, config, jax.random.key(0),
                                    load_pretrained=False)
  fn = probability_fn(model, variables)
  rng = np.random.default_rng(0)
  s = config.input.image_size
  images = rng.uniform(0, 1, (examples, s, s, 3)).astype(np.float32)
  specs = rng.uniform(0, 1, (examples, config.input.num_frames,
                             config.input.n_mels, 1)).astype(np.float32)
  run = functools.partial(dncshap_batch, fn, images, specs, depth=depth,
                          mode='exact', max_batch=config.explain.max_batch)
  start = time.perf_counter()
  jax.block_until_ready(run())
  compile_s = time.perf_counter() - start
  seconds = timed_rounds(run, jax.block_until_ready, rounds, min_round_s)
  return examples / seconds, compile_s


def measure_pipeline(config, examples, batch_size, data_dir):
  """(examples/s, examples timed, build seconds) of train_batches."""
  from bench import pipeline_throughput  # pylint: disable=g-import-not-at-top
  from parallelnet.models import scaling  # pylint: disable=g-import-not-at-top
  config = scaling.resolve_config(config)
  config.dataset.name = 'synthetic_sier'
  config.dataset.synthetic_size = examples
  config.dataset.data_dir = data_dir
  config.train.batch_size = batch_size
  config.train.max_steps_per_epoch = -1
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.display_progress_bar(False)
  return pipeline_throughput.pipeline_rate(config, epochs=1)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--quick', action='store_true',
                 help='runlocal sizes (32 px, width 1/16), batch 8 per chip, '
                      'float32 only, 2 explanations, a 96-example corpus: a '
                      'check that the script runs (CPU, < 2 min).')
  p.add_argument('--batch_per_chip', type=int, default=None,
                 help='default 64 (8 with --quick).')
  p.add_argument('--dtypes', default=None,
                 help='comma list of compute dtypes; default '
                      'bfloat16,float32 (float32 with --quick).')
  p.add_argument('--depth', type=int, default=3)
  p.add_argument('--explain_examples', type=int, default=None,
                 help='examples per dncshap_batch call, default 16 per chip '
                      '(2 with --quick).')
  p.add_argument('--pipeline_examples', type=int, default=None,
                 help='synthetic corpus size (70%% of it, less 10%% for '
                      'validation, is the train split); default 2048 '
                      '(96 with --quick).')
  p.add_argument('--data_dir', default=None,
                 help='where the synthetic corpus is built; default a '
                      'temporary folder.')
  p.add_argument('--rounds', type=int, default=None,
                 help='timed rounds per figure (default 5, 2 with --quick).')
  p.add_argument('--min_round_s', type=float, default=None,
                 help='seconds per round at least (default 1.0, 0.2 with '
                      '--quick).')
  p.add_argument('--peak_tflops', type=float, default=None,
                 help='peak TFLOP/s per chip for MFU, overriding PEAKS.')
  p.add_argument('--skip', default='',
                 help='comma list of parts to skip: train, explain, pipeline.')
  p.add_argument('--no_row', action='store_true',
                 help='do not append a row to BENCHMARKS.md.')
  a = p.parse_args(argv)
  quick = a.quick
  dtypes = (a.dtypes or ('float32' if quick else 'bfloat16,float32')).split(',')
  per_chip = a.batch_per_chip or (8 if quick else 64)
  rounds = a.rounds or (2 if quick else 5)
  min_round_s = a.min_round_s or (0.2 if quick else 1.0)
  skip = set(filter(None, a.skip.split(',')))
  t_start = time.perf_counter()

  import jaxlib  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  n = len(devices)
  kind = devices[0].device_kind
  backend = jax.default_backend()
  print(f'jax {jax.__version__}, jaxlib {jaxlib.__version__}, backend '
        f'{backend}, {n} x {kind}; host {common.machine()}', flush=True)
  if backend == 'cpu' and not quick:
    print('note: no accelerator found; paper size on CPU takes long '
          '(use --quick for a check).', flush=True)

  rows, numbers, best_step = [], [], None
  size = 'runlocal' if quick else 'paper'
  if 'train' not in skip:
    for dtype in dtypes:
      config = paper_config(quick, dtype)
      bs = per_chip * n
      eps, flops, seconds, compile_s = measure_step(config, bs, rounds,
                                                    min_round_s)
      peak = chip_peak(kind, dtype, a.peak_tflops)
      achieved = flops / seconds  # Per chip: cost analysis is per device.
      mfu = f'{100 * achieved / peak:.1f}%' if peak else '-'
      peak_s = f'{peak / 1e12:g}' if peak else 'unknown'
      rows.append([f'train step {dtype}', f'{eps:,.1f} ex/s',
                   f'{size} {common.config_name(config)}, batch {bs} '
                   f'({per_chip}/chip), {seconds * 1e3:.1f} ms/step, '
                   f'{flops / 1e9:,.1f} GFLOP/step/chip (HLO), '
                   f'{achieved / 1e12:.2f} TFLOP/s/chip, MFU {mfu} of '
                   f'{peak_s} TFLOP/s; compile {compile_s:.0f} s'])
      numbers.append(f'step {dtype} b{bs}: {eps:.1f} ex/s, MFU {mfu}')
      print(f'  {rows[-1][0]}: {rows[-1][1]}; {rows[-1][2]}', flush=True)
      if best_step is None or eps > best_step[1]:
        best_step = (dtype, eps)

  if 'explain' not in skip:
    examples = a.explain_examples or (2 if quick else 16 * n)
    for dtype in dtypes:
      config = paper_config(quick, dtype)
      rate, compile_s = measure_explain(config, examples, a.depth, rounds,
                                        min_round_s)
      rows.append([f'DnCShap exact d{a.depth} {dtype}',
                   f'{rate:,.1f} expl/s',
                   f'factorized, {examples} examples per call, max_batch '
                   f'{config.explain.max_batch}; compile {compile_s:.0f} s'])
      numbers.append(f'dncshap exact d{a.depth} {dtype}: {rate:.1f}/s')
      print(f'  {rows[-1][0]}: {rows[-1][1]}; {rows[-1][2]}', flush=True)

  if 'pipeline' not in skip:
    config = paper_config(quick, dtypes[0])
    size_n = a.pipeline_examples or (96 if quick else 2048)
    bs = per_chip * n
    with tempfile.TemporaryDirectory(prefix='accel_data_') as tmp:
      rate, timed, build_s = measure_pipeline(config, size_n, bs,
                                              a.data_dir or tmp)
    vs = (f'{rate / best_step[1]:.1f}x the {best_step[0]} step\'s '
          f'{best_step[1]:,.1f} ex/s' if best_step else 'step not measured')
    rows.append(['input pipeline', f'{rate:,.1f} ex/s',
                 f'{vs}; {timed} examples at batch {bs}, build {build_s:.0f} '
                 's (not timed)'])
    numbers.append(f'pipeline {rate:.0f} ex/s ({vs})')
    print(f'  {rows[-1][0]}: {rows[-1][1]}; {rows[-1][2]}', flush=True)

  mem, what = peak_memory()
  rows.append(['peak memory', f'{mem / 2**30:.2f} GiB', what])
  numbers.append(f'peak memory {mem / 2**30:.2f} GiB ({what})')
  total = time.perf_counter() - t_start
  common.print_table(
      f'Accelerator run: jax {jax.__version__}, jaxlib {jaxlib.__version__}, '
      f'{backend}, {n} x {kind}, {total:.0f} s in all',
      ['what', 'rate', 'details'], [[r[0], r[1], r[2]] for r in rows])
  if not a.no_row:
    common.append_row(
        'accelerator' + (' --quick' if quick else ''), '; '.join(numbers),
        '; '.join(x for x in numbers if 'MFU' in x) or '-',
        machine_desc=f'{n} x {kind} ({backend}); host {common.machine()}',
        versions_desc=common.versions('jaxlib'))
  return rows


if __name__ == '__main__':
  main()
