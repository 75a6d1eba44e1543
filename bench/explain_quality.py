"""Attribution quality: DnCShap against peers on the demo corpus's planted cues.

On the trained demo model (restored from `--workdir`; trained there first if
it holds no checkpoint) and the demo test split (450 examples), every method
ranks the same 2 * 2**depth leaf regions (DnCShap's hierarchy: image leaves
then speech leaves) for the predicted class, and we measure:

  pointing (image / speech): the top image leaf overlaps `image_cue_box`; the
    top speech leaf's time span overlaps `speech_cue_span` (what
    --mode=explain's summary.json reports as cue hit rates).
  energy (image / speech): the share of the positive attribution (each leaf's
    value spread evenly over its area) that lies inside the cue; printed next
    to the cue's own share of the area (what a flat map would score).
  deletion / insertion AUC: the target probability as the leaves are removed
    (deletion: most important first, lower is better) or added to an
    all-removed input (insertion, higher is better); area under the curve
    over 0 .. 2L leaves, x scaled to [0, 1]. A removed leaf takes the same
    `--fill` for every method (default: zeros, Algorithm 1's absence: black
    image, silent spectrogram), whatever baseline the method itself used.
  modality agreement: does the method's ordering of the two modality scores
    (DnCShap's own; a peer's sum of its leaf values per modality) agree with
    the counterfactual: which single-modality removal (same fill) lowers the
    target probability more.
  evaluations: model evaluations per example (a masked forward pass = 1; a
    gradient = its forward + backward = 2). Methods are compared at equal
    evaluations: a peer gets a DnCShap setting's budget.
  time: wall seconds per example on this machine (compilation excluded).

Methods (all on the same JAX model, the same leaf regions, the same baseline
as the DnCShap setting they are compared with):
  dncshap  exact / dnc (absent, present, random context), depths 2-4,
           baselines zeros / mean / blur / background (explain/run.py).
  occlusion  each leaf replaced by the baseline alone: v(all) - v(all - l);
           2L + 1 evaluations.
  shap-partition  shap.PartitionExplainer over the leaf players, clustered
           as our hierarchy, max_evals = the budget (Owen-value estimate).
  shap-kernel  shap.KernelExplainer over the leaf players, nsamples = the
           budget (l1_reg=False: every player gets a value).
           The two shap peers are slow (Python per example): they run on the
           first `--shap_examples` test examples (a fixed subset, stated in
           the table); everything else on all examples.
  ig       Integrated Gradients from the baseline, budget / 2 steps
           (midpoint rule), pixel attributions summed over each leaf; with a
           background, the steps are spread over its baselines.
  gradxinput  (x - baseline) * grad f(x), summed over each leaf (2 evals).
  random   a random ranking (0 evals).

  python bench/explain_quality.py --workdir=/tmp/demo_model \\
      --data_dir=/work/demo_tfds            # full run (tens of minutes)
  python bench/explain_quality.py --workdir=... --data_dir=... --quick
"""

import argparse
import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from bench import common  # pylint: disable=g-import-not-at-top
from explain import evaluation  # pylint: disable=g-import-not-at-top
from explain import peers  # pylint: disable=g-import-not-at-top
from explain import run as explain_run  # pylint: disable=g-import-not-at-top
from explain.dncshap import num_evaluations  # pylint: disable=g-import-not-at-top
from explain.dncshap import region_boxes  # pylint: disable=g-import-not-at-top

CHUNK = 30  # Examples per batched call (450 = 15 chunks).
_apply = jax.jit(lambda f, images, specs: f(images, specs))


# --------------------------------------------------------------------------
# Model, data, baselines.
# --------------------------------------------------------------------------


def load(args):
  """(config, fn, test examples, training examples)."""
  import input_pipeline  # pylint: disable=g-import-not-at-top
  from parallelnet import checkpointing  # pylint: disable=g-import-not-at-top
  config = common.load_config('demo')
  config.dataset.data_dir = args.data_dir
  config.explain.blur_sigma = args.blur_sigma
  config.explain.background_size = args.background_size
  if not os.path.isdir(os.path.join(args.workdir, 'checkpoints')):
    from parallelnet import train  # pylint: disable=g-import-not-at-top
    print(f'no checkpoint in {args.workdir}: training the demo model there')
    config.explain.after_train = False
    train.train_and_evaluate(config, args.workdir)
  model, variables, step = checkpointing.restore_for_inference(
      config, args.workdir, which='best')
  fn = explain_run.probability_fn(model, variables)
  test = input_pipeline.load_examples(config, 'test', args.num_examples)
  train = input_pipeline.load_examples(config, 'train', None)
  print(f'checkpoint step {step}; {len(test["id"])} test examples, '
        f'{len(train["id"])} training examples')
  return config, fn, test, train


def baselines(config, test, train):
  """{name: run.Baseline} for the four built-in options."""
  out = {}
  for name in ('zeros', 'mean', 'blur', 'background'):
    config.explain.baseline = name
    out[name] = explain_run.make_baseline(
        config, test['image'].shape[1:], test['spectrogram'].shape[1:],
        train=train)
  return out


# The library's peers and metrics (explain/peers.py, explain/evaluation.py).
baseline_arrays = explain_run.baseline_arrays
Masked = peers.Masked
_modality_sums = peers.modality_sums
_gradient_fn = peers.gradient_fn
auc = evaluation.auc


# --------------------------------------------------------------------------
# Methods: each returns (values (E, 2L), modality (E, 2), evals, seconds).
# --------------------------------------------------------------------------


def _timed_chunks(n, body, warm=True):
  """Runs body(start, stop) per chunk; returns results and seconds (the first
  chunk is run once before timing, for compilation)."""
  if warm:
    body(0, min(n, CHUNK))
  t0 = time.perf_counter()
  outs = [body(s, min(n, s + CHUNK)) for s in range(0, n, CHUNK)]
  return outs, time.perf_counter() - t0


def run_dncshap(fn, test, b, depth, mode, context, seed=0):
  key = jax.random.key(seed)

  def body(s, t):
    e = explain_run.explain_batch(
        fn, test['image'][s:t], test['spectrogram'][s:t], b, depth=depth,
        mode=mode, context=context, key=jax.random.fold_in(key, s),
        max_batch=4096)
    e = jax.block_until_ready(e)
    values = np.concatenate([np.asarray(e.image_regions.values),
                             np.asarray(e.speech_regions.values)], 1)
    return values, np.asarray(e.modality_scores), np.asarray(e.target)
  outs, sec = _timed_chunks(len(test['id']), body)
  values, modality, target = (np.concatenate(x) for x in zip(*outs))
  evals = b.num_baselines * num_evaluations(depth, mode)
  return values, modality, evals, sec, target


def run_occlusion(masked, test, b, target):
  n2 = 2 * masked.leaves

  def body(s, t):
    images, specs = test['image'][s:t], test['spectrogram'][s:t]
    bi, bs = baseline_arrays(b, images, specs)
    return peers.occlusion(masked, images, specs, bi, bs, target[s:t])
  outs, sec = _timed_chunks(len(test['id']), body)
  values = np.concatenate(outs)
  return values, _modality_sums(values), b.num_baselines * (n2 + 1), sec


def run_gradients(grad_fn, fn, test, b, target, budget):
  """Integrated Gradients with budget // 2 gradients spread over the
  baselines (budget = 2: gradient x input at the example itself)."""
  def body(s, t):
    images, specs = test['image'][s:t], test['spectrogram'][s:t]
    bi, bs = baseline_arrays(b, images, specs)
    return peers.gradients(grad_fn, fn, images, specs, bi, bs, target[s:t],
                           budget)[0]
  outs, sec = _timed_chunks(len(test['id']), body)
  values = np.concatenate(outs)
  used = 2 * peers.ig_alphas(budget, b.num_baselines)[1]
  return values, _modality_sums(values), used, sec


def run_shap(kind, masked, test, b, target, budget, num):
  """shap over the leaf players: the model sees 0/1 coalition rows, which
  our masked evaluation turns into inputs (absent = the baseline)."""
  explainer = peers.Shap(kind, masked, budget)

  def explain(i):
    images, specs = test['image'][i:i + 1], test['spectrogram'][i:i + 1]
    bi, bs = baseline_arrays(b, images, specs)
    return explainer(images, specs, bi, bs, target[i:i + 1])

  explain(0)  # Warm-up (compilation).
  explainer.calls = 0
  t0 = time.perf_counter()
  values = np.stack([explain(i) for i in range(num)])
  sec = time.perf_counter() - t0
  evals = b.num_baselines * explainer.calls / num
  return values, _modality_sums(values), evals, sec


# --------------------------------------------------------------------------
# Metrics.
# --------------------------------------------------------------------------


def Ground(config, test, depth):  # pylint: disable=invalid-name
  """evaluation.Ground of the test examples' planted cues (+ their labels)."""
  speech_shape = test['spectrogram'].shape[1:3]
  spans = explain_run.leaf_time_spans(
      region_boxes(speech_shape, depth), config.input.hop_length,
      config.input.sample_rate, test['waveform'].shape[1])
  g = evaluation.Ground(test['image'].shape[1:3], depth, spans,
                        test['waveform'].shape[1] / config.input.sample_rate,
                        test['image_cue_box'], test['speech_cue_span'])
  g.label = test['label']
  return g


def pointing_and_energy(ground, values):
  return evaluation.pointing_and_energy(ground, values, ground.label)


def curves(masked, test, fill, values, target, rng):
  """(deletion, insertion) curves (E, 2L + 1): target probability with the
  top-i leaves removed / with only the top-i kept (ties in random order)."""
  e, n2 = values.shape
  all_masks = evaluation.deletion_masks(values, rng)
  dels, ins = [], []
  for s in range(0, e, CHUNK):
    t = min(e, s + CHUNK)
    images, specs = test['image'][s:t], test['spectrogram'][s:t]
    bi, bs = baseline_arrays(fill, images, specs)
    masks = all_masks[s:t]
    v = masked(images, specs, bi, bs, masks, target[s:t])
    dels.append(v[:, :n2 + 1])
    ins.append(v[:, n2 + 1:])
  return np.concatenate(dels), np.concatenate(ins)


def counterfactual_drops(masked, test, fill, target):
  """(E, 2): v(all) - v(image removed), v(all) - v(speech removed)."""
  n = masked.leaves
  masks = np.ones((3, 2 * n), bool)
  masks[1, :n] = False
  masks[2, n:] = False
  out = []
  for s in range(0, len(test['id']), CHUNK):
    t = min(len(test['id']), s + CHUNK)
    images, specs = test['image'][s:t], test['spectrogram'][s:t]
    bi, bs = baseline_arrays(fill, images, specs)
    v = masked(images, specs, bi, bs,
               np.broadcast_to(masks, (t - s,) + masks.shape), target[s:t])
    out.append(v[:, :1] - v[:, 1:])
  return np.concatenate(out)


# --------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------


def _split(text):
  return [t for t in text.split(',') if t]


def cue_response(fn, config, test, target, fills, rng, num_other=4):
  """What the model responds to: the drop of the target probability when
  the planted cue alone is replaced by a fill, against the same-size box /
  span placed elsewhere (not overlapping the cue), per modality.

  Returns {fill: {image_cue_drop, image_other_drop, image_cue_beats_other,
  speech_...}}: mean drops, and the share of examples whose cue removal
  lowers the probability more than every other placement.
  """
  n = len(test['id'])
  h, w = test['image'].shape[1:3]
  frames = test['spectrogram'].shape[1]
  duration = test['waveform'].shape[1] / config.input.sample_rate
  boxes = test['image_cue_box'].astype(int)
  spans = np.clip(np.round(test['speech_cue_span'] / duration * frames)
                  .astype(int), 0, frames)
  # Placements: row 0 the cue, rows 1.. same-size elsewhere.
  img_masks = np.zeros((n, 1 + num_other, h, w), bool)
  sp_masks = np.zeros((n, 1 + num_other, frames), bool)
  for i in range(n):
    y0, x0, y1, x1 = boxes[i]
    img_masks[i, 0, y0:y1, x0:x1] = True
    t0, t1 = spans[i]
    sp_masks[i, 0, t0:t1] = True
    k, tries = 1, 0
    while k <= num_other and tries < 1000:
      tries += 1
      dy, dx = rng.integers(0, h - (y1 - y0) + 1), rng.integers(
          0, w - (x1 - x0) + 1)
      if dy < y1 and dy + (y1 - y0) > y0 and dx < x1 and dx + (x1 - x0) > x0:
        continue
      img_masks[i, k, dy:dy + y1 - y0, dx:dx + x1 - x0] = True
      k += 1
    k, tries = 1, 0
    while k <= num_other and tries < 1000:
      tries += 1
      dt = rng.integers(0, frames - (t1 - t0) + 1)
      if dt < t1 and dt + (t1 - t0) > t0:
        continue
      sp_masks[i, k, dt:dt + t1 - t0] = True
      k += 1
  out = {}
  m = 1 + num_other
  for name, fill in fills.items():
    drops_i, drops_s = [], []
    for s in range(0, n, CHUNK):
      t = min(n, s + CHUNK)
      images, specs = test['image'][s:t], test['spectrogram'][s:t]
      bi, bs = baseline_arrays(fill, images, specs)
      bi, bs = bi.mean(0), bs.mean(0)  # A background fill: its mean.
      xi = np.where(img_masks[s:t, ..., None], bi[:, None], images[:, None])
      xs = np.where(sp_masks[s:t, :, :, None, None], bs[:, None],
                    specs[:, None])
      rep_i = np.repeat(images[:, None], m, 1)
      rep_s = np.repeat(specs[:, None], m, 1)
      e = t - s
      full = np.asarray(_apply(fn, images, specs))[np.arange(e), target[s:t]]
      pi = np.asarray(_apply(fn, xi.reshape((-1,) + xi.shape[2:]),
                         rep_s.reshape((-1,) + rep_s.shape[2:])))
      ps = np.asarray(_apply(fn, rep_i.reshape((-1,) + rep_i.shape[2:]),
                         xs.reshape((-1,) + xs.shape[2:])))
      tt = np.repeat(target[s:t], m)
      drops_i.append(full[:, None] - pi[np.arange(e * m), tt].reshape(e, m))
      drops_s.append(full[:, None] - ps[np.arange(e * m), tt].reshape(e, m))
    di, ds = np.concatenate(drops_i), np.concatenate(drops_s)
    classes = list(config.dataset.classes)
    beats_i = di[:, 0] > di[:, 1:].max(1)
    beats_s = ds[:, 0] > ds[:, 1:].max(1)
    out[name] = dict(
        image_cue_no_effect=float((np.abs(di[:, 0]) < 0.01).mean()),
        speech_cue_no_effect=float((np.abs(ds[:, 0]) < 0.01).mean()),
        image_cue_beats_other_by_class={
            classes[c]: float(beats_i[target == c].mean())
            for c in np.unique(target)},
        speech_cue_beats_other_by_class={
            classes[c]: float(beats_s[target == c].mean())
            for c in np.unique(target)},
        image_cue_drop=float(di[:, 0].mean()),
        image_other_drop=float(di[:, 1:].mean()),
        image_cue_beats_other=float(beats_i.mean()),
        speech_cue_drop=float(ds[:, 0].mean()),
        speech_other_drop=float(ds[:, 1:].mean()),
        speech_cue_beats_other=float(beats_s.mean()))
    print(f'cue response, fill {name}: {out[name]}', flush=True)
  return out


def markdown_table(data):
  """The results of one run (its JSON) as a markdown table."""
  rows = data['rows']
  out = ['| method | depth | baseline | evaluations / example | pointing image '
         '/ speech | energy image / speech | deletion AUC (lower better) | '
         'insertion AUC | modality agreement | ms / example | examples |',
         '|---|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    ev = f"{r['evaluations']:.0f}"
    if r.get('budget') and abs(r['evaluations'] - r['budget']) > 0.5:
      ev += f" (budget {r['budget']})"
    out.append(
        f"| {r['method']} | {r['depth']} | {r['baseline']} | {ev} | "
        f"{100 * r['pointing_image']:.1f}% / {100 * r['pointing_speech']:.1f}%"
        f" | {r['energy_image']:.3f} / {r['energy_speech']:.3f} | "
        f"{r['deletion_auc']:.3f} | {r['insertion_auc']:.3f} | "
        f"{100 * r['modality_agreement']:.0f}% | "
        f"{1e3 * r['seconds_per_example']:.0f} | {r['examples']} |")
  for depth, c in sorted(data['chance'].items()):
    out.append(
        f"| chance (random leaf; cue's area share) | {depth} | | | "
        f"{100 * c['pointing_image']:.1f}% / {100 * c['pointing_speech']:.1f}%"
        f" | {c['energy_image']:.3f} / {c['energy_speech']:.3f} | | | | | |")
  return '\n'.join(out)


def main():
  if len(sys.argv) >= 3 and sys.argv[1] in ('--table', '--plot'):
    # --table RESULTS.json | --plot RESULTS.json PNG BASELINE: from a run.
    with open(sys.argv[2]) as f:
      data = json.load(f)
    if sys.argv[1] == '--table':
      print(markdown_table(data))
    else:
      plot(data['rows'], argparse.Namespace(
          depths='3', figure=sys.argv[3], figure_baseline=sys.argv[4],
          fill=data['fill']))
    return
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workdir', default='/tmp/parallelnet_demo')
  p.add_argument('--data_dir', default=None)
  p.add_argument('--num_examples', type=int, default=None,
                 help='test examples (default: all)')
  p.add_argument('--shap_examples', type=int, default=100,
                 help='the shap peers run on the first this many examples')
  p.add_argument('--depths', default='3', help='depths for the peers')
  p.add_argument('--dnc_depths', default='2,3,4',
                 help='depths of the DnCShap settings')
  p.add_argument('--baselines', default='zeros,mean,blur,background')
  p.add_argument('--deep_baselines', default='zeros,mean,blur',
                 help='baselines of the depth 2 and 4 DnCShap settings')
  p.add_argument('--peer_baselines', default='zeros,mean,blur,background',
                 help='baselines the cheap peers (occlusion, IG, grad x '
                 'input) are run with')
  p.add_argument('--settings', default='exact,absent,present,random',
                 help='DnCShap settings: exact and the dnc contexts')
  p.add_argument('--background_settings', default='exact,absent,present,random',
                 help='the DnCShap settings run with the background baseline')
  p.add_argument('--restrict', default='',
                 help='e.g. mean=present+exact,blur=exact: the DnCShap '
                 'settings run with those baselines (others: --settings)')
  p.add_argument('--cue_response', default='zeros,mean,blur,background',
                 help='fills of the cue-masking diagnostic (empty: skip)')
  p.add_argument('--deep_exact_baselines', default='zeros',
                 help='baselines of exact mode at depth 4 (684 evaluations)')
  p.add_argument('--ig_full_baselines', default='zeros',
                 help='baselines IG gets the exact-mode budget with')
  p.add_argument('--shap_baselines', default='zeros',
                 help='baselines the shap peers are run with')
  p.add_argument('--fill', default='zeros',
                 help='what a removed leaf takes in deletion / insertion and '
                 'the modality counterfactual (one for every method)')
  p.add_argument('--blur_sigma', type=float, default=4.0)
  p.add_argument('--background_size', type=int, default=8)
  p.add_argument('--deletion_examples', type=int, default=100,
                 help='deletion / insertion AUC on the first this many '
                 'examples (the shap subset: every method on the same ones)')
  p.add_argument('--out', default='/tmp/explain_quality.json')
  p.add_argument('--figure', default=None,
                 help='deletion-curve PNG (default: none)')
  p.add_argument('--figure_baseline', default='zeros')
  p.add_argument('--quick', action='store_true',
                 help='20 examples, 10 for shap: a smoke run')
  args = p.parse_args()
  if args.quick:
    args.num_examples, args.shap_examples = 20, 10
    args.deletion_examples = 10

  config, fn, test, train = load(args)
  num = len(test['id'])
  shap_num = min(args.shap_examples, num)
  bases = baselines(config, test, train)
  fill = bases[args.fill]
  image_shape = test['image'].shape[1:3]
  speech_shape = test['spectrogram'].shape[1:3]
  rng = np.random.default_rng(0)
  results = []
  target = None
  response = None
  cache = {}

  def record(name, depth, baseline, values, modality, evals, sec, n_used,
             budget=None):
    if depth not in cache:
      masked = Masked(fn, image_shape, speech_shape, depth)
      cache[depth] = dict(masked=masked, ground=Ground(config, test, depth),
                          drops=counterfactual_drops(masked, test, fill,
                                                     target))
    c = cache[depth]
    sub = {k: v[:n_used] for k, v in test.items()}
    ground = c['ground'] if n_used == num else Ground(config, sub, depth)
    nd = min(n_used, args.deletion_examples)
    first = {k: v[:nd] for k, v in test.items()}
    dele, ins = curves(c['masked'], first, fill, values[:nd], target[:nd],
                       rng)
    drops = c['drops'][:n_used]
    head = pointing_and_energy(
        Ground(config, {k: v[:shap_num] for k, v in test.items()}, depth),
        values[:shap_num])
    agree = (modality[:, 0] > modality[:, 1]) == (drops[:, 0] > drops[:, 1])
    row = dict(method=name, depth=depth, baseline=baseline, budget=budget,
               evaluations=float(evals), seconds_per_example=sec / n_used,
               examples=n_used, deletion_examples=nd,
               pointing_image_head=head['pointing_image'],
               pointing_speech_head=head['pointing_speech'],
               deletion_auc=float(auc(dele).mean()),
               insertion_auc=float(auc(ins).mean()),
               modality_agreement=float(agree.mean()),
               deletion_curve=dele.mean(0).tolist(),
               insertion_curve=ins.mean(0).tolist(),
               **pointing_and_energy(ground, values))
    results.append(row)
    print(f"{name:>28s} d{depth} {baseline:>10s} evals {evals:7.1f} "
          f"point {row['pointing_image']:.3f}/{row['pointing_speech']:.3f} "
          f"energy {row['energy_image']:.3f}/{row['energy_speech']:.3f} "
          f"del {row['deletion_auc']:.4f} ins {row['insertion_auc']:.4f} "
          f"agree {row['modality_agreement']:.3f} "
          f"{row['seconds_per_example'] * 1e3:.1f} ms/ex n={n_used}",
          flush=True)
    with open(args.out, 'w') as f:
      json.dump(dict(command=common.command(), machine=common.machine(),
                     fill=args.fill, blur_sigma=args.blur_sigma,
                     background_size=args.background_size, rows=results,
                     chance=chance, cue_response=response), f, indent=1)

  # The target class (predicted at the unmasked input) is the same for every
  # method and baseline: fix it once.
  probs = np.concatenate([np.asarray(_apply(fn, test['image'][s:s + CHUNK],
                                        test['spectrogram'][s:s + CHUNK]))
                          for s in range(0, num, CHUNK)])
  target = np.argmax(probs, 1).astype(np.int32)
  chance = {}
  for depth in sorted({int(d) for d in args.dnc_depths.split(',')}
                      | {int(d) for d in args.depths.split(',')}):
    g = Ground(config, test, depth)
    chance[depth] = dict(
        pointing_image=float(g.image_hit[g.has_image].mean()),
        pointing_speech=float(g.speech_hit[g.has_speech].mean()),
        energy_image=float(g.image_cue_share[g.has_image].mean()),
        energy_speech=float(g.speech_cue_share[g.has_speech].mean()))
  print('chance (a random leaf / the cue\'s area share):', chance)

  response = cue_response(fn, config, test, target,
                          {k: bases[k] for k in _split(args.cue_response)},
                          np.random.default_rng(2))
  restrict = {k: v.split('+') for k, v in
              (item.split('=') for item in _split(args.restrict))}
  peer_depths = [int(d) for d in args.depths.split(',')]
  dnc_depths = [int(d) for d in args.dnc_depths.split(',')]

  def dnc_rows(depth):
    names = _split(args.baselines if depth in peer_depths
                   else args.deep_baselines)
    for bname in names:
      b = bases[bname]
      for mode, context in (('exact', 'absent'), ('dnc', 'absent'),
                            ('dnc', 'present'), ('dnc', 'random')):
        setting = 'exact' if mode == 'exact' else context
        if setting not in _split(args.settings) or (
            bname == 'background' and setting not in _split(
                args.background_settings)) or (
                    bname in restrict and setting not in restrict[bname]):
          continue
        if depth > 3 and mode == 'exact' and bname not in (
            _split(args.deep_exact_baselines)):
          continue
        values, modality, evals, sec, tgt = run_dncshap(
            fn, test, b, depth, mode, context)
        assert np.array_equal(tgt, target)
        label = 'dncshap exact' if mode == 'exact' else f'dncshap dnc {context}'
        record(label, depth, bname, values, modality, evals, sec, num)

  def peer_rows(depth):
    budgets = sorted({num_evaluations(depth, 'dnc'),
                      num_evaluations(depth, 'exact')})
    r = np.random.default_rng(1)
    values = r.random((num, 2 * 2**depth))
    record('random', depth, '-', values, _modality_sums(values - 0.5), 0, 0.0,
           num)
    masked = Masked(fn, image_shape, speech_shape, depth)
    grad_fn = _gradient_fn(fn, image_shape, speech_shape, depth)
    for bname in _split(args.peer_baselines):
      b = bases[bname]
      values, modality, evals, sec = run_occlusion(masked, test, b, target)
      record('occlusion', depth, bname, values, modality, evals, sec, num)
      values, modality, evals, sec = run_gradients(grad_fn, fn, test, b,
                                                   target, 2)
      record('gradxinput', depth, bname, values, modality, evals, sec, num)
      for budget in budgets:
        if budget > num_evaluations(depth, 'dnc') and bname not in (
            _split(args.ig_full_baselines)):
          continue
        values, modality, evals, sec = run_gradients(
            grad_fn, fn, test, b, target, budget * b.num_baselines)
        record('ig', depth, bname, values, modality, evals, sec, num, budget)
    for bname in _split(args.shap_baselines):
      b = bases[bname]
      for budget in budgets:
        for kind in ('partition', 'kernel'):
          values, modality, evals, sec = run_shap(kind, masked, test, b,
                                                  target, budget, shap_num)
          record(f'shap-{kind}', depth, bname, values, modality, evals, sec,
                 shap_num, budget)

  for depth in peer_depths:  # The main comparison first.
    if depth in dnc_depths:
      dnc_rows(depth)
    peer_rows(depth)
  for depth in dnc_depths:
    if depth not in peer_depths:
      dnc_rows(depth)
  print(f'wrote {args.out}')
  if args.figure:
    plot(results, args)


def plot(results, args):
  """Mean deletion curves of every method at the first peer depth, for
  args.figure_baseline (and the random ranking), one panel."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  depth = int(args.depths.split(',')[0])
  rows = [r for r in results if r['depth'] == depth
          and r['baseline'] in (args.figure_baseline, '-')]
  fig, ax = plt.subplots(figsize=(7, 4.2), dpi=90)
  colours = plt.get_cmap('tab20').colors
  for i, r in enumerate(rows):
    curve = np.asarray(r['deletion_curve'])
    style = '-' if r['method'].startswith('dncshap') else '--'
    label = (f"{r['method']} ({r['evaluations']:.0f} evals, "
             f"AUC {r['deletion_auc']:.3f})")
    ax.plot(np.linspace(0, 1, len(curve)), curve, style, label=label, lw=1.2,
            color=colours[i % len(colours)])
  n = rows[0]['deletion_examples'] if rows else 0
  ax.set_xlabel('fraction of leaf regions removed (most important first)')
  ax.set_ylabel('probability of the explained class')
  ax.set_title(f'Deletion curves: demo test split (first {n}), depth {depth}, '
               f'baseline {args.figure_baseline}, fill {args.fill}',
               fontsize=9)
  ax.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  fig.savefig(args.figure)
  plt.close(fig)
  print(f'wrote {args.figure}')


if __name__ == '__main__':
  main()
