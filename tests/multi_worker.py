"""Runs a few train steps of the tiny model on fixed batches; saves the result.

A job of tests/workers.py (arguments: OUT.npz [--mesh_sizes=8,4]), on one
process with several devices or on each process of a distributed run.

Each mesh size n runs the same steps on a mesh over the first n devices and
saves its final parameters and per-step losses under the prefix `n{n}/`. Used
by test_multi_process.py: the result must not depend on how the global batch
is split over devices or processes.
"""

import argparse


def main(argv):
  p = argparse.ArgumentParser()
  p.add_argument('out')
  p.add_argument('--mesh_sizes', default='')
  p.add_argument('--steps', type=int, default=3)
  a = p.parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  out = {}
  sizes = ([int(s) for s in a.mesh_sizes.split(',')] if a.mesh_sizes
           else [jax.device_count()])
  for n in sizes:
    params, losses = run_steps(jax.devices()[:n], a.steps)
    out[f'n{n}/losses'] = losses
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
      out[f'n{n}/' + jax.tree_util.keystr(path)] = leaf
  np.savez(a.out, **out)


def run_steps(devices, num_steps):
  """Final (params, batch_stats) as numpy and the losses of `num_steps`."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import train_helpers  # pylint: disable=g-import-not-at-top
  from parallelnet import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from parallelnet import models  # pylint: disable=g-import-not-at-top
  from parallelnet import train  # pylint: disable=g-import-not-at-top
  config = train_helpers.tiny_config()
  # One modality and the tiny N2 trunk (a strided conv and a BatchNorm)
  # instead of VGG-16: the subject is how the batch is split, not the trunk.
  # BatchNorm (in N1 and the trunk), convs, heads and the optimizer are all
  # still there, at a fraction of the compile time.
  train_helpers.register_tiny_trunk()
  config.model.modalities = 'speech'
  config.model.speech_backbone = train_helpers.TINY_TRUNK
  data = train_helpers.ArrayData(config)
  mesh = mesh_lib.make_mesh(devices)
  model = models.get_model(config)
  steps = train.Steps(config, mesh)
  # Plain SGD, not the config's Adam: Adam divides each gradient entry by its
  # own magnitude, so rounding-level differences in near-zero gradients (the
  # summation order changes with the device count) become +-learning-rate
  # differences in the parameters. With SGD a parameter difference measures
  # the gradient difference, which is what this comparison is about.
  tx = optax.sgd(0.05)

  state = train.init_train_state(config, model, mesh)
  state = state.replace(tx=tx, opt_state=tx.init(state.params))
  losses = []
  batches = data.train_batches(config, mesh, epoch=0)
  for step in range(num_steps):
    state, out = steps.train(state, next(batches),
                             steps.step_key(state.rng, step))
    losses.append(float(out['loss']))
  # Fully replicated: every process can read the whole value.
  tree = {'params': state.params, 'batch_stats': state.batch_stats}
  return jax.tree.map(np.asarray, tree), np.array(losses)
