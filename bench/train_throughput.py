"""Training-step throughput: ours (JAX/Flax) against Keras 3 on TensorFlow.

One training step = forward, backward and Adam update on one batch, with the
paper's loss (1.0 * CE + 0.5 * categorical focal). Ours is
`parallelnet.train.train_step` jitted with the state donated, exactly as
training runs it; the baseline is `bench/keras_parallelnet.py` (the same
architecture, loss and optimizer in Keras 3 with the TensorFlow backend, the
framework the paper's authors used), timed with `train_on_batch` in graph mode
(TF's oneDNN kernels) and, when asked, with `jit_compile=True` (XLA); the best
Keras setting is the baseline of the ratio. Both see the same random batch.
Contenders alternate round by round; compilation and warm-up steps are not
timed. The ratio is (ours examples/s) / (best Keras examples/s).

  python bench/train_throughput.py --quick        # < 2 min on 2 cores
  python bench/train_throughput.py                # demo and paper size, batch 8
  python bench/train_throughput.py --sizes=paper --paper_batch=16 --rounds=5
"""

import argparse
import contextlib
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# The XLA:CPU defaults of every CPU run (PARALLELNET_CPU_FLAGS=0: without).
from parallelnet.core import cpu_flags  # pylint: disable=g-import-not-at-top
cpu_flags.apply()

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from bench import common  # pylint: disable=g-import-not-at-top
from bench import fast_ops as bench_fast_ops  # pylint: disable=g-import-not-at-top


def _batch(config, batch_size, seed=0):
  """A random batch of the config's shapes (numpy): image, spectrogram, label."""
  rng = np.random.default_rng(seed)
  s = config.input.image_size
  return dict(
      image=rng.uniform(0, 1, (batch_size, s, s, 3)).astype(np.float32),
      spectrogram=rng.uniform(
          0, 1, (batch_size, config.input.num_frames, config.input.n_mels,
                 1)).astype(np.float32),
      label=rng.integers(0, len(config.dataset.classes),
                         batch_size).astype(np.int32))


class OursStep:
  """`parallelnet.train.train_step` under jit with the state donated."""

  def __init__(self, config, batch, fast_ops='', xla_flags=''):
    from parallelnet import losses  # pylint: disable=g-import-not-at-top
    from parallelnet import models  # pylint: disable=g-import-not-at-top
    from parallelnet import train  # pylint: disable=g-import-not-at-top
    from parallelnet import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
    model = models.get_model(config)
    self.state = train.init_train_state(config, model, mesh_lib.make_mesh())
    step = jax.jit(
        functools.partial(train.train_step,
                          loss_kwargs=losses.loss_weights(config.train)),
        donate_argnums=0)
    self.batch = jax.device_put(batch)
    self.rng = jax.random.key(1)
    # Compiled here, so that bench/fast_ops.py's lowerings apply when asked.
    ops = set(fast_ops.split(',')) if fast_ops else set()
    if ops - {'conv', 'wideconv', 'pool'}:
      raise ValueError(f'--fast_ops={fast_ops!r}: expected a comma list of '
                       'conv, wideconv, pool.')
    with (bench_fast_ops.patched_flax(
        conv=bool(ops & {'conv', 'wideconv'}), pool='pool' in ops,
        min_conv_channels=0 if 'conv' in ops else WIDE)
          if ops else contextlib.nullcontext()):
      self.step = step.lower(self.state, self.batch, self.rng).compile(
          compiler_options=compiler_options(xla_flags))
    self.params = models.count_params(self.state.params)

  def __call__(self):
    self.state, metrics = self.step(self.state, self.batch, self.rng)
    return metrics['loss']


class KerasStep:
  """`model.train_on_batch` of the Keras baseline (returns a numpy loss)."""

  def __init__(self, config, batch, jit_compile):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from bench import keras_parallelnet  # pylint: disable=g-import-not-at-top
    self.model = keras_parallelnet.from_config(config, jit_compile=jit_compile)
    self.x = {'image': tf.constant(batch['image']),
              'spectrogram': tf.constant(batch['spectrogram'])}
    self.y = tf.one_hot(batch['label'], len(config.dataset.classes))
    self.params = keras_parallelnet.trainable_count(self.model)

  def __call__(self):
    return self.model.train_on_batch(self.x, self.y)


FAST = 'ours + bench/fast_ops.py'

# Enum-valued XLA:CPU options: XLA_FLAGS takes short lower-case names, a
# compile's compiler_options the enum's own names.
_ENUM_PREFIX = {
    'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_',
    'xla_cpu_experimental_xnn_fusion_type': 'LIBRARY_FUSION_TYPE_',
    'xla_cpu_experimental_onednn_fusion_type': 'LIBRARY_FUSION_TYPE_',
    'xla_cpu_experimental_xnn_graph_fusion_mode': 'XNN_GRAPH_FUSION_MODE_',
}


def compiler_options(xla_flags):
  """compiler_options for `.compile()` from flags written as in XLA_FLAGS
  (`--name=value ...`), so that settings can be compared in one process.
  Enum values may be short (`dot,eltwise`, `greedy`); an empty value (`--name=`)
  is an empty list."""
  out = {}
  for flag in xla_flags.split():
    name, _, value = flag.lstrip('-').partition('=')
    prefix = _ENUM_PREFIX.get(name)
    if prefix:
      value = ','.join(v if v.startswith(prefix) else prefix + v.upper()
                       for v in value.split(',') if v)
    elif value.lower() in ('true', 'false'):
      value = value.lower() == 'true'
    out[name] = value
  return out

WIDE = 64  # --fast_ops=wideconv: convs with >= WIDE output channels.


def _sync(x):
  if isinstance(x, jax.Array):
    x.block_until_ready()
  return x


def run_size(label, config, batch_size, rounds, warmup, keras_modes,
             fast_ops=False, min_round_s=0.5, xla_settings=()):
  """Times ours and Keras at one size; returns table rows and examples/s."""
  batch = _batch(config, batch_size)
  contenders = {'ours (JAX/Flax)': OursStep(config, batch)}
  for flags in xla_settings:
    contenders[f'ours {flags}'] = OursStep(config, batch, xla_flags=flags)
  if fast_ops:
    contenders[FAST] = OursStep(config, batch, fast_ops=fast_ops)
    print(f'  {FAST}: prototype lowerings {fast_ops}')
  for jit_compile in keras_modes:
    name = f'Keras 3/TF ({"XLA" if jit_compile else "graph+oneDNN"})'
    contenders[name] = KerasStep(config, batch, jit_compile)
  counts = {n: c.params for n, c in contenders.items()}
  if len(set(counts.values())) != 1:
    raise RuntimeError(f'Parameter counts differ at {label}: {counts}; the '
                       'baseline no longer matches the model.')
  # Warm-up (compilation included), then steps per round chosen so that a
  # round of the fastest contender lasts >= min_round_s (timer noise).
  fastest = float('inf')
  for name, fn in contenders.items():
    start = time.perf_counter()
    for _ in range(warmup):
      _sync(fn())
    print(f'  {label} {name}: set-up and {warmup} warm-up steps '
          f'{time.perf_counter() - start:.1f} s', flush=True)
    fastest = min(fastest, common.time_call(fn, _sync))
  per_round = max(1, int(np.ceil(min_round_s / fastest)))

  # CPU seconds of this process per step: the work done, which other jobs on
  # a shared machine move much less than the wall time.
  cpu = {n: [] for n in contenders}

  def repeat(name, fn):
    def run():
      start = time.process_time()
      for _ in range(per_round):
        out = _sync(fn())
      cpu[name].append((time.process_time() - start) / per_round)
      return out
    return run

  times = common.alternate({n: repeat(n, f) for n, f in contenders.items()},
                           rounds, {n: _sync for n in contenders})
  rows, eps, cpu_med = [], {}, {}
  for name, ts in times.items():
    ts = [t / per_round for t in ts]
    med = common.median(ts)
    eps[name] = batch_size / med
    cpu_med[name] = common.median(cpu[name])
    rows.append([label, name, batch_size, f'{counts[name]:,}',
                 f'{min(ts):.3f}', f'{med:.3f}', f'{cpu_med[name]:.3f}',
                 f'{eps[name]:.2f}'])
  return rows, eps, cpu_med


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--quick', action='store_true',
                 help='demo size and paper size at batch 2, 2 rounds, 1 warm-up, '
                      'Keras graph mode only.')
  p.add_argument('--sizes', default='demo,paper',
                 help='comma list of demo, paper.')
  p.add_argument('--demo_batch', type=int, default=None,
                 help='default: the demo config\'s train.batch_size.')
  p.add_argument('--paper_batch', type=int, default=None,
                 help='default 8 (2 with --quick).')
  p.add_argument('--rounds', type=int, default=None)
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--keras', default=None,
                 help='Keras settings to time: graph (jit_compile=False), '
                      'xla (jit_compile=True). Default graph,xla; graph with '
                      '--quick (XLA was the slower Keras setting on CPU).')
  p.add_argument('--fast_ops', default='',
                 help='also time ours traced with bench/fast_ops.py\'s '
                      'lowerings (a proposed model-side change), comma list: '
                      'conv (matmul kernel gradient in every 3x3/1x1 conv), '
                      'wideconv (only in convs with >= 64 output channels), '
                      'pool (nn.max_pool as reshape + max; the model\'s '
                      'MaxPool does this already).')
  p.add_argument('--xla', default='',
                 help='also time ours compiled with these XLA:CPU settings, '
                      'written as in XLA_FLAGS; settings separated by "|", '
                      'e.g. "--xla_cpu_experimental_ynn_fusion_type=dot|'
                      '--xla_cpu_use_xnnpack=false". "ours" itself is '
                      'compiled with the process\'s XLA_FLAGS.')
  p.add_argument('--no_keras', action='store_true',
                 help='time ours only (with --xla: compare settings).')
  p.add_argument('--no_row', action='store_true',
                 help='do not append a row to BENCHMARKS.md.')
  a = p.parse_args(argv)
  rounds = a.rounds or (2 if a.quick else 5)
  warmup = 1 if a.quick else a.warmup
  paper_batch = a.paper_batch or (2 if a.quick else 8)
  keras = a.keras or ('graph' if a.quick else 'graph,xla')
  keras_modes = [] if a.no_keras else [
      {'graph': False, 'xla': True}[k] for k in keras.split(',')]
  xla_settings = [x.strip() for x in a.xla.split('|') if x.strip()]
  machine = common.machine()
  print(f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}', flush=True)

  rows, ratios, numbers = [], {}, []
  for size in a.sizes.split(','):
    if size == 'demo':
      config = common.load_config('demo')
      bs = a.demo_batch or config.train.batch_size
    elif size == 'paper':
      config = common.load_config('parallelnet')
      bs = paper_batch
    else:
      raise ValueError(f'--sizes: unknown size {size!r}; use demo, paper.')
    label = f'{size} ({common.config_name(config)})'
    r, eps, cpu = run_size(label, config, bs, rounds, warmup, keras_modes,
                           a.fast_ops, xla_settings=xla_settings)
    rows += r
    ours = eps.pop('ours (JAX/Flax)')
    fast = eps.pop(FAST, None)
    variants = {f: eps.pop(f'ours {f}') for f in xla_settings}
    keras = dict(eps)
    best_name = max(keras, key=keras.get) if keras else None
    if keras:
      ratios[size] = ours / keras[best_name]
      if fast is not None:
        ratios[size + ' with fast_ops'] = fast / keras[best_name]
    for f, v in variants.items():
      ratios[f'{size} {f} / ours'] = v / ours
      if keras:
        ratios[f'{size} {f} / Keras'] = v / keras[best_name]
      eps[f'ours {f}'] = v
    if fast is not None:
      eps[FAST] = fast
    numbers.append(f'{size} b{bs}: ours {ours:.2f} ex/s, '
                   + ', '.join(f'{n} {v:.2f}' for n, v in eps.items())
                   + '; median CPU s/step: '
                   + ', '.join(f'{n} {v:.2f}' for n, v in cpu.items()))

  common.print_table(
      f'Training step throughput (forward+backward+Adam), {machine}',
      ['size', 'framework', 'batch', 'params', 'best s/step', 'median s/step',
       'median CPU s/step', 'ex/s'],
      rows)
  print()
  for size, r in ratios.items():
    what = size if '/' in size else f'ours / best Keras at {size} size'
    print(f'ratio {what}: {r:.2f}x' + ('' if '/' in size else
                                       ' (target >= 1.0)'))
  if not a.no_row:
    common.append_row(
        'train_throughput', '; '.join(numbers),
        ', '.join(f'{s} {r:.2f}x' for s, r in ratios.items()),
        machine_desc=machine,
        versions_desc=common.versions('keras', 'tensorflow'))
  return ratios


if __name__ == '__main__':
  main()
