"""One process of a 2-process run on localhost: shared-storage check, the
build barrier in both arrival orders, process-0-only writes, a resume past
a damaged checkpoint in a shared workdir, and a training in a bucket.

A job of tests/workers.py (arguments: ROOT OUT.json BUCKET_WORKDIR) on each
of 2 processes with one device. ROOT is the folder both processes share,
BUCKET_WORKDIR a gs:// workdir (a GCS emulator's: its variables in the
environment). Used by test_pod.py, which reads OUT.json (timings, error
messages, metrics) of both.
"""

import argparse
import json
import os
import time


def build_config(data_dir, seed):
  """The smallest synthetic dataset: 8 examples, 2 folds, 4 split cells."""
  import resume_worker  # pylint: disable=g-import-not-at-top
  c = resume_worker.config(data_dir)
  c.dataset.synthetic_size = 8
  c.dataset.synthetic_seed = seed
  c.dataset.num_folds = 2
  c.dataset.val_fraction = 0.0
  return c


def main(argv):
  p = argparse.ArgumentParser()
  p.add_argument('root')
  p.add_argument('out')
  p.add_argument('bucket_workdir')
  a = p.parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top
  from parallelnet import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from parallelnet.core import errors  # pylint: disable=g-import-not-at-top
  assert jax.process_count() == 2
  me, out = jax.process_index(), {}
  shared = os.path.join(a.root, 'shared')

  # 1. Shared-storage check: data_dir differs per process, workdir is shared.
  try:
    mesh_lib.check_shared_storage({
        'workdir': os.path.join(shared, 'work'),
        'data_dir': os.path.join(a.root, f'local{me}', 'tfds')})
  except errors.UserError as e:
    out['separate_error'] = str(e)
  # ... and both shared: passes.
  data_dir = os.path.join(shared, 'tfds')
  mesh_lib.check_shared_storage({'workdir': os.path.join(shared, 'work'),
                                 'data_dir': data_dir})
  # ... and a bucket is shared by every process.
  mesh_lib.check_shared_storage({'workdir': a.bucket_workdir,
                                 'data_dir': data_dir})

  # 2. Build barrier, process 0 done building before process 1 arrives (the
  # order in which process 1 used to skip the barrier, leaving 0 waiting).
  import input_pipeline  # pylint: disable=g-import-not-at-top
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  from input_pipeline import builders  # pylint: disable=g-import-not-at-top

  def unbuilt_builder(c):
    s = builders.settings_from_config(c)
    cls = builders.BUILDERS[c.dataset.name]
    return cls(config=builders.make_builder_config(s, cls.CLASSES),
               data_dir=data_dir)

  c0 = build_config(data_dir, seed=0)
  if me == 1:
    b, deadline = unbuilt_builder(c0), time.time() + 120
    while not b.is_prepared():
      assert time.time() < deadline, 'process 0 never built the dataset'
      time.sleep(0.05)
  out['late_arrive'] = time.time()
  b = input_pipeline.get_builder(c0)
  out['late_return'] = time.time()
  out['late_examples'] = b.info.splits['train_f0t+train_f1t'].num_examples

  # 3. Process 1 arrives first, on a dataset that nobody has built yet.
  c1 = build_config(data_dir, seed=1)
  if me == 0:
    time.sleep(2.0)
  out['early_saw_built'] = unbuilt_builder(c1).is_prepared()
  out['early_arrive'] = time.time()
  b = input_pipeline.get_builder(c1)
  out['early_return'] = time.time()
  out['early_examples'] = b.info.splits['train_f0t+train_f1t'].num_examples
  del pipeline

  # 4. Metrics, figures and config files: process 0 only (per-process
  # folders here, so that a write by process 1 would show).
  import numpy as np  # pylint: disable=g-import-not-at-top
  from parallelnet import checkpointing  # pylint: disable=g-import-not-at-top
  from parallelnet import train  # pylint: disable=g-import-not-at-top
  mine = os.path.join(a.root, f'local{me}', 'work')
  classes = len(c0.dataset.classes)
  train._write_eval_outputs(c0, mine, np.eye(classes, dtype=int), 7, 'test')  # pylint: disable=protected-access
  checkpointing.write_config(c0, mine)
  out['written'] = sorted(os.listdir(mine)) if os.path.isdir(mine) else []

  # 5. A damaged newest checkpoint in the shared workdir: both processes
  # fall back to the previous step together.
  import glob  # pylint: disable=g-import-not-at-top
  from input_pipeline import pipeline as pipeline_lib  # pylint: disable=g-import-not-at-top
  mesh = mesh_lib.make_mesh()
  repl = mesh_lib.replicated(mesh)
  work = os.path.join(shared, 'work')
  ckpts = checkpointing.Checkpoints(work, c0, async_save=False)
  for step in (1, 2):
    w = jax.make_array_from_process_local_data(
        repl, np.full((64, 64), step, np.float32))
    ckpts.save('latest', step, {'w': w}, {'epoch': step})
  ckpts.close()
  pipeline_lib.wait_for_all_processes('saved')
  if me == 0:
    for path in glob.glob(os.path.join(work, 'checkpoints', 'latest', '2',
                                       'state', 'd', '*')):
      with open(path, 'r+b') as f:
        f.seek(100)
        f.write(b'\x5a' * 200)
  pipeline_lib.wait_for_all_processes('damaged')
  ckpts = checkpointing.Checkpoints(work, c0, async_save=False)
  abstract = {'w': jax.ShapeDtypeStruct((64, 64), np.float32, sharding=repl)}
  tree, meta = ckpts.restore('latest', abstract, fallback=True)
  out['restored_epoch'] = meta['epoch']
  out['restored_w'] = float(np.asarray(tree['w']).mean())
  out['latest_after'] = sorted(ckpts.managers['latest'].all_steps())
  ckpts.close()

  # 6. Both processes train on one workdir in a bucket (the data as in 2;
  # the tiny trunk: compiling VGG would take most of this test's time).
  import train_helpers  # pylint: disable=g-import-not-at-top
  from configs import parallelnet as config_lib  # pylint: disable=g-import-not-at-top
  train_helpers.register_tiny_trunk()
  c = build_config(data_dir, seed=0)
  config_lib.apply_variant(c, f'n2={train_helpers.TINY_TRUNK}')
  c.train.batch_size = c.train.eval_batch_size = 2
  c.train.num_epochs = 1
  c.train.max_steps_per_epoch = 2
  c.train.checkpoint_every_steps = 1  # Steps 1 and 2 in `latest`.
  c.train.log_every_steps = 50
  out['bucket_metrics'] = train.train_and_evaluate(c, a.bucket_workdir)
  with open(a.out, 'w') as f:
    json.dump(out, f)
