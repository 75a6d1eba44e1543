"""The `--mode=explain_eval` driver: the explanation tests on a trained workdir.

On the first `config.explain_eval.num_examples` test examples, DnCShap in
its configured setting (config.explain) and the peers of
`config.explain_eval.peers` (explain/peers.py; slow ones limited by
`peer_examples`) explain the predicted class on the same leaf regions, and
explain/evaluation.py's tests score them. Writes `<workdir>/explain_eval/`:

  sanity.csv        method, randomized, modality, spearman_mean,
                    spearman_std, examples: rank correlation of each
                    modality's leaf values under a randomised model with the
                    trained model's (cascading from the heads down: heads,
                    fusion, N2, N1 and adapter, all; then the speech path
                    and the image path alone; `random_logit`: the trained
                    model explaining a random other class).
  faithfulness.csv  method, modality, examples, evaluations,
                    seconds_per_example, road_morf, road_lerf,
                    faithfulness_correlation, deletion_auc, insertion_auc.
  localisation.csv  method, modality, examples, pointing, energy, chance
                    (planted cues only: the demo corpus).
  interaction.csv   class, examples, interaction, total (p - v(∅)),
                    share_image, share_speech (DnCShap's baseline).
  explain_eval.md   the tables, with the settings.
"""

import csv
import io
import os
import time

from absl import logging
import jax
import numpy as np

import input_pipeline
from explain import evaluation
from explain import peers
from explain import run as explain_run
from explain.dncshap import num_evaluations
from explain.dncshap import region_boxes
from parallelnet.core import paths
from parallelnet.core.errors import UserError
from parallelnet import checkpointing
from parallelnet import models
from parallelnet.models import scaling as model_scaling

PEERS = ('occlusion', 'ig', 'gradxinput', 'random', 'shap-partition',
         'shap-kernel')
CHUNK = 32  # Examples per batched call.
# Cascading randomisation, from the heads down: each level adds its modules.
CASCADE = (('heads', ('head_sp', 'head_img', 'head_mul')),
           ('fusion', ('theta', 'P_is', 'P_si')),
           ('N2', ('N2_s', 'N2_i')),
           ('N1 and adapter', ('N1_s', 'N1_i', 'adapter')),
           ('all', None))
# The modules that read one modality's input.
PATHS = (('speech path', ('N1_s', 'adapter', 'N2_s', 'P_si')),
         ('image path', ('N1_i', 'N2_i', 'P_is')))

_apply = jax.jit(lambda f, images, specs: f(images, specs))


def _split_names(text):
  return [t.strip() for t in str(text).split(',') if t.strip()]


def _limits(text):
  out = {}
  for item in _split_names(text):
    name, _, n = item.partition('=')
    if name not in PEERS or not n.strip().isdigit():
      raise UserError(f'config.explain_eval.peer_examples: {item!r}; write '
                      f'method=count with a method of {", ".join(PEERS)}.')
    out[name] = int(n)
  return out


def predictor(fn, chunk=256):
  """numpy (images, specs) -> (B, C) probabilities, in jitted chunks."""
  def predict(images, specs):
    return np.concatenate([
        np.asarray(_apply(fn, images[s:s + chunk], specs[s:s + chunk]))
        for s in range(0, len(images), chunk)])
  return predict


def randomized(variables, fresh, names):
  """variables with the top-level modules `names` (None: all) taken from
  `fresh` (a re-initialised copy): parameters and batch statistics."""
  if names is None:
    return fresh
  out = {}
  for col, tree in variables.items():
    tree = dict(tree)
    for name in names:
      if name in tree and name in fresh.get(col, {}):
        tree[name] = fresh[col][name]
    out[col] = tree
  return out


class Methods:
  """Explains a batch of examples with DnCShap or a peer: (E, 2L) values."""

  def __init__(self, config, baseline, image_shape, speech_shape):
    c = config.explain
    self.config, self.baseline = config, baseline
    self.depth, self.mode, self.context = int(c.depth), c.mode, c.context
    self.max_batch = int(c.max_batch)
    self.key = jax.random.key(config.seed)
    self.shapes = (tuple(image_shape), tuple(speech_shape))
    self.budget = num_evaluations(self.depth, self.mode)
    self._masked = self._grad = None

  def masked(self, fn):
    """A `peers.Masked` (one for every fn of the same structure)."""
    if self._masked is None:
      self._masked = peers.Masked(fn, *self.shapes, self.depth)
    return self._masked

  def evaluations(self, name):
    k = self.baseline.num_baselines
    n2 = 2 * 2**self.depth
    return {'dncshap': k * self.budget, 'occlusion': k * (n2 + 1),
            'ig': peers.ig_alphas(self.budget * k, k)[1] * 2,
            'gradxinput': 2, 'random': 0}.get(name, k * self.budget)

  def __call__(self, name, fn, images, specs, target, start=0):
    b = self.baseline
    if name == 'dncshap':
      e = explain_run.explain_batch(
          fn, images, specs, b, depth=self.depth, mode=self.mode,
          context=self.context, key=jax.random.fold_in(self.key, start),
          max_batch=self.max_batch, target=target)
      return np.concatenate([np.asarray(e.image_regions.values),
                             np.asarray(e.speech_regions.values)], 1)
    if name == 'random':
      rng = np.random.default_rng([self.config.seed, start])
      return rng.random((len(images), 2 * 2**self.depth))
    bi, bs = explain_run.baseline_arrays(b, images, specs)
    if name == 'occlusion':
      return peers.occlusion(self.masked(fn), images, specs, bi, bs, target,
                             fn)
    if name in ('ig', 'gradxinput'):
      if self._grad is None:
        self._grad = peers.gradient_fn(fn, *self.shapes, self.depth)
      budget = 2 if name == 'gradxinput' else self.budget * b.num_baselines
      return peers.gradients(self._grad, fn, images, specs, bi, bs,
                             target, budget)[0]
    if name.startswith('shap-'):
      shap = peers.Shap(name[len('shap-'):], self.masked(fn),
                        self.budget * b.num_baselines)
      return np.stack([shap(images[i:i + 1], specs[i:i + 1], bi[:, i:i + 1],
                            bs[:, i:i + 1], target[i:i + 1], fn)
                       for i in range(len(images))])
    raise UserError(f'config.explain_eval.peers: unknown method {name!r}; '
                    f'known: {", ".join(PEERS)}.')

  def batched(self, name, fn, images, specs, target):
    return np.concatenate([
        self(name, fn, images[s:s + CHUNK], specs[s:s + CHUNK],
             target[s:s + CHUNK], start=s)
        for s in range(0, len(images), CHUNK)])


def _write(path, text):
  paths.write_text_atomic(path, text)


def _csv(rows, columns):
  f = io.StringIO()
  w = csv.DictWriter(f, fieldnames=columns, extrasaction='ignore',
                     lineterminator='\n')
  w.writeheader()
  for r in rows:
    w.writerow({k: (f'{v:.6g}' if isinstance(v, float) else v)
                for k, v in r.items()})
  return f.getvalue()


def _md_table(rows, columns):
  fmt = lambda v: f'{v:.3f}' if isinstance(v, float) else str(v)
  out = ['| ' + ' | '.join(columns) + ' |',
         '|' + '---|' * len(columns)]
  out += ['| ' + ' | '.join(fmt(r.get(c, '')) for c in columns) + ' |'
          for r in rows]
  return '\n'.join(out)


def evaluate(config, workdir):
  """Runs the explanation tests; writes and returns the tables (dict)."""
  config = model_scaling.resolve_config(config)
  c = config.explain_eval
  names = ['dncshap'] + _split_names(c.peers)
  for n in names[1:]:
    if n not in PEERS:
      raise UserError(f'config.explain_eval.peers: unknown method {n!r}; '
                      f'known: {", ".join(PEERS)}.')
  if any(n.startswith('shap-') for n in names):
    try:
      import shap  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError as e:
      raise UserError(
          f'config.explain_eval.peers={c.peers!r} asks for shap, which is '
          f'not installed: pip install -r bench/requirements.txt (shap), or '
          f'drop the shap peers.') from e
  limits = _limits(c.peer_examples)
  sanity_names = _split_names(c.sanity_methods)
  for n in sanity_names:
    if n not in names:
      raise UserError(f'config.explain_eval.sanity_methods: {n!r} is not '
                      f'among dncshap and config.explain_eval.peers.')
  if c.fill not in ('zeros', 'mean', 'blur'):
    raise UserError(f'config.explain_eval.fill={c.fill!r}; expected zeros, '
                    f'mean or blur.')

  model, variables, step = checkpointing.restore_for_inference(
      config, workdir, which='best')
  fn = explain_run.probability_fn(model, variables)
  predict = predictor(fn)
  test = input_pipeline.load_examples(config, 'test',
                                      int(c.num_examples) or None)
  num = len(test['id'])
  images, specs = test['image'], test['spectrogram']
  image_shape, speech_shape = images.shape[1:], specs.shape[1:]
  baseline = explain_run.make_baseline(config, image_shape, speech_shape,
                                       workdir=workdir)
  fill_config = config.copy_and_resolve_references()
  fill_config.explain.baseline = c.fill
  fill = explain_run.make_baseline(fill_config, image_shape, speech_shape,
                                   workdir=workdir)
  methods = Methods(config, baseline, image_shape, speech_shape)
  depth, leaves = methods.depth, 2**methods.depth
  classes = list(config.dataset.classes)
  probs = predict(images, specs)
  target = np.argmax(probs, 1).astype(np.int32)
  out_dir = os.path.join(workdir, 'explain_eval')
  paths.makedirs(out_dir)

  # Attributions of the trained model.
  values, seconds, counts = {}, {}, {}
  for name in names:
    n = min(num, limits.get(name, num))
    # Compile every batch shape the timed run uses: a chunk and the rest
    # (the shap peers explain one example at a time).
    for k in ({1} if name.startswith('shap-')
              else {min(n, CHUNK), n % CHUNK} - {0}):
      methods(name, fn, images[:k], specs[:k], target[:k])
    t0 = time.perf_counter()
    values[name] = methods.batched(name, fn, images[:n], specs[:n],
                                   target[:n])
    seconds[name] = (time.perf_counter() - t0) / n
    counts[name] = n
    logging.info('explain_eval: %s on %d examples, %.1f ms each', name, n,
                 1e3 * seconds[name])

  # Faithfulness: ROAD, faithfulness correlation, deletion / insertion.
  road = evaluation.Road(predict, images, specs, target, depth,
                         noise=float(c.road_noise), seed=config.seed)
  masked = methods.masked(fn)
  rng = np.random.default_rng(config.seed)
  chosen = {m: evaluation.subsets(leaves, m, int(c.num_subsets),
                                  max(1, (2 if m == 'both' else 1)
                                      * leaves // 4), rng)
            for m in ('image', 'speech', 'both')}

  def removal(n, masks):
    """(n, M) v of leaf masks (M, 2L) or (n, M, 2L) with the fill."""
    out = []
    for s in range(0, n, CHUNK):
      t = min(n, s + CHUNK)
      bi, bs = explain_run.baseline_arrays(fill, images[s:t], specs[s:t])
      m = masks[s:t] if masks.ndim == 3 else np.broadcast_to(
          masks, (t - s,) + masks.shape)
      out.append(masked(images[s:t], specs[s:t], bi, bs, m, target[s:t]))
    return np.concatenate(out)

  full = probs[np.arange(num), target]
  removed = {m: removal(num, ~chosen[m]) for m in chosen}
  faith_rows = []
  for name in names:
    n, v = counts[name], values[name]
    row_base = dict(method=name, examples=n,
                    evaluations=float(methods.evaluations(name)),
                    seconds_per_example=seconds[name])
    for m in ('image', 'speech'):
      faith_rows.append(dict(
          row_base, modality=m,
          road_morf=float(road.curves(v, m, 'morf').mean()),
          road_lerf=float(road.curves(v, m, 'lerf').mean()),
          faithfulness_correlation=float(evaluation.faithfulness_correlation(
              v, full[:n], removed[m][:n], chosen[m]).mean())))
    curves = removal(n, evaluation.deletion_masks(
        v, np.random.default_rng(config.seed)))
    faith_rows.append(dict(
        row_base, modality='both',
        faithfulness_correlation=float(evaluation.faithfulness_correlation(
            v, full[:n], removed['both'][:n], chosen['both']).mean()),
        deletion_auc=float(evaluation.auc(curves[:, :2 * leaves + 1]).mean()),
        insertion_auc=float(evaluation.auc(curves[:, 2 * leaves + 1:])
                            .mean())))

  # Localisation on planted cues.
  loc_rows = []
  if np.any(test['image_cue_box'][:, 0] >= 0) or np.any(
      test['speech_cue_span'][:, 0] >= 0):
    spans = explain_run.leaf_time_spans(
        region_boxes(tuple(speech_shape[:2]), depth),
        config.input.hop_length, config.input.sample_rate,
        test['waveform'].shape[1])
    ground = evaluation.Ground(
        image_shape, depth, spans,
        test['waveform'].shape[1] / config.input.sample_rate,
        test['image_cue_box'], test['speech_cue_span'])
    chance = ground.chance()
    for name in names:
      n = counts[name]
      pe = evaluation.pointing_and_energy(ground.subset(n), values[name])
      for m in ('image', 'speech'):
        loc_rows.append(dict(method=name, modality=m, examples=pe[f'n_{m}'],
                             pointing=pe[f'pointing_{m}'],
                             energy=pe[f'energy_{m}'],
                             chance_pointing=chance[f'pointing_{m}'],
                             chance_energy=chance[f'energy_{m}']))

  # Modality interaction, with DnCShap's baseline.
  four = []
  for s in range(0, num, CHUNK):
    t = min(num, s + CHUNK)
    bi, bs = explain_run.baseline_arrays(baseline, images[s:t], specs[s:t])
    four.append(masked(images[s:t], specs[s:t], bi, bs, np.broadcast_to(
        evaluation.modality_masks(leaves), (t - s, 4, 2 * leaves)),
                       target[s:t]))
  inter_rows = evaluation.interaction_by_class(np.concatenate(four), target,
                                               classes)

  # Randomisation sanity checks.
  ns = min(num, int(c.sanity_examples) or num)
  fresh = models.init_variables(model, config,
                                jax.random.key(config.seed + 1),
                                load_pretrained=False)
  levels, done = [], []
  for level, mods in CASCADE:
    done = None if mods is None else done + list(mods)
    levels.append((f'cascade: {level}', done))
  levels += [(name, list(mods)) for name, mods in PATHS]
  sanity_rows = []
  other = evaluation.random_other_class(target[:ns], len(classes),
                                        np.random.default_rng(config.seed))
  for name in sanity_names:
    ref = evaluation.split(values[name][:ns])
    n_s = min(ns, counts[name])

    def row(label, v):
      for m in ('image', 'speech'):
        r = evaluation.rank_correlation(ref[m][:n_s],
                                        evaluation.split(v)[m][:n_s])
        sanity_rows.append(dict(method=name, randomized=label, modality=m,
                                spearman_mean=float(r.mean()),
                                spearman_std=float(r.std()), examples=n_s))
    for label, mods in levels:
      fn_r = explain_run.probability_fn(model,
                                        randomized(variables, fresh, mods))
      row(label, methods.batched(name, fn_r, images[:n_s], specs[:n_s],
                                 target[:n_s]))
    row('random_logit', methods.batched(name, fn, images[:n_s], specs[:n_s],
                                        other[:n_s]))

  tables = dict(sanity=sanity_rows, faithfulness=faith_rows,
                localisation=loc_rows, interaction=inter_rows)
  columns = dict(
      sanity=['method', 'randomized', 'modality', 'spearman_mean',
              'spearman_std', 'examples'],
      faithfulness=['method', 'modality', 'examples', 'evaluations',
                    'seconds_per_example', 'road_morf', 'road_lerf',
                    'faithfulness_correlation', 'deletion_auc',
                    'insertion_auc'],
      localisation=['method', 'modality', 'examples', 'pointing', 'energy',
                    'chance_pointing', 'chance_energy'],
      interaction=['cls', 'examples', 'interaction', 'total', 'share_image',
                   'share_speech'])
  if jax.process_index() == 0:
    for k, rows in tables.items():
      if rows:
        _write(os.path.join(out_dir, f'{k}.csv'), _csv(rows, columns[k]))
    _write(os.path.join(out_dir, 'explain_eval.md'),
           markdown(config, step, baseline, fill, counts, num, ns, tables,
                    columns))
  logging.info('explain_eval: wrote %s', out_dir)
  return tables


def markdown(config, step, baseline, fill, counts, num, ns, tables, columns):
  """explain_eval.md: settings and one table per family."""
  e = config.explain
  limited = [f'{m} on the first {n}' for m, n in counts.items() if n < num]
  parts = [
      '# Explanation tests', '',
      f'Checkpoint step {step}; the first {num} test examples'
      + (f' ({", ".join(limited)})' if limited else '') + '. DnCShap: '
      f'{e.mode} mode, depth {e.depth}, context {e.context}, baseline '
      f'{baseline.name}; peers use the same leaf regions and baseline. '
      f'Deletion / insertion and faithfulness correlation remove leaves with '
      f'the {fill.name} fill; ROAD imputes them (noisy linear imputation).',
      '', '## Randomisation sanity checks (Adebayo et al. 2018)', '',
      f'Spearman rank correlation of the leaf values with the trained '
      f"model's, on the first {ns} examples (lower is better: a method that "
      f'passes explains the model, not the input).', '',
      _md_table(tables['sanity'], columns['sanity']), '',
      '## Faithfulness', '',
      'ROAD MoRF (mean target probability, most relevant removed first: '
      'lower is better) and LeRF (least relevant first: higher is better); '
      'faithfulness correlation (Bhatt et al. 2020: higher is better); '
      'deletion AUC (lower is better), insertion AUC (higher is better).',
      '', _md_table(tables['faithfulness'], columns['faithfulness']), '']
  if tables['localisation']:
    parts += ['## Localisation on the planted cues', '',
              'Pointing: the top leaf overlaps the cue; energy: the share of '
              'the positive attribution inside it; chance: a random leaf / '
              'a flat map.', '',
              _md_table(tables['localisation'], columns['localisation']), '']
  parts += ['## Modality interaction', '',
            'v(both) - v(image) - v(speech) + v(∅) (0 for a model additive in '
            'its modalities), mean per predicted class; shares: each '
            "modality's Shapley value over p - v(∅).", '',
            _md_table(tables['interaction'], columns['interaction']), '']
  return '\n'.join(parts)
