"""Start-up shared by the subprocess workers multi_worker.py and
explain_worker.py (simulated CPU devices, import paths, distributed init),
and `free_port` for the tests that start them."""

import os
import socket
import sys


def free_port():
  """A free localhost port for a 2-process run's coordinator."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def add_process_flags(parser):
  """--devices, --process_id, --num_processes, --coordinator."""
  parser.add_argument('--devices', type=int, default=1)
  parser.add_argument('--process_id', type=int, default=None)
  parser.add_argument('--num_processes', type=int, default=None)
  parser.add_argument('--coordinator', default=None)


def start(args):
  """Sets up JAX for `args` (from `add_process_flags`); call it before
  importing jax anywhere in the worker."""
  # Must precede the jax import: the number of simulated CPU devices.
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_force_host_platform_device_count='
                             f'{args.devices}')
  here = os.path.dirname(os.path.abspath(__file__))
  sys.path[:0] = [here, os.path.dirname(here)]
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_disable_most_optimizations', True)
  from parallelnet import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  mesh_lib.maybe_initialize_distributed(args.coordinator, args.num_processes,
                                        args.process_id)
