"""Explanations on several devices / processes; used by test_multi_process.py.

A job of tests/workers.py (arguments: WORKDIR [--local_devices N]
[--compare OUT.npz]), on one process with several devices or on each
process of a distributed run.

Runs `explain.run.explain_dataset` into WORKDIR with a stand-in model (a
small non-additive function split by modality, so the factorized path and
the random dnc contexts both matter) and stand-in test examples. With
--compare it also saves `dncshap_batch` results on the first device alone
and on all devices, for 1, 3 and 5 examples (on 4 devices: each example's
coalitions split, then the examples), for the factorized and the plain
function.
--local_devices N: both see only the first N devices of this process, as a
process with N devices would (explain spreads over `jax.local_devices()`);
one process with 8 devices then also serves as the 1- and 4-device runs.
"""

import argparse
import contextlib

import numpy as np

IMG, FRAMES, MELS = 32, 32, 32  # runlocal sizes.
NUM_EXAMPLES = 5


class FakeModel:
  """A non-additive two-modality 'model' with ParallelNet's split methods."""

  def encode_image(self, v, images):
    return {'i': images[:, :16, :16].mean((1, 2)) @ v['wi']}  # (B, 4)

  def encode_speech(self, v, spectrograms):
    return {'s': spectrograms[:, :12].mean((1, 2)) @ v['ws']}  # (B, 4)

  def fuse(self, v, fi, fs):
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    return 3 * jnp.tanh(fi['i'] * fs['s'] + fi['i']) + fs['s'], {}

  def apply(self, variables, *args, method=None, train=False):
    assert not train
    v = variables['params']
    if method is None:
      return self.fuse(v, self.encode_image(v, args[0]),
                       self.encode_speech(v, args[1]))
    return getattr(self, method)(v, *args)


def variables():
  rng = np.random.default_rng(0)
  return {'params': {'wi': rng.normal(size=(3, 4)).astype(np.float32),
                     'ws': rng.normal(size=(1, 4)).astype(np.float32)}}


def config():
  from configs import parallelnet as parallelnet_config  # pylint: disable=g-import-not-at-top
  c = parallelnet_config.get_config('runlocal')
  c.explain.num_examples = NUM_EXAMPLES
  c.explain.batch_size = 2  # Batches {0, 1}, {2, 3}, {4}.
  c.explain.depth = 1
  c.explain.mode = 'dnc'
  c.explain.context = 'random'
  c.explain.baseline = 'zeros'  # Stand-in data: no training split to read.
  return c


def examples(c):
  rng = np.random.default_rng(0)
  n = NUM_EXAMPLES
  num_samples = (FRAMES - 1) * c.input.hop_length
  return dict(
      id=np.array([f'ex{i}' for i in range(n)]),
      image=rng.uniform(0, 1, (n, IMG, IMG, 3)).astype(np.float32),
      image_raw=rng.integers(0, 255, (n, IMG, IMG, 3), dtype=np.uint8),
      spectrogram=rng.uniform(0, 1, (n, FRAMES, MELS, 1)).astype(np.float32),
      label=np.arange(n, dtype=np.int32) % 4,
      waveform=rng.uniform(-0.5, 0.5, (n, num_samples)).astype(np.float32))


def install_fakes(monkeypatch=None):
  """Replaces the checkpoint and the dataset by the stand-ins (through
  pytest's `monkeypatch` when given, so that they are undone after the
  test; a worker process sets them for good)."""
  import input_pipeline  # pylint: disable=g-import-not-at-top
  from parallelnet import checkpointing  # pylint: disable=g-import-not-at-top
  ex = examples(config())
  restore = lambda cfg, workdir, which='best': (FakeModel(), variables(), 7)
  load = lambda cfg, split, n: {k: v[:n] for k, v in ex.items()}
  if monkeypatch is None:
    checkpointing.restore_for_inference = restore
    # Set in the module's dict: getattr would import the real pipeline.
    vars(input_pipeline)['load_examples'] = load
  else:
    monkeypatch.setattr(checkpointing, 'restore_for_inference', restore)
    monkeypatch.setitem(vars(input_pipeline), 'load_examples', load)


def compare(out):
  """dncshap_batch on device 0 alone vs on all devices, saved to `out`."""
  import jax  # pylint: disable=g-import-not-at-top
  from explain import dncshap_batch  # pylint: disable=g-import-not-at-top
  from explain import run  # pylint: disable=g-import-not-at-top
  ex = examples(config())
  fact = run.probability_fn(FakeModel(), variables())
  plain = run.probability_fn(FakeModel(), variables(), factorized=False)
  saved = {}
  for n in (1, 3, 5):
    for name, fn in (('fact', fact), ('plain', plain)):
      for mode, context in (('exact', 'absent'), ('dnc', 'random')):
        kw = dict(depth=2, mode=mode, context=context,
                  key=jax.random.key(1), max_batch=6)
        for where, devices in (('one', jax.devices()[:1]), ('all', None)):
          e = dncshap_batch(fn, ex['image'][:n], ex['spectrogram'][:n],
                            devices=devices, **kw)
          for i, v in enumerate(e.node_values):
            saved[f'{where}/{name}/{mode}/{n}/{i}'] = np.asarray(v)
  np.savez(out, **saved)


@contextlib.contextmanager
def only_local_devices(n):
  """jax.local_devices() is the first n of them (all of them for None)."""
  import jax  # pylint: disable=g-import-not-at-top
  every = jax.local_devices
  if n is not None:
    assert len(every()) >= n, (n, every())
    jax.local_devices = lambda *a, **kw: every(*a, **kw)[:n]
  try:
    yield
  finally:
    jax.local_devices = every


def main(argv):
  p = argparse.ArgumentParser()
  p.add_argument('workdir')
  p.add_argument('--local_devices', type=int, default=None)
  p.add_argument('--compare', default=None)
  a = p.parse_args(argv)
  from explain import run  # pylint: disable=g-import-not-at-top
  with only_local_devices(a.local_devices):
    if a.compare:
      compare(a.compare)
    install_fakes()
    run.explain_dataset(config(), a.workdir)
