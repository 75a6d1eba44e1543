"""Runs test code in fresh Python processes: a number of simulated CPU
devices (fixed before JAX starts), and optionally several processes joined
by jax.distributed on localhost.

Test side:
  procs = workers.start_group('pod_worker', lambda i: [...], tmp_path, n=2)
  logs = workers.finish(procs)
Process side (what `start` runs):
  python tests/workers.py JOB --devices=N [--process_id=I --num_processes=P
      --coordinator=HOST:PORT] -- ARGS...
imports tests/JOB.py after setting up JAX and calls its `main(ARGS)`.
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

  log: file for its stdout and stderr (a file, not a pipe: a full pipe
  blocks the worker). distributed: (process_id, num_processes, coordinator).
  env: extra environment variables.
  """
  flags = [f'--devices={devices}']
  if distributed:
    i, n, coordinator = distributed
    flags += [f'--process_id={i}', f'--num_processes={n}',
              f'--coordinator={coordinator}']
  full_env = dict(os.environ, XLA_FLAGS='', TF_CPP_MIN_LOG_LEVEL='2',
                  **(env or {}))
  with open(log, 'w') as f:
    popen = subprocess.Popen(
        [sys.executable, os.path.join(HERE, 'workers.py'), job] + flags +
        ['--'] + [str(a) for a in args],
        stdout=f, stderr=subprocess.STDOUT, env=full_env)
  return Process(f'{job} {os.path.basename(str(log))}', popen, str(log))


def start_group(job, args_of, tmp_path, *, n=2, devices=1, env=None,
                name=None):
  """Starts n processes of one jax.distributed run on localhost.

  args_of(i): process i's arguments. Logs go to tmp_path/<name><i>.log.
  """
  coordinator = f'localhost:{free_port()}'
  name = name or job
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
  # Must precede the jax import: the number of simulated CPU devices.
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_force_host_platform_device_count='
                             f'{a.devices}')
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
  p.add_argument('job')
  p.add_argument('--devices', type=int, default=1)
  p.add_argument('--process_id', type=int, default=None)
  p.add_argument('--num_processes', type=int, default=None)
  p.add_argument('--coordinator', default=None)
  split = sys.argv.index('--')
  a = p.parse_args(sys.argv[1:split])
  _set_up(a)
  import importlib  # pylint: disable=g-import-not-at-top
  importlib.import_module(a.job).main(sys.argv[split + 1:])


if __name__ == '__main__':
  main()
