"""The run report: `<workdir>/report/index.html`, one page to look at a run.

Built from what the workdir already holds (config.json, runs.jsonl,
history.jsonl, eval_metrics.json, cv_metrics.json, study.csv,
explain/summary.json and its per-example files); it trains and explains
nothing. The page is self-contained (inline CSS and JS, charts as PNG files
in report/, the explanations' media linked relatively), so the folder opens
from disk or any static server.
"""

from explain.report.build import REPORT_DIR
from explain.report.build import RUNS_FILE
from explain.report.build import write_report
