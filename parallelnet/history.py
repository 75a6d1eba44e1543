"""Per-epoch training values in `<workdir>/history.jsonl`, one JSON line per
epoch: what the run report (explain/report) draws as training curves.

TensorBoard events hold the same scalars; this file is for readers without
TensorBoard. A resumed run may log an epoch again: `read` keeps the last
line of each epoch.
"""

import json
import math
import time

import jax

from parallelnet.core import paths

FILE = 'history.jsonl'


def log_epoch(workdir: str, epoch: int, step: int, scalars: dict,
              seconds: float):
  """Appends epoch `epoch`'s (1-based) scalars (process 0 only)."""
  if jax.process_index() != 0:
    return
  record = dict(epoch=int(epoch), step=int(step), seconds=float(seconds),
                time=time.time())
  for k, v in scalars.items():
    v = float(v)
    record[k] = v if math.isfinite(v) else None
  paths.append_text(paths.join(workdir, FILE), json.dumps(record) + '\n')


def read(workdir: str) -> tuple[list[dict], list[str]]:
  """(records sorted by epoch, problems): unreadable lines are skipped and
  named in `problems`; [] when there is no file."""
  path = paths.join(workdir, FILE)
  if not paths.isfile(path):
    return [], []
  by_epoch, problems = {}, []
  text = paths.read_bytes(path).decode('utf-8', errors='replace')
  for n, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
      by_epoch[int(rec['epoch'])] = rec
    except (ValueError, KeyError, TypeError) as e:
      problems.append(f'{path}:{n}: not an epoch record ({e}); skipped.')
  return [by_epoch[k] for k in sorted(by_epoch)], problems
