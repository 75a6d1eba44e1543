"""The one matplotlib setup: the Agg backend (no display), figures saved once.

Every figure of ours (confusion matrices, study bars, construction stats,
explanations) is drawn through `pyplot()` and written by `save()`.
"""

import io

from parallelnet.core import paths


def pyplot():
  """matplotlib.pyplot on the Agg backend, imported on first use (it is
  slow to import and only the modes that draw need it)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def figure_bytes(fig, *, fmt='png', dpi=None) -> bytes:
  """The rendered figure as bytes (written by the caller wherever it likes)."""
  buf = io.BytesIO()
  fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches='tight')
  return buf.getvalue()


def save(fig, path, *, dpi=None):
  """Renders `fig` to bytes, writes them atomically to `path`, closes it."""
  try:
    paths.write_bytes_atomic(path, figure_bytes(fig, dpi=dpi))
  finally:
    pyplot().close(fig)
