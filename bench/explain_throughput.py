"""DnCShap explanation throughput against per-call masking, shap and the limit.

For the demo model (restored from `--workdir` when it holds a checkpoint,
otherwise freshly initialised: the speed is the same), at depth 2, 4 and 6 in
`dnc` and `exact` mode, explanations per second of:
  ours   `explain.dncshap_batch` over `--examples` examples, default max_batch;
  (i)    per-call, as the authors' code does: the same number of masked
         inputs, each its own `model.predict` of the same architecture in
         Keras 3/TF (bench/keras_parallelnet.py);
  (i')   the same in JAX: each masked input its own jitted forward call of
         batch 1 (inputs prebuilt on the device, so only the calls are
         timed). For both, a sample of calls is timed and multiplied out to
         all evaluations (a call's cost does not depend on its mask);
  (ii)   shap: `shap.PartitionExplainer` with a zeros masker
         (`shap.maskers.Partition` over the same 2 * 2**depth leaf players,
         absent = 0 = baseline, clustered as our hierarchy) on the same model
         and target, with max_evals = our number of evaluations; its model
         function is the same jitted masked forward, called with exactly
         the rows shap asks for (each size compiled in the warm-up);
  (iii)  limit: evaluations x the per-example time of a plain batched forward
         pass at its best batch size (no masking, no bookkeeping).
Ours, (ii) and (iii)'s forward are timed in alternating rounds (medians of
the rounds), so that they see the same load on a shared machine.
Ratios: ours/limit time (target <= 1.25), ours/(i) and ours/(ii) speed
(targets >= 20 and >= 5), and ours/(i') for the batching gain alone. Then the peak resident memory (VmHWM) of a fresh
process that explains at depth 6 in exact mode with the default max_batch
(target < 2 GB).

  python bench/explain_throughput.py --quick
  python bench/explain_throughput.py --workdir=/tmp/parallelnet_demo

`ours` above is `explain.run.probability_fn`'s default, the
modality-factorized function. `--factorized` instead compares, at paper
size (configs/parallelnet.py: VGG16 speech / VGG19 image trunks, 128x128
inputs, fresh weights), explanations/s of
  factorized  dncshap_batch with the FactorizedFn (each distinct masked
              image / spectrogram encoded once, Eq. 1-2 per coalition),
  plain       dncshap_batch with the full forward pass per coalition,
  limit       coalitions x the per-example time of a plain batched forward
              (batch 8), no masking or bookkeeping,
in alternating rounds of one run (medians), exact and dnc at depth 2 and 3,
their values compared (max |difference| of the node values), and then
explanations/s on 1 vs 4 simulated CPU devices (a child process with
--xla_force_host_platform_device_count=4; `dncshap_batch(devices=...)`).

  nice -n 10 python bench/explain_throughput.py --factorized
"""

import argparse
import functools
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from bench import common  # pylint: disable=g-import-not-at-top

DEFAULT_MAX_BATCH = 256  # dncshap's default; the config's too.


def load_model(config, workdir):
  """(model, variables, source) from a checkpoint, else fresh variables."""
  from parallelnet import models  # pylint: disable=g-import-not-at-top
  if workdir:
    from parallelnet import checkpointing  # pylint: disable=g-import-not-at-top
    try:
      model, variables, step = checkpointing.restore_for_inference(
          config, workdir)
      return model, variables, f'checkpoint {workdir} step {int(step)}'
    except FileNotFoundError as e:
      print(f'no checkpoint ({e}); using a freshly initialised model')
  model = models.get_model(config)
  variables = models.init_variables(model, config, jax.random.key(0))
  return model, variables, 'fresh init (same speed as trained)'


def inputs(config, n, seed=0):
  rng = np.random.default_rng(seed)
  s = config.input.image_size
  images = rng.uniform(0, 1, (n, s, s, 3)).astype(np.float32)
  specs = rng.uniform(0, 1, (n, config.input.num_frames, config.input.n_mels,
                             1)).astype(np.float32)
  return images, specs


def _block(tree):
  return jax.block_until_ready(tree)


def time_ours(fn, jfn, images, specs, depth, mode, rounds, max_batch,
              fwd_batch, shap_run=None):
  """Seconds per explanation of ours, per example of the forward, of shap.

  Ours, the plain batched forward at `fwd_batch` (the best batch size) and,
  when given, shap (`shap_run`, already warmed up: (callable, examples)) are
  timed in alternating rounds and each takes its median round, so that all
  see the same machine load (a min over many more forward timings than
  ours, or shap timed at another moment, biases the ratios on a shared
  machine). Short cases get more rounds (>= 1 s of ours in all, <= 5x).
  """
  from explain import dncshap_batch  # pylint: disable=g-import-not-at-top
  run = lambda: dncshap_batch(fn, images, specs, depth=depth, mode=mode,
                              max_batch=max_batch)
  x = jax.device_put(np.resize(images, (fwd_batch,) + images.shape[1:]))
  y = jax.device_put(np.resize(specs, (fwd_batch,) + specs.shape[1:]))
  fwd = lambda: jfn(x, y)
  _block(run())  # Compile.
  _block(fwd())
  once = common.time_call(run, _block)
  rounds = max(rounds, min(5 * rounds, int(np.ceil(1.0 / max(once, 1e-3)))))
  contenders = dict(ours=run, fwd=fwd)
  if shap_run is not None:
    contenders['shap'] = shap_run[0]
  times = common.alternate(contenders, rounds,
                           {name: _block for name in contenders})
  shap_s = (common.median(times['shap']) / shap_run[1]
            if shap_run is not None else float('nan'))
  return (common.median(times['ours']) / images.shape[0],
          common.median(times['fwd']) / fwd_batch, shap_s)


def masked_batch(images, specs, depth, num, seed=1):
  """`num` masked inputs of example 0 over the 2 * 2**depth leaf players."""
  from explain.dncshap import leaf_id_map  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  leaves = 2**depth
  masks = rng.integers(0, 2, (num, 2 * leaves)).astype(bool)
  img_leaf = leaf_id_map(images.shape[1:3], depth)
  sp_leaf = leaf_id_map(specs.shape[1:3], depth)
  keep_i = masks[:, :leaves][:, img_leaf][..., None]
  keep_s = masks[:, leaves:][:, sp_leaf][..., None]
  return (np.where(keep_i, images[0], 0).astype(np.float32),
          np.where(keep_s, specs[0], 0).astype(np.float32))


def time_per_call(jfn, images, specs, depth, evals, max_calls):
  """Seconds per explanation when every masked input is its own call."""
  n = min(evals, max_calls)
  mi, ms = masked_batch(images, specs, depth, n)
  calls = [(jax.device_put(mi[i:i + 1]), jax.device_put(ms[i:i + 1]))
           for i in range(n)]
  _block(jfn(*calls[0]))
  start = time.perf_counter()
  for x, y in calls:
    out = jfn(x, y)
    out.block_until_ready()  # One call at a time, as a predict() loop.
  per_call = (time.perf_counter() - start) / n
  return per_call * evals, n


_KERAS = {}


def _keras_model(config):
  """The Keras baseline for `config`, built once per process."""
  from bench import keras_parallelnet  # pylint: disable=g-import-not-at-top
  key = config.to_json()
  if key not in _KERAS:
    _KERAS[key] = keras_parallelnet.from_config(config)
  return _KERAS[key]


def time_keras_per_call(config, images, specs, depth, evals, max_calls):
  """Seconds per explanation when each masked input is one Keras predict().

  What the authors' code does: the same architecture in Keras 3/TF
  (bench/keras_parallelnet.py), `model.predict` on one masked input at a time.
  """
  model = _keras_model(config)
  n = min(evals, max_calls)
  mi, ms = masked_batch(images, specs, depth, n)
  x = lambda i: {'image': mi[i:i + 1], 'spectrogram': ms[i:i + 1]}
  model.predict(x(0), verbose=0)
  start = time.perf_counter()
  for i in range(n):
    model.predict(x(i), verbose=0)
  return (time.perf_counter() - start) / n * evals


def best_forward(jfn, images, specs, batch_sizes, reps=3):
  """(seconds per example, batch size) of the fastest plain batched forward."""
  best = (float('inf'), None)
  for b in batch_sizes:
    reps_i = np.resize(images, (b,) + images.shape[1:])
    reps_s = np.resize(specs, (b,) + specs.shape[1:])
    x, y = jax.device_put(reps_i), jax.device_put(reps_s)
    _block(jfn(x, y))
    t = min(common.time_call(lambda: jfn(x, y), _block) for _ in range(reps))
    best = min(best, (t / b, b))
  return best


def _linkage(num_leaves):
  """scipy linkage of the balanced binary tree over leaves in tree order."""
  rows, nodes, next_id = [], list(range(num_leaves)), num_leaves
  size = {i: 1 for i in range(num_leaves)}
  level = 1
  while len(nodes) > 1:
    merged = []
    for a, b in zip(nodes[::2], nodes[1::2]):
      size[next_id] = size[a] + size[b]
      rows.append([a, b, float(level), size[next_id]])
      merged.append(next_id)
      next_id += 1
    nodes, level = merged, level + 1
  return np.asarray(rows, dtype=np.float64)


_SHAP_FNS = {}


def prepare_shap(jfn, images, specs, depth, evals, target, num_examples):
  """((run, num_examples), rows): shap's PartitionExplainer, warmed up.

  `run()` explains the first `num_examples` examples; `rows` is [model rows
  evaluated, runs] since the warm-up.
  """
  import shap  # pylint: disable=g-import-not-at-top
  from explain.dncshap import leaf_id_map  # pylint: disable=g-import-not-at-top
  leaves = 2**depth
  players = 2 * leaves
  img_leaf = leaf_id_map(images.shape[1:3], depth)
  sp_leaf = leaf_id_map(specs.shape[1:3], depth)
  masker = shap.maskers.Partition(np.zeros((1, players)),
                                  clustering=_linkage(players))
  rows = [0]
  if depth not in _SHAP_FNS:  # One jitted function per depth (modes share).
    img_leaf, sp_leaf = jnp.asarray(img_leaf), jnp.asarray(sp_leaf)

    @jax.jit
    def masked_probs(m, image, spec, target):
      keep_i = jnp.take(m[:, :leaves] > 0.5, img_leaf, axis=1)
      keep_s = jnp.take(m[:, leaves:] > 0.5, sp_leaf, axis=1)
      return jfn(jnp.where(keep_i[..., None], image, 0.0),
                 jnp.where(keep_s[..., None], spec, 0.0))[:, target]
    _SHAP_FNS[depth] = masked_probs
  masked_probs = _SHAP_FNS[depth]

  def model_for(e):
    image, spec = jnp.asarray(images[e]), jnp.asarray(specs[e])
    t = jnp.int32(target[e])

    def f(m):
      # Exactly the rows shap asks for (no padding: padded rows would be
      # charged to shap). Each distinct size compiles once, in the warm-up.
      rows[0] += len(m)
      return np.asarray(masked_probs(m.astype(np.float32), image, spec, t))
    return f

  x = np.ones((1, players))
  fns = [model_for(e) for e in range(num_examples)]
  # Warm-up (compilation excluded from the timing): one explanation of every
  # timed example. shap's calls are deterministic for a given model and
  # input, so this compiles every batch size the timed run uses (and shap's
  # numba helpers).
  for f in fns:
    shap.PartitionExplainer(f, masker)(
        x, max_evals=evals, batch_size=DEFAULT_MAX_BATCH, silent=True)
  rows[:] = [0, 0]

  def run():
    rows[1] += 1
    for f in fns:
      shap.PartitionExplainer(f, masker)(
          x, max_evals=evals, batch_size=DEFAULT_MAX_BATCH, silent=True)
  return (run, num_examples), rows


def memory_child(config_arg, depth, mode, examples):
  """Runs in a fresh process: VmHWM before and after one explanation."""
  def vmhwm():
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) * 1024
    return -1
  from explain import dncshap_batch  # pylint: disable=g-import-not-at-top
  from explain.run import probability_fn  # pylint: disable=g-import-not-at-top
  config = common.load_config(*config_arg)
  model, variables, _ = load_model(config, '')
  fn = probability_fn(model, variables)
  images, specs = inputs(config, examples)
  _block(fn(images[:1], specs[:1]))
  before = vmhwm()
  _block(dncshap_batch(fn, images, specs, depth=depth, mode=mode,
                       max_batch=DEFAULT_MAX_BATCH))
  print(json.dumps(dict(before=before, after=vmhwm())))


def measure_memory(config_arg, depth, mode, examples):
  cmd = [sys.executable, os.path.abspath(__file__), '--_memory_child',
         json.dumps([list(config_arg), depth, mode, examples])]
  out = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f'memory child failed:\n{out.stderr[-2000:]}')
  return json.loads(out.stdout.strip().splitlines()[-1])


def factorized_rows(config, depths, modes, examples, rounds, max_batch,
                    limit_batch=8):
  """Factorized vs plain vs the forward limit; list of dicts.

  The limit's forward runs at batch `limit_batch` (at paper size a CPU's
  per-example time is flat from batch ~8 on; a smaller batch keeps each
  round short)."""
  from explain import dncshap_batch  # pylint: disable=g-import-not-at-top
  from explain.dncshap import num_encodings  # pylint: disable=g-import-not-at-top
  from explain.dncshap import num_evaluations  # pylint: disable=g-import-not-at-top
  from explain.run import probability_fn  # pylint: disable=g-import-not-at-top
  from parallelnet import models  # pylint: disable=g-import-not-at-top
  model = models.get_model(config)
  variables = models.init_variables(model, config, jax.random.key(0),
                                    load_pretrained=False)
  fact = probability_fn(model, variables)
  plain = probability_fn(model, variables, factorized=False)
  jfn = jax.jit(plain)
  images, specs = inputs(config, examples)
  x = jax.device_put(np.resize(images, (limit_batch,) + images.shape[1:]))
  y = jax.device_put(np.resize(specs, (limit_batch,) + specs.shape[1:]))
  fwd = lambda: jfn(x, y)
  t0 = time.perf_counter()
  _block(fwd())
  print(f'  forward compiled in {time.perf_counter() - t0:.0f} s', flush=True)
  out = []
  for depth in depths:
    for mode in modes:
      run = {name: functools.partial(
          dncshap_batch, fn, images, specs, depth=depth, mode=mode,
          max_batch=max_batch) for name, fn in (('factorized', fact),
                                                ('plain', plain))}
      t0 = time.perf_counter()
      a, b = _block(run['factorized']()), _block(run['plain']())
      diff = max(float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
                 for u, v in zip(a.node_values, b.node_values))
      print(f'  depth {depth} {mode}: compiled in '
            f'{time.perf_counter() - t0:.0f} s, max |diff| {diff:.1e}',
            flush=True)
      times = common.alternate(dict(run, fwd=fwd), rounds,
                               {k: _block for k in ('factorized', 'plain',
                                                    'fwd')})
      evals = num_evaluations(depth, mode)
      f_s = common.median(times['factorized']) / examples
      p_s = common.median(times['plain']) / examples
      limit_s = evals * common.median(times['fwd']) / limit_batch
      out.append(dict(depth=depth, mode=mode, evals=evals,
                      encodings=sum(num_encodings(depth, mode)),
                      factorized=1 / f_s, plain=1 / p_s, limit=1 / limit_s,
                      speedup=p_s / f_s, vs_limit=limit_s / f_s,
                      max_diff=diff))
      print(f'  depth {depth} {mode}: factorized {1 / f_s:.3f}/s, plain '
            f'{1 / p_s:.3f}/s, limit {1 / limit_s:.3f}/s: '
            f'{p_s / f_s:.2f}x', flush=True)
  return out


def devices_child(config_name, depth, mode, examples, rounds, max_batch):
  """In a process with 4 simulated devices: explanations/s on 1 vs 4."""
  from explain import dncshap_batch  # pylint: disable=g-import-not-at-top
  from explain.run import probability_fn  # pylint: disable=g-import-not-at-top
  from parallelnet import models  # pylint: disable=g-import-not-at-top
  config = common.load_config(config_name)
  model = models.get_model(config)
  variables = models.init_variables(model, config, jax.random.key(0),
                                    load_pretrained=False)
  fn = probability_fn(model, variables)
  images, specs = inputs(config, examples)
  runs = {f'{n}': functools.partial(
      dncshap_batch, fn, images, specs, depth=depth, mode=mode,
      max_batch=max_batch, devices=jax.devices()[:n]) for n in (1, 4)}
  outs = {k: _block(r()) for k, r in runs.items()}
  diff = max(float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
             for u, v in zip(outs['1'].node_values, outs['4'].node_values))
  times = common.alternate(runs, rounds, {k: _block for k in runs})
  print(json.dumps(dict(
      {k: examples / common.median(v) for k, v in times.items()},
      max_diff=diff)))


def measure_devices(config_name, depth, mode, examples, rounds, max_batch):
  env = dict(os.environ, XLA_FLAGS=(
      os.environ.get('XLA_FLAGS', '') +
      ' --xla_force_host_platform_device_count=4'))
  cmd = [sys.executable, os.path.abspath(__file__), '--_devices_child',
         json.dumps([config_name, depth, mode, examples, rounds, max_batch])]
  out = subprocess.run(cmd, capture_output=True, text=True, check=False,
                       env=env)
  if out.returncode:
    raise RuntimeError(f'devices child failed:\n{out.stderr[-2000:]}')
  return json.loads(out.stdout.strip().splitlines()[-1])


def devices_part(a, machine, row=True):
  """1 vs 4 simulated devices (a child process), printed; a row if asked."""
  dev = measure_devices(a.devices_config, 2, 'exact', a.devices_examples,
                        a.devices_rounds, a.max_batch)
  print(f'\n{a.devices_config} model, exact depth 2, '
        f'{a.devices_examples} examples, {a.devices_rounds} rounds: '
        f'{dev["1"]:.3f} explanations/s on 1 simulated CPU device, '
        f'{dev["4"]:.3f}/s on 4 ({dev["4"] / dev["1"]:.2f}x; the 4 share '
        f'this machine\'s cores); max |diff| {dev["max_diff"]:.1e}')
  if row and not a.no_row:
    common.append_row(
        'explain_throughput --factorized --devices_only',
        f'{a.devices_config} exact d2 x{a.devices_examples}: 1 device '
        f'{dev["1"]:.3f}/s, 4 simulated {dev["4"]:.3f}/s',
        f'4 / 1 devices {dev["4"] / dev["1"]:.2f}x (same cores)',
        machine_desc=machine, versions_desc=common.versions())
  return dev


def main_factorized(a):
  """--factorized: paper-size factorized vs plain, then 1 vs 4 devices."""
  machine = common.machine()
  config = common.load_config('parallelnet', a.paper_arg)
  depths = [int(d) for d in (a.depths or '2,3').split(',')]
  modes = a.modes.split(',')
  examples = a.examples or 1
  rounds = a.rounds
  print(f'paper size: {common.config_name(config)}, '
        f'{config.model.speech_backbone}/{config.model.image_backbone}, '
        f'{examples} example(s), max_batch {a.max_batch}, {rounds} rounds',
        flush=True)
  if a.devices_only:
    return None, devices_part(a, machine)
  rows = factorized_rows(config, depths, modes, examples, rounds,
                         a.max_batch)
  common.print_table(
      f'DnCShap explanations/s at paper size, factorized vs full forward '
      f'passes, {machine}',
      ['depth', 'mode', 'coalitions', 'encodings', 'factorized', 'plain',
       'limit', 'factorized/plain', 'factorized/limit', 'max |diff|'],
      [[r['depth'], r['mode'], r['evals'], r['encodings'],
        f'{r["factorized"]:.3f}', f'{r["plain"]:.3f}', f'{r["limit"]:.3f}',
        f'{r["speedup"]:.2f}x', f'{r["vs_limit"]:.2f}x',
        f'{r["max_diff"]:.1e}'] for r in rows])
  exact = [r['speedup'] for r in rows if r['mode'] == 'exact']
  print(f'\nspeed-up of the factorized path over plain full forward passes: '
        + ', '.join(f'd{r["depth"]} {r["mode"]} {r["speedup"]:.2f}x'
                    for r in rows)
        + (f'; exact worst {min(exact):.2f}x (target >= 1.8x)'
           if exact else ''))
  dev = devices_part(a, machine, row=False)
  if not a.no_row:
    numbers = '; '.join(
        f'd{r["depth"]} {r["mode"]}: factorized {r["factorized"]:.3f}/s, '
        f'plain {r["plain"]:.3f}/s, limit {r["limit"]:.3f}/s'
        for r in rows)
    numbers += (f'; {a.devices_config} exact d2 x{a.devices_examples}: '
                f'1 device {dev["1"]:.3f}/s, 4 simulated {dev["4"]:.3f}/s; '
                f'paper size {common.config_name(config)}, fresh init')
    common.append_row(
        'explain_throughput --factorized', numbers,
        'factorized/plain ' + ', '.join(
            f'd{r["depth"]} {r["mode"]} {r["speedup"]:.2f}x' for r in rows),
        machine_desc=machine, versions_desc=common.versions())
  return rows, dev


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--quick', action='store_true',
                 help='2 examples, fewer per-call samples and repeats.')
  p.add_argument('--workdir', default='',
                 help='a demo training workdir (its best checkpoint).')
  p.add_argument('--config', default='demo',
                 help='configs/<name>.py (default demo).')
  p.add_argument('--depths', default=None,
                 help='default 2,4,6 (2,4 with --quick; the memory check '
                      'always runs depth 6 exact).')
  p.add_argument('--modes', default='dnc,exact')
  p.add_argument('--examples', type=int, default=None,
                 help='examples per dncshap_batch call (default 4, quick 2).')
  p.add_argument('--max_batch', type=int, default=DEFAULT_MAX_BATCH,
                 help='max_batch of ours (the memory check always uses the '
                      'default).')
  p.add_argument('--no_shap', action='store_true')
  p.add_argument('--no_row', action='store_true')
  p.add_argument('--_memory_child', default=None, help=argparse.SUPPRESS)
  p.add_argument('--factorized', action='store_true',
                 help='paper-size factorized vs plain vs limit, and 1 vs 4 '
                      'simulated devices (see the module docstring).')
  p.add_argument('--paper_arg', default=None,
                 help='--factorized: a configs/parallelnet.py variant instead '
                      'of the paper size (e.g. runlocal, to try the script).')
  p.add_argument('--rounds', type=int, default=2,
                 help='--factorized: alternating rounds (medians).')
  p.add_argument('--devices_config', default='demo',
                 help='--factorized: config of the 1 vs 4 devices part.')
  p.add_argument('--devices_examples', type=int, default=4,
                 help='--factorized: examples of the 1 vs 4 devices part.')
  p.add_argument('--devices_rounds', type=int, default=10,
                 help='--factorized: rounds of the 1 vs 4 devices part.')
  p.add_argument('--devices_only', action='store_true',
                 help='--factorized: only the 1 vs 4 devices part.')
  p.add_argument('--_devices_child', default=None, help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  if a._devices_child:  # pylint: disable=protected-access
    devices_child(*json.loads(a._devices_child))  # pylint: disable=protected-access
    return None
  if a.factorized:
    if a.max_batch == DEFAULT_MAX_BATCH:
      a.max_batch = 32  # Paper size on a CPU: one forward of 32 is plenty.
    return main_factorized(a)
  if a._memory_child:  # pylint: disable=protected-access
    (name, arg), depth, mode, examples = json.loads(a._memory_child)  # pylint: disable=protected-access
    memory_child((name, arg), depth, mode, examples)
    return None

  from explain.dncshap import num_evaluations  # pylint: disable=g-import-not-at-top
  from explain.run import probability_fn  # pylint: disable=g-import-not-at-top
  examples = a.examples or (2 if a.quick else 4)
  shap_examples = 1 if a.quick else examples
  max_calls = 50 if a.quick else 400
  keras_calls = 5 if a.quick else 50
  reps = 3 if a.quick else 5  # Alternating rounds of ours and the forward.
  machine = common.machine()
  config = common.load_config(a.config)
  model, variables, source = load_model(config, a.workdir)
  fn = probability_fn(model, variables)
  jfn = jax.jit(fn)
  images, specs = inputs(config, examples)
  target = np.asarray(jnp.argmax(jfn(images, specs), -1))
  fwd_s, fwd_b = best_forward(jfn, images, specs,
                              (1, 8, 16, 32, 64, 128, 256, 512))
  print(f'model: {config.model.name} {common.config_name(config)}, {source}; '
        f'plain forward: {fwd_s * 1e6:.1f} us/example at batch {fwd_b}')

  rows, ratios = [], []
  depths = a.depths or ('2,4' if a.quick else '2,4,6')
  for depth in [int(d) for d in depths.split(',')]:
    for mode in a.modes.split(','):
      evals = num_evaluations(depth, mode)
      shap_run, shap_counter = None, None
      if not a.no_shap:
        shap_run, shap_counter = prepare_shap(jfn, images, specs, depth,
                                              evals, target, shap_examples)
      ours, fwd_round, shap_s = time_ours(fn, jfn, images, specs, depth, mode,
                                          reps, a.max_batch, fwd_b, shap_run)
      limit = evals * fwd_round
      shap_rows = float('nan')
      if shap_counter is not None:  # Rows per explanation over the rounds.
        shap_rows = shap_counter[0] / (shap_counter[1] * shap_examples)
      per_call, sampled = time_per_call(jfn, images, specs, depth, evals,
                                        max_calls)
      keras_call = time_keras_per_call(config, images, specs, depth, evals,
                                       keras_calls)
      r = dict(depth=depth, mode=mode, evals=evals, ours=1 / ours,
               keras_call=1 / keras_call, per_call=1 / per_call,
               shap=1 / shap_s, limit=1 / limit, vs_limit=ours / limit,
               vs_keras_call=keras_call / ours, vs_per_call=per_call / ours,
               vs_shap=shap_s / ours)
      ratios.append(r)
      star = '' if sampled == evals else '*'
      rows.append([depth, mode, evals, f'{1 / ours:.2f}',
                   f'{1 / keras_call:.4f}*', f'{1 / per_call:.3f}' + star,
                   f'{1 / shap_s:.3f} ({shap_rows:.0f} ev)',
                   f'{1 / limit:.2f}', f'{ours / limit:.2f}',
                   f'{keras_call / ours:.0f}', f'{per_call / ours:.1f}',
                   f'{shap_s / ours:.1f}'])
      print(f'  depth {depth} {mode}: done', flush=True)

  mem = measure_memory(('demo' if a.config == 'demo' else a.config, None), 6,
                       'exact', examples)
  common.print_table(
      f'DnCShap explanations/s ({examples} examples per call, max_batch '
      f'{a.max_batch}), {machine}',
      ['depth', 'mode', 'evals', 'ours', '(i) Keras predict/mask',
       '(i\') JAX call/mask', '(ii) shap', '(iii) limit', 'ours/limit time',
       'x (i)', 'x (i\')', 'x (ii)'], rows)
  print('* per-call columns: a sample of calls timed, multiplied out to all '
        'evals (the cost of a call does not depend on its mask).')
  gib = 1024**3
  print(f'\npeak memory (VmHWM), fresh process, depth 6 exact, {examples} '
        f'examples, max_batch {DEFAULT_MAX_BATCH}: {mem["after"] / gib:.2f} '
        f'GiB (after model set-up, before explaining: '
        f'{mem["before"] / gib:.2f} GiB); target < 2 GB')
  worst_limit = max(r['vs_limit'] for r in ratios)
  worst_call = min(r['vs_per_call'] for r in ratios)
  worst_keras = min(r['vs_keras_call'] for r in ratios)
  worst_shap = min(r['vs_shap'] for r in ratios)
  print(f'\nworst over depths and modes: ours/limit time {worst_limit:.2f} '
        f'(target <= 1.25); speed-up over (i) Keras predict per mask '
        f'{worst_keras:.0f}x (target >= 20), over (i\') a jitted JAX call per '
        f'mask {worst_call:.1f}x; over (ii) shap {worst_shap:.1f}x '
        f'(target >= 5)')
  if not a.no_row:
    numbers = '; '.join(
        f'd{r["depth"]} {r["mode"]} ({r["evals"]} ev): ours {r["ours"]:.2f}/s,'
        f' per-call {r["per_call"]:.3f}/s, shap {r["shap"]:.3f}/s, limit '
        f'{r["limit"]:.2f}/s' for r in ratios)
    numbers += (f'; peak RSS d6 exact {mem["after"] / gib:.2f} GiB; model '
                f'{common.config_name(config)}, {source}')
    common.append_row(
        'explain_throughput', numbers,
        f'ours/limit <= {worst_limit:.2f}, vs Keras predict/mask >= '
        f'{worst_keras:.0f}x, vs JAX call/mask >= {worst_call:.1f}x, '
        f'vs shap >= {worst_shap:.1f}x',
        machine_desc=machine, versions_desc=common.versions('shap'))
  return ratios


if __name__ == '__main__':
  main()
