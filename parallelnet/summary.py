"""Parameter counts per branch (`main.py --mode=summary`, PAPER.md, "The two branches").

With train.trunk_lr_multiplier=0 the N2 trunks are frozen (never updated,
BatchNorm in inference mode): the `frozen` column and frozen_params count
them, and trainable_params leaves them out.

Counted with `jax.eval_shape`, so the paper-size model (117M parameters) is
never allocated.
"""

import jax

from parallelnet import models
from parallelnet import train_state

# What each top-level module is, in the order the table lists them.
BRANCHES = {
    'N1_i': 'N1 conv branch, image',
    'N1_s': 'N1 conv branch, speech',
    'N2_i': 'N2 backbone branch, image',
    'N2_s': 'N2 backbone branch, speech',
    'adapter': 'speech 1x1 conv to 3 channels',
    'P_is': 'crossing before N2: image (Baseline 1: N1a_i) -> N2_s input',
    'P_si': 'crossing before N2: speech (Baseline 1: N1a_s) -> N2_i input',
    'head_sp': 'late-fusion head -> O_sp',
    'head_img': 'late-fusion head -> O_img',
    'head_mul': 'late-fusion head -> O_mul',
    'theta': 'fusion weights, w = softmax(theta)',
}


def variable_shapes(config) -> dict:
  """{'params', 'batch_stats'} of `config`'s model as ShapeDtypeStructs."""
  model = models.get_model(config)
  return jax.eval_shape(
      lambda key: models.init_variables(model, config, key,
                                        load_pretrained=False),
      jax.random.key(config.seed))


def frozen_by_branch(config, params) -> dict:
  """{branch: parameters training leaves unchanged}: the N2 trunks when
  train.trunk_lr_multiplier = 0 (models.frozen_trunks), else nothing."""
  if not models.frozen_trunks(config):
    return {}
  return {b: models.count_params(params[b][sub])
          for b, sub in train_state.TRUNK_PATHS if b in params}


def param_counts(config) -> tuple[int, int]:
  """(trainable, frozen) parameter counts of `config`'s model."""
  params = variable_shapes(config)['params']
  frozen = sum(frozen_by_branch(config, params).values())
  return models.count_params(params) - frozen, frozen


def summarize(config) -> str:
  """A table of parameter counts per branch (and how many of them are
  frozen), then the total lines: trainable_params, frozen_params,
  batch_stats."""
  shapes = variable_shapes(config)
  params = models.count_by_branch(shapes['params'])
  frozen = frozen_by_branch(config, shapes['params'])
  stats = models.count_by_branch(shapes['batch_stats'])
  order = [b for b in BRANCHES if b in params]
  order += sorted(set(params) - set(order))  # Any module not listed above.
  m = config.model
  lines = [
      f'model={m.name} modalities={m.modalities} crossing={m.crossing} '
      f'speech_backbone={m.speech_backbone} image_backbone={m.image_backbone} '
      f'width={m.width} classes={len(config.dataset.classes)} '
      f'image={config.input.image_size}x{config.input.image_size}x3 '
      f'spectrogram={config.input.num_frames}x{config.input.n_mels}x1',
      f'{"branch":<10} {"params":>13} {"frozen":>12} {"batch_stats":>12}  '
      'description',
  ]
  for b in order:
    lines.append(f'{b:<10} {params[b]:>13,} {frozen.get(b, 0):>12,} '
                 f'{stats.get(b, 0):>12,}  {BRANCHES.get(b, "")}')
  total = sum(params.values())
  total_frozen = sum(frozen.values())
  total_stats = sum(stats.values())
  lines.append(f'{"total":<10} {total:>13,} {total_frozen:>12,} '
               f'{total_stats:>12,}')
  lines.append(f'trainable_params={total - total_frozen}')
  lines.append(f'frozen_params={total_frozen}')
  lines.append(f'batch_stats={total_stats}')
  return '\n'.join(lines)
