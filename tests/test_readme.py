"""The README tells the truth: its quoted demo output is what the demo
prints, and its test command is what CI runs."""

import json
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


def test_normalise():
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


EPOCH = re.compile(r'^epoch +(\d+)/(\d+)  loss [\d.]+  acc [\d.]+  val loss '
                   r'[\d.]+  val acc [\d.]+  lr [\d.e-]+  \S+ s(  \(best\))?$')
STOP = re.compile(r'^Early stopping after epoch (\d+): no validation-loss gain '
                  r'for (\d+) epochs\.$')
METRICS = re.compile(r'^test metrics at checkpoint step (\d+): accuracy ([\d.]+), '
                     r'macro-F1 ([\d.]+), kappa ([\d.]+), confusion (\[.*\])$')
TOP = re.compile(r'image ([\d.]+) \(chance ([\d.]+)\), speech ([\d.]+) '
                 r'\(chance ([\d.]+)\)')
# How far the test metrics may move between CPUs (see the README's note: the
# short demo training amplifies float rounding, which differs with the
# CPU's vector width, so the best epoch and the last digits move).
METRIC_TOLERANCE = 0.03


def parse_run(lines):
  """A demo output split into (head, epochs, stop, tail): `epochs` are
  (number, total, best) per epoch line, `stop` the early-stopping epoch and
  patience or None; head and tail are the lines before and after."""
  first = next(i for i, l in enumerate(lines) if EPOCH.match(l) or l == '...')
  i, epochs = first, []
  while i < len(lines) and (EPOCH.match(lines[i]) or lines[i] == '...'):
    m = EPOCH.match(lines[i])
    if m:
      epochs.append((int(m.group(1)), int(m.group(2)), bool(m.group(3))))
    i += 1
  stop = STOP.match(lines[i]) if i < len(lines) else None
  if stop:
    stop, i = (int(stop.group(1)), int(stop.group(2))), i + 1
  return lines[:first], epochs, stop, lines[i:]


def check_epochs(epochs, stop):
  """The epoch lines of one run number 1..E of the configured total, and
  early stopping fired exactly when the rule says (no '(best)' in the last
  `patience` epochs)."""
  numbers = [e[0] for e in epochs]
  assert numbers == list(range(1, len(epochs) + 1)), numbers
  total = epochs[0][1]
  assert all(e[1] == total for e in epochs) and len(epochs) <= total
  last_best = max(e[0] for e in epochs if e[2])
  if stop:
    last, patience = stop
    assert last == len(epochs) and last - last_best == patience, (stop, epochs)
  else:
    assert len(epochs) == total, epochs
  return last_best


def test_the_run_parser():
  lines = ['head', 'epoch  1/3  loss 0.8  acc 0.6  val loss 2.0  val acc 0.1  '
           'lr 0.001  9.7 s  (best)',
           'epoch  2/3  loss 0.5  acc 0.7  val loss 3.0  val acc 0.1  '
           'lr 1e-05  2.7 s',
           'Early stopping after epoch 2: no validation-loss gain for 1 epochs.',
           'tail']
  head, epochs, stop, tail = parse_run(lines)
  assert (head, epochs, stop, tail) == (['head'], [(1, 3, True), (2, 3, False)],
                                        (2, 1), ['tail'])
  assert check_epochs(epochs, stop) == 1
  with pytest.raises(AssertionError):  # Stopped one epoch too early.
    check_epochs(epochs, (2, 2))
  with pytest.raises(AssertionError):  # Ended before the total, no stop.
    check_epochs(epochs, None)
  # The README's own block parses, and its stated line count is its run's.
  quoted, stated = quoted_demo_output()
  head, epochs, stop, tail = parse_run(quoted)
  last = stop[0] if stop else epochs[0][1]
  assert stated == len(head) + last + bool(stop) + len(tail), stated
  assert METRICS.match(tail[0]) and TOP.search(tail[2]), tail


@pytest.mark.slow
@pytest.mark.xdist_group('demo')
def test_demo_prints_what_the_readme_quotes(readme_demo):
  """The README's demo command, run as a user runs it (a fresh dataset
  folder; conftest.readme_demo), prints the quoted lines: the same text
  with times aside, and the same numbers where they do not depend on the
  CPU's float rounding (the data, its split and the planted cues' chance
  levels); where they do (losses, the best epoch), a consistent run and
  test metrics within METRIC_TOLERANCE of the quoted ones."""
  assert readme_demo['returncode'] == 0, readme_demo['output']
  workdir, data_dir = readme_demo['workdir'], readme_demo['data_dir']
  printed = [l for l in readme_demo['output'].rstrip('\n').split('\n')
             if not PROGRESS.match(l)]
  quoted, _ = quoted_demo_output()
  readme_data_dir = '~/tensorflow_datasets'  # As the README writes it.
  quoted = [normalise(l, '/tmp/parallelnet_demo', readme_data_dir)
            for l in quoted]
  got = [normalise(l, workdir, data_dir) for l in printed]
  q_head, q_epochs, q_stop, q_tail = parse_run(quoted)
  head, epochs, stop, tail = parse_run(got)
  assert len(printed) == len(head) + len(epochs) + bool(stop) + len(tail)
  assert head == q_head, '\n'.join(['quoted:'] + q_head + ['printed:'] + head)
  assert epochs[0][1] == q_epochs[0][1]  # The configured epoch count.
  if stop and q_stop:
    assert stop[1] == q_stop[1]  # The configured patience.
  last_best = check_epochs(epochs, stop)
  assert len(tail) == len(q_tail), '\n'.join(tail)
  m, q = METRICS.match(tail[0]), METRICS.match(q_tail[0])
  assert m and q, (tail[0], q_tail[0])
  # The checkpoint evaluated is the best epoch's; steps per epoch are the
  # data's, the same on every machine (and divide the README's step too).
  with open(os.path.join(workdir, 'history.jsonl'), encoding='utf-8') as f:
    steps_per_epoch = json.loads(f.readline())['step']
  assert int(m.group(1)) == steps_per_epoch * last_best, (tail[0], last_best)
  assert int(q.group(1)) % steps_per_epoch == 0, q_tail[0]
  for k in (2, 3, 4):
    assert abs(float(m.group(k)) - float(q.group(k))) <= METRIC_TOLERANCE, (
        tail[0], q_tail[0])
  confusion, q_confusion = json.loads(m.group(5)), json.loads(q.group(5))
  # The test split (its class counts) is the data's, not the CPU's.
  assert [sum(r) for r in confusion] == [sum(r) for r in q_confusion]
  accuracy = sum(confusion[i][i] for i in range(len(confusion))) / sum(
      map(sum, confusion))
  assert f'{accuracy:.4f}' == m.group(2)
  assert tail[1] == f'test_accuracy={m.group(2)}', tail[1]
  top, q_top = TOP.search(tail[2]), TOP.search(q_tail[2])
  assert top and q_top and (top.group(2), top.group(4)) == (
      q_top.group(2), q_top.group(4)), (tail[2], q_tail[2])
  assert TOP.sub('', tail[2]) == TOP.sub('', q_tail[2]), (tail[2], q_tail[2])
  assert tail[3:] == q_tail[3:], '\n'.join(['quoted:'] + q_tail[3:] +
                                            ['printed:'] + tail[3:])
