"""stats.png: the constructed dataset at a glance, like the paper's Fig. 1."""

from parallelnet.core import plotting


def plot_stats(stats, path):
  """A chart like the paper's Fig. 1: kept samples per class, which
  modality's teacher labelled them, and kept/discarded counts."""
  plt = plotting.pyplot()
  panels = [('Kept samples per class', stats['classes'], '#4C72B0'),
            ('Label taken from', stats['label_modality'], '#55A868'),
            ('Decisions', stats['decisions'], '#C44E52')]
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.6),
                           gridspec_kw=dict(width_ratios=[4, 2, 4]))
  for ax, (title, counts, colour) in zip(axes, panels):
    names, values = list(counts), [counts[k] for k in counts]
    bars = ax.bar(range(len(names)), values, color=colour)
    ax.set_xticks(range(len(names)), [n.replace('_', '\n') for n in names])
    ax.set_title(title)
    ax.bar_label(bars, [str(v) for v in values])
    ax.set_ylim(0, max(values + [1]) * 1.18)
    ax.spines[['top', 'right']].set_visible(False)
  fig.suptitle(f'Constructed dataset: {stats["kept"]} of {stats["rows"]} '
               f'source rows kept (threshold {stats["threshold"]}'
               f'{", teachers must agree" if stats["require_agreement"] else ""})')
  fig.tight_layout()
  plotting.save(fig, path, dpi=100)
