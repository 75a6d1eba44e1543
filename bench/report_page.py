r"""The run report in a headless browser: load time at N examples, screenshots.

  # Load time of a fabricated workdir's report with 500 explained examples:
  PYTHONPATH=$PWD python bench/report_page.py --examples=500
  # docs/report.png from the demo's workdir (train it first):
  python main.py --config=configs/demo.py --workdir=/tmp/demo
  PYTHONPATH=$PWD python bench/report_page.py --workdir=/tmp/demo \
      --screenshot=docs/report.png

The load time is what the page itself measures with performance.now() (from
navigation start): data-script-ms when its script has run (cards filtered
and sorted), data-load-ms at the load event; read back with --dump-dom.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'tests'))

from explain import report  # pylint: disable=g-import-not-at-top,wrong-import-position
import test_report  # pylint: disable=g-import-not-at-top,wrong-import-position

CHROMIUM = ['/usr/bin/chromium', '--headless=new', '--no-sandbox',
            '--disable-gpu', '--hide-scrollbars']


def load_times(index, repeats):
  out = []
  for _ in range(repeats):
    dom = subprocess.run(CHROMIUM + ['--dump-dom', 'file://' + index],
                         capture_output=True, text=True, timeout=300,
                         check=True).stdout
    root = re.search(r'<html[^>]*>', dom).group(0)
    get = lambda k, r=root: float(re.search(f'{k}="([0-9.]+)"', r).group(1))
    out.append((get('data-script-ms'), get('data-load-ms'),
                dom.count('data-example-id=')))
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--examples', type=int, default=500)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--workdir', help='Report this workdir (else a fabricated '
                 'one with --examples examples).')
  p.add_argument('--screenshot', help='Write a screenshot of the page here.')
  args = p.parse_args()
  wd = args.workdir or test_report.make_workdir(
      tempfile.mkdtemp(prefix='report_bench_'), n=args.examples,
      history=True)
  t0 = time.time()
  index = report.write_report(wd)
  print(f'write_report: {time.time() - t0:.1f} s, '
        f'{os.path.getsize(index) / 1e3:.0f} kB of HTML')
  for script_ms, load_ms, cards in load_times(index, args.repeats):
    print(f'{cards} cards: script done at {script_ms:.0f} ms, load event at '
          f'{load_ms:.0f} ms after navigation start')
  if args.screenshot:
    subprocess.run(CHROMIUM + [f'--screenshot={os.path.abspath(args.screenshot)}',
                               '--window-size=1280,3600', 'file://' + index],
                   capture_output=True, timeout=300, check=True)
    print(f'wrote {args.screenshot}')


if __name__ == '__main__':
  main()
