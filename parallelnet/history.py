"""Per-epoch training values in `<workdir>/history.jsonl`, one JSON line per
epoch: what the run report (explain/report) draws as training curves.

TensorBoard events hold the same scalars; this file is for readers without
TensorBoard. A resumed run may log an epoch again: `read` keeps the last
line of each epoch.
"""

import json
import math
import os
import time

FILE = 'history.jsonl'


def log_epoch(workdir: str, epoch: int, step: int, scalars: dict,
              seconds: float):
  """Appends epoch `epoch`'s (1-based) scalars (process 0 only)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    return
  record = dict(epoch=int(epoch), step=int(step), seconds=float(seconds),
                time=time.time())
  for k, v in scalars.items():
    v = float(v)
    record[k] = v if math.isfinite(v) else None
  with open(os.path.join(workdir, FILE), 'a', encoding='utf-8') as f:
    f.write(json.dumps(record) + '\n')


def read(workdir: str) -> tuple[list[dict], list[str]]:
  """(records sorted by epoch, problems): unreadable lines are skipped and
  named in `problems`; [] when there is no file."""
  path = os.path.join(workdir, FILE)
  if not os.path.isfile(path):
    return [], []
  by_epoch, problems = {}, []
  with open(path, encoding='utf-8', errors='replace') as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
        by_epoch[int(rec['epoch'])] = rec
      except (ValueError, KeyError, TypeError) as e:
        problems.append(f'{path}:{n}: not an epoch record ({e}); skipped.')
  return [by_epoch[k] for k in sorted(by_epoch)], problems
