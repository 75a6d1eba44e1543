"""Shared pieces of the benchmarks: configs, timing, tables, BENCHMARKS.md rows.

Every benchmark times its own baseline in the same process, alternating the
contenders round by round so that a load change on a shared machine hits both,
excludes warm-up (compilation) from the timings, prints a table that ends with
the ratio, and appends one row to BENCHMARKS.md.
"""

import datetime
import importlib.util
import os
import platform
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS_MD = os.path.join(REPO, 'BENCHMARKS.md')

_HEADER = """# Benchmarks

## Rows

Rows are appended by the scripts in `bench/` (one row per run; the newest is
last). Timings exclude compilation and warm-up; contenders are timed in
alternating rounds in one process, and the median round is reported. "load"
is the 1-minute load average when the run started (the benchmark machine may
be shared).

| date (UTC) | benchmark | machine | versions | command | numbers | ratio |
|---|---|---|---|---|---|---|
"""


def load_config(name='demo', arg=None):
  """`configs/<name>.py`'s get_config(arg)."""
  path = os.path.join(REPO, 'configs', f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'bench_cfg_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def config_name(config):
  return (f'{config.input.image_size}px w{config.model.width:g} '
          f'f{config.model.feature_dim} h{config.model.head_dim}')


def machine():
  """A short description of this machine (CPU model, cores, load)."""
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          cpu = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') \
      else os.cpu_count()
  load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
  return f'{cpu}, {cores} cores, load {load:.1f}'


def versions(*extra):
  """'jax x, flax y, ...' for the packages that matter to a benchmark."""
  names = ('jax', 'flax', 'optax') + extra
  out = []
  for n in names:
    try:
      mod = __import__(n)
      out.append(f'{n} {mod.__version__}')
    except ImportError:
      pass
  return ', '.join(out)


def command():
  return 'python ' + ' '.join([os.path.relpath(sys.argv[0], REPO)]
                              + sys.argv[1:])


def append_row(benchmark, numbers, ratio, *, machine_desc, versions_desc,
               path=BENCHMARKS_MD):
  """Appends one markdown row to BENCHMARKS.md (creating it if needed)."""
  date = datetime.datetime.now(datetime.timezone.utc).strftime(
      '%Y-%m-%d %H:%M')
  cells = [date, benchmark, machine_desc, versions_desc,
           f'`{command()}`', numbers, ratio]
  cells = [str(c).replace('|', '/').replace('\n', ' ') for c in cells]
  new = not os.path.exists(path)
  with open(path, 'a') as f:
    if new:
      f.write(_HEADER)
    f.write('| ' + ' | '.join(cells) + ' |\n')
  print(f'appended a row to {os.path.relpath(path, REPO)}')


def time_call(fn, sync):
  """Seconds of one `fn()` call, `sync(result)` included (blocks on it)."""
  start = time.perf_counter()
  sync(fn())
  return time.perf_counter() - start


def alternate(contenders, rounds, sync_map):
  """Times each contender once per round, alternating; {name: [seconds]}.

  `contenders` is a dict name -> zero-argument callable, already warmed up.
  `sync_map[name]` blocks on that callable's result.
  """
  times = {name: [] for name in contenders}
  for _ in range(rounds):
    for name, fn in contenders.items():
      times[name].append(time_call(fn, sync_map[name]))
  return times


def median(xs):
  return statistics.median(xs)


def print_table(title, header, rows):
  """A fixed-width table: `header` and `rows` are lists of cells."""
  cols = list(zip(*([header] + rows)))
  widths = [max(len(str(c)) for c in col) for col in cols]
  line = '  '.join(f'{{:>{w}}}' for w in widths)
  print(f'\n{title}')
  print(line.format(*header))
  print('  '.join('-' * w for w in widths))
  for r in rows:
    print(line.format(*r))
