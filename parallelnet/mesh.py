"""Device mesh, shardings and multi-process start-up for data parallelism.

One mesh axis, 'data', over every device of every process. Parameters and
optimizer state are replicated (`replicated(mesh)`), batches are split on
their leading axis (`data_sharding(mesh)`). Under `jax.jit` the model sees the
global batch, so BatchNorm statistics are global-batch statistics and the
gradient mean is the global mean: no pmap, no explicit all-reduce.
"""

import json
import os
import secrets

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from parallelnet.core import errors

DATA_AXIS = 'data'

# Environment variables read by `maybe_initialize_distributed` when its
# arguments are None.
ENV_COORDINATOR = 'JAX_COORDINATOR_ADDRESS'  # host:port of process 0.
ENV_NUM_PROCESSES = 'JAX_NUM_PROCESSES'
ENV_PROCESS_ID = 'JAX_PROCESS_ID'


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D ('data',) mesh over `devices` (default: all devices, all hosts).

  Auto axis type: GSPMD propagates the batch sharding through the model, so
  the model code needs no sharding annotations.
  """
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh, what: str = 'train.batch_size'):
  """Raises if the global batch does not split evenly over the data axis."""
  n = mesh.shape[DATA_AXIS]
  if batch_size % n:
    raise errors.UserValueError(
        f'config.{what}={batch_size} is not divisible by the {n} devices of '
        f'the data mesh; use a multiple of {n}.')


def _managed_cluster() -> bool:
  """True inside a multi-host job that jax.distributed can auto-detect."""
  env = os.environ
  return (int(env.get('SLURM_NTASKS', '1')) > 1
          or int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1
          or len(env.get('TPU_WORKER_HOSTNAMES', '').split(',')) > 1)


def maybe_initialize_distributed(coordinator_address: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
  """Calls `jax.distributed.initialize` when a multi-process run is set up.

  Arguments that are None are read from $JAX_COORDINATOR_ADDRESS,
  $JAX_NUM_PROCESSES and $JAX_PROCESS_ID. Without a coordinator address, a
  SLURM / Open MPI / multi-host TPU job (SLURM_NTASKS, OMPI_COMM_WORLD_SIZE,
  TPU_WORKER_HOSTNAMES) is auto-detected by JAX itself. Otherwise this is a
  single-process run and nothing happens. On CPU, cross-process collectives
  use gloo. Must run before anything touches a JAX device. Returns whether
  JAX was initialised for several processes.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get(ENV_COORDINATOR)
  if num_processes is None and env.get(ENV_NUM_PROCESSES):
    num_processes = int(env[ENV_NUM_PROCESSES])
  if process_id is None and env.get(ENV_PROCESS_ID):
    process_id = int(env[ENV_PROCESS_ID])

  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError(
          f'Coordinator address {coordinator_address!r} given but the number '
          f'of processes ({num_processes}) or this process id ({process_id}) '
          f'is missing: pass --num_processes/--process_id or set '
          f'{ENV_NUM_PROCESSES}/{ENV_PROCESS_ID}.')
    if num_processes <= 1:
      return False
    if not 0 <= process_id < num_processes:
      raise ValueError(f'process_id={process_id} is outside '
                       f'[0, num_processes={num_processes}).')
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id)
  elif _managed_cluster():
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize()
  else:
    return False
  logging.info('JAX distributed: process %d of %d, %d local / %d global '
               'devices.', jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True


SHARED_TOKEN_PREFIX = '.parallelnet_shared_check_'


def allgather_json(obj):
  """[obj of process 0, obj of process 1, ...] (JSON-able objects), on every
  process; a collective, so it also waits until every process got here."""
  if jax.process_count() == 1:
    return [obj]
  data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  sizes = np.ravel(multihost_utils.process_allgather(np.int32(len(data))))
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:len(data)] = data
  return [json.loads(bytes(row[:int(n)]).decode())
          for row, n in zip(multihost_utils.process_allgather(padded), sizes)]


def check_shared_storage(folders: dict[str, str]):
  """In a multi-process run, checks that every process sees the same folders.

  `folders` maps a name for messages (e.g. 'workdir') to a path. Process 0
  writes a token file (random name and content) into each folder; after a
  barrier every process reads it back. If any process does not see it, every
  process raises a UserError naming the folder: data_dir and workdir must be
  shared storage (a gs:// bucket URL, NFS), or process 0's dataset and
  checkpoints would be invisible to the others. The token files are removed
  afterwards.
  No-op with one process. Every process must call it, in the same order.
  """
  if jax.process_count() == 1:
    return
  # Process 0's random token, sent to all: 16 bytes, as 4 uint32.
  token = np.frombuffer(secrets.token_bytes(16), np.uint32)
  token = np.asarray(multihost_utils.broadcast_one_to_all(token), np.uint32)
  text = token.tobytes().hex()
  paths = {name: epath.Path(os.path.expanduser(folder))
             / f'{SHARED_TOKEN_PREFIX}{text[:16]}'
           for name, folder in folders.items()}
  if jax.process_index() == 0:
    for path in paths.values():
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text(text)
  multihost_utils.sync_global_devices('parallelnet shared-storage tokens')
  seen = []
  for path in paths.values():
    try:
      seen.append(path.read_text() == text)
    except OSError:  # Absent here: another machine's local disk.
      seen.append(False)
  # Every process learns every verdict, so all fail together (a lone
  # failing process would leave the others waiting at the next collective).
  seen = np.asarray(multihost_utils.process_allgather(np.array(seen, np.int32)))
  if jax.process_index() == 0:
    for path in paths.values():
      path.unlink(missing_ok=True)
  bad = [(name, [p for p in range(seen.shape[0]) if not seen[p, i]])
         for i, name in enumerate(paths) if not seen[:, i].all()]
  if bad:
    raise errors.UserError('; '.join(
        f'{name} {folders[name]!r} is not the same folder for all processes: '
        f'process(es) {", ".join(map(str, procs))} do not see a file that '
        'process 0 wrote there' for name, procs in bad) +
        '. In a multi-process (multi-host) run it must be shared storage '
        'that every process reads and writes at the same path: a GCS bucket '
        'given as its URL (gs://BUCKET/path), or an NFS mount.')
