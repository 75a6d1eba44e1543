"""Runs test code in fresh Python processes: a number of simulated CPU
devices (fixed before JAX starts), and optionally several processes joined
by jax.distributed on localhost.

Test side:
  procs = workers.start_group('pod_worker', lambda i: [...], tmp_path, n=2)
  logs = workers.finish(procs)
Several jobs in one process, one after another (each process pays a few
CPU-seconds to start Python and JAX, join a jax.distributed run and exit):
  workers.start(['multi_worker', 'explain_worker'], [[...], [...]], log)
Process side (what `start` runs):
  python tests/workers.py --devices=N [--process_id=I --num_processes=P
      --coordinator=HOST:PORT] -- JOB ARGS... [-- JOB ARGS...]
imports tests/JOB.py after setting up JAX and calls its `main(ARGS)`, for
each JOB in turn.
"""

import argparse
import os
import socket
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
  """A free localhost port for a multi-process run's coordinator."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


class Process:
  """A started worker: the subprocess.Popen `popen` and its `log` file."""

  def __init__(self, name, popen, log):
    self.name, self.popen, self.log = name, popen, log

  def output(self):
    with open(self.log, errors='replace') as f:
      return f.read()


def start(job, args, log, *, devices=1, distributed=None, env=None):
  """Starts tests/JOB.py's main(args) with `devices` simulated devices.

  job may also be a list of jobs, args then a list of their argument lists:
  their mains run one after another in the one process.
  log: file for its stdout and stderr (a file, not a pipe: a full pipe
  blocks the worker). distributed: (process_id, num_processes, coordinator).
  env: extra environment variables.
  """
  jobs, arg_lists = ([job], [args]) if isinstance(job, str) else (job, args)
  assert len(jobs) == len(arg_lists), (jobs, arg_lists)
  flags = [f'--devices={devices}']
  if distributed:
    i, n, coordinator = distributed
    flags += [f'--process_id={i}', f'--num_processes={n}',
              f'--coordinator={coordinator}']
  full_env = dict(os.environ, XLA_FLAGS='', TF_CPP_MIN_LOG_LEVEL='2',
                  **(env or {}))
  with open(log, 'w') as f:
    popen = subprocess.Popen(
        [sys.executable, os.path.join(HERE, 'workers.py')] + flags +
        [a for j, job_args in zip(jobs, arg_lists)
         for a in ['--', j] + [str(x) for x in job_args]],
        stdout=f, stderr=subprocess.STDOUT, env=full_env)
  return Process(f"{'+'.join(jobs)} {os.path.basename(str(log))}", popen,
                 str(log))


def start_group(job, args_of, tmp_path, *, n=2, devices=1, env=None,
                name=None):
  """Starts n processes of one jax.distributed run on localhost.

  args_of(i): process i's arguments (a list of argument lists when job is a
  list of jobs, as for `start`). Logs go to tmp_path/<name><i>.log.
  """
  coordinator = f'localhost:{free_port()}'
  name = name or (job if isinstance(job, str) else '+'.join(job))
  return [start(job, args_of(i), os.path.join(tmp_path, f'{name}{i}.log'),
                devices=devices, distributed=(i, n, coordinator), env=env)
          for i in range(n)]


def finish(procs, timeout=300):
  """Waits for every process; fails naming the first that did not exit 0
  (with the end of its log), killing the others. Returns their outputs."""
  try:
    for p in procs:
      try:
        rc = p.popen.wait(timeout=timeout)
      except subprocess.TimeoutExpired:
        rc = 'timeout'
      assert rc == 0, f'{p.name} exited {rc}:\n{p.output()[-4000:]}'
  finally:
    for p in procs:
      if p.popen.poll() is None:
        p.popen.kill()
        p.popen.wait()
  return [p.output() for p in procs]


def _set_up(a):
  """JAX for one worker process: devices, import paths, distributed init."""
  # Must precede the jax import: the number of simulated CPU devices, and
  # XLA:CPU's LLVM IR emitters instead of its MLIR fusion emitters: compiling
  # is most of a worker's time, and the workers' programs then compile in
  # about half the CPU time (multi_worker's steps on 3 meshes 22 -> 15 CPU-s,
  # explain_worker's 4-device run 31 -> 17), to the same results within the
  # tests' tolerances.
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_force_host_platform_device_count='
                             f'{a.devices} --xla_cpu_use_fusion_emitters=false')
  sys.path[:0] = [HERE, os.path.dirname(HERE)]
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_disable_most_optimizations', True)
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.INFO)
  from parallelnet import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  mesh_lib.maybe_initialize_distributed(a.coordinator, a.num_processes,
                                        a.process_id)


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--devices', type=int, default=1)
  p.add_argument('--process_id', type=int, default=None)
  p.add_argument('--num_processes', type=int, default=None)
  p.add_argument('--coordinator', default=None)
  # FLAGS -- JOB ARGS... [-- JOB ARGS...]: no job argument is a bare '--'.
  parts, part = [], []
  for arg in sys.argv[1:] + ['--']:
    if arg == '--':
      parts.append(part)
      part = []
    else:
      part.append(arg)
  a = p.parse_args(parts[0])
  _set_up(a)
  import importlib  # pylint: disable=g-import-not-at-top
  for job, *args in parts[1:]:
    importlib.import_module(job).main(args)
  # The jobs are done and have closed their files: skip the interpreter's
  # teardown, 1-2 CPU-s once TensorFlow and orbax are loaded. First
  # leave jax.distributed, all processes together, as exiting would.
  sys.stdout.flush()
  sys.stderr.flush()
  import jax  # pylint: disable=g-import-not-at-top
  jax.distributed.shutdown()
  os._exit(0)


if __name__ == '__main__':
  main()
