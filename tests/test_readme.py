"""The README tells the truth: its quoted demo output is what the demo
prints, and its test command is what CI runs."""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, 'README.md')
DEMO_COMMAND = ('python main.py --config=configs/demo.py '
                '--workdir=/tmp/parallelnet_demo')


def quoted_demo_output():
  """(lines, stated line count) of the README's first-run block."""
  text = open(README, encoding='utf-8').read()
  start = text.index(f'```\n$ {DEMO_COMMAND}\n') + len(f'```\n$ {DEMO_COMMAND}\n')
  block = text[start:text.index('```', start)].rstrip('\n').split('\n')
  stated = re.search(r'\((\d+) lines in all', text)
  return block, int(stated.group(1)) if stated else None


# A progress line (parallelnet.core.progress): printed only when a step
# runs longer than its interval, so how many appear depends on the machine.
PROGRESS = re.compile(r'^[^:]+: \d+/\d+ .*\(\d+%\)')


def normalise(line, workdir, data_dir):
  """A line with what differs from run to run (times, rates, paths, the
  event file's host and time) replaced by placeholders."""
  line = line.replace(data_dir, '<data_dir>').replace(workdir, '<workdir>')
  line = re.sub(r'events\.out\.tfevents\.\S+?(?=[,)]|$)',
                'events.out.tfevents.<id>', line)
  line = re.sub(r'\d+:\d\d:\d\d', '<hms>', line)
  line = re.sub(r'\(\d+ files\)', '(<n> files)', line)  # Orbax's own files.
  line = re.sub(r'\d+(\.\d+)?/s\b', '<rate>/s', line)
  line = re.sub(r'\b\d+(\.\d+)? s\b', '<t> s', line)
  return line


def matches(quoted, printed):
  """Whether `printed` lines follow `quoted`, where a quoted '...' stands
  for any number of printed lines."""
  i = 0
  for k, q in enumerate(quoted):
    if q == '...':
      rest = quoted[k + 1:]
      if not rest:
        return True
      return any(matches(rest, printed[j:]) for j in range(i, len(printed)))
    if i >= len(printed) or printed[i] != q:
      return False
    i += 1
  return i == len(printed)


def test_the_matcher():
  assert matches(['a', '...', 'd'], ['a', 'b', 'c', 'd'])
  assert matches(['a', '...', 'c', 'd'], ['a', 'c', 'd'])
  assert not matches(['a', '...', 'd'], ['a', 'b', 'c'])
  assert not matches(['a', 'b'], ['a', 'b', 'c'])
  n = normalise('epoch 1/15  loss 0.8866  6.3 s  (best) 931.4/s 0:00:10 left',
                '/w', '/d')
  assert n == 'epoch 1/15  loss 0.8866  <t> s  (best) <rate>/s <hms> left'
  assert PROGRESS.match('epoch 1: 15/29 steps (52%)  3.06/s  0:00:04 left')
  assert not PROGRESS.match('epoch  1/15  loss 0.8274  acc 0.696')


def test_readme_test_command_is_what_ci_runs():
  readme = open(README, encoding='utf-8').read()
  ci = open(os.path.join(ROOT, '.ci', 'run'), encoding='utf-8').read()
  command = ci.strip().splitlines()[-1]
  assert f'```\n{command}\n```' in readme, command
  lines, stated = quoted_demo_output()
  assert lines and stated, 'the README quotes no demo output'


@pytest.mark.slow
@pytest.mark.xdist_group('demo')
def test_demo_prints_what_the_readme_quotes(readme_demo):
  """The README's demo command, run as a user runs it (a fresh dataset
  folder; conftest.readme_demo), prints the quoted lines: the same values,
  times aside."""
  assert readme_demo['returncode'] == 0, readme_demo['output']
  workdir, data_dir = readme_demo['workdir'], readme_demo['data_dir']
  printed = [l for l in readme_demo['output'].rstrip('\n').split('\n')
             if not PROGRESS.match(l)]
  quoted, stated = quoted_demo_output()
  readme_data_dir = '~/tensorflow_datasets'  # As the README writes it.
  quoted = [normalise(l, '/tmp/parallelnet_demo', readme_data_dir)
            for l in quoted]
  got = [normalise(l, workdir, data_dir) for l in printed]
  assert len(printed) == stated, '\n'.join(printed)
  assert matches(quoted, got), '\n'.join(['quoted:'] + quoted +
                                         ['printed:'] + got)
