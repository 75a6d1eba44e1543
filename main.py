r"""ParallelNet-JAX entry point.

  python main.py --config=configs/parallelnet.py --workdir=/tmp/pn --mode=summary
  python main.py --config=configs/demo.py --workdir=/tmp/demo
  python main.py --config=configs/parallelnet.py --workdir=/tmp/pn \
      --config.dataset.manual_dir=/data/iitr_sier --config.train.batch_size=128

--config also takes a training workdir's config.json. eval, explain and
predict on a trained workdir take its model, input and dataset settings from
<workdir>/config.json whatever --config says; --config.* overrides still
apply on top (one that contradicts the trained model is an error).

Each mode calls one library function, so tests and notebooks can call the same.
Mistakes in flags, configs and input files end in one line on stderr and exit
code 1; --verbose (or PARALLELNET_VERBOSE=1) adds the traceback.
"""

import os
import sys
import time
import traceback


def _env_verbose():
  return os.environ.get('PARALLELNET_VERBOSE', '') not in ('', '0')


def _full_logs(argv):
  """Whether the user asked for the libraries' logs (--verbosity, --verbose
  or PARALLELNET_VERBOSE=1); otherwise progress.quiet_logs applies."""
  return (_env_verbose() or
          any(a.split('=')[0] in ('--verbosity', '-v', '--verbose')
              for a in argv[1:]))


if not _full_logs(sys.argv):
  # TensorFlow's C++ log lines (its data pipeline only feeds JAX).
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from configs import parallelnet as default_config
from parallelnet.core import cpu_flags
from parallelnet.core import paths
from parallelnet.core import progress
from parallelnet.core.errors import UserError

# Before JAX starts its backend (XLA reads XLA_FLAGS then) and before any
# gs:// path is touched (epath caches its choice of client).
cpu_flags.apply()
paths.use_fsspec_for_gcs()


class _ConfigParser(config_flags.config_flags.ConfigFileFlagParser):
  """config_flags' parser of get_config() modules, plus .json files (a
  workdir's config.json, which training writes)."""

  def parse(self, path):
    if not paths.split_spec(path)[0].endswith('.json'):
      return super().parse(path)
    try:
      config = default_config.config_from_json(path)
    except UserError as e:  # Raised on first use, as config_flags does.
      config = config_flags.config_flags._ErrorConfig(OSError(str(e)))  # pylint: disable=protected-access
    if self._lock_config:
      config_flags.config_flags._LockConfig(config)  # pylint: disable=protected-access
    return config


_CONFIG = flags.DEFINE_flag(config_flags.config_flags._ConfigFlag(  # pylint: disable=protected-access
    parser=_ConfigParser(name='config', lock_config=True),
    serializer=flags.ArgumentSerializer(), name='config', default=None,
    help_string='Training configuration: a get_config() module '
    '(configs/parallelnet.py[:variants]) or a workdir\'s config.json.'))
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, metrics and explanations.')
_MODE = flags.DEFINE_enum(
    'mode', 'train',
    ['train', 'eval', 'cv', 'explain', 'explain_eval', 'summary', 'study',
     'predict', 'report', 'robustness'],
    'train: train, evaluate on the test split (and explain if '
    'config.explain.after_train); eval: evaluate the best checkpoint; cv: '
    'k-fold cross-validation; explain: DnCShap for test examples or for '
    '--image/--audio; summary: parameter counts per branch; study: train '
    'and evaluate each row of config.study.rows (Table 2/3, N2 sweep) in '
    '<workdir>/<row>/, then study.csv, study.md, study.png; predict: '
    'class probabilities of the best checkpoint for the test split or '
    'config.predict.manual_dir in <workdir>/predictions.csv; report: '
    '<workdir>/report/index.html from what the workdir holds (train, explain '
    'and study also write it at their end); robustness: '
    'test metrics of the best checkpoint under config.robustness.conditions '
    '(missing modality, noise, occlusion, blur) in <workdir>/robustness.csv '
    'and robustness.png; explain_eval: sanity checks, faithfulness, '
    'localisation and modality interaction of DnCShap and its peers in '
    '<workdir>/explain_eval/.')
_IMAGE = flags.DEFINE_string(
    'image', None, 'Explain this image (with --audio; alone: speech missing).')
_AUDIO = flags.DEFINE_string(
    'audio', None, 'Explain this audio (with --image; alone: image missing).')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None,
    'host:port of process 0 for multi-process runs (else from the environment).')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Number of processes in a multi-process run.')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'This process\'s index in a multi-process run.')

_VERBOSE = flags.DEFINE_bool(
    'verbose', False, 'Show the traceback of errors that are the user\'s to '
    'fix (also PARALLELNET_VERBOSE=1).')

flags.mark_flags_as_required(['config', 'workdir'])
# Modes that read a trained workdir (parallelnet.checkpointing.WORKDIR_MODES,
# spelt here so that flag parsing imports no JAX).
WORKDIR_MODES = ('eval', 'explain', 'predict', 'robustness', 'report')


def main(argv):
  if len(argv) > 1:
    raise UserError(f'unexpected arguments {" ".join(argv[1:])!r}: flags take '
                    'the form --name=value (e.g. --mode=eval).')
  started = time.time()
  paths.check_workdir_url(_WORKDIR.value)
  if _MODE.value == 'report':  # Reads files only: no TensorFlow needed.
    from explain import report  # pylint: disable=g-import-not-at-top
    print(f'wrote {report.write_report(_WORKDIR.value)}')
    return
  # TF serves only the input pipeline: keep it off the accelerators JAX uses.
  quiet = not _full_logs(sys.argv)
  tf = progress.import_tensorflow_quietly(quiet=quiet)
  tf.config.set_visible_devices([], 'GPU')
  if quiet:
    progress.quiet_logs()

  config, workdir, mode = _CONFIG.value, _WORKDIR.value, _MODE.value
  if mode in WORKDIR_MODES:
    from parallelnet import checkpointing  # pylint: disable=g-import-not-at-top
    config = checkpointing.config_for_workdir(
        config, workdir, flags.FLAGS['config'].override_values)
  if (_IMAGE.value or _AUDIO.value) and mode != 'explain':
    raise UserError(f'--image/--audio are read by --mode=explain only, not '
                    f'--mode={mode}; to score files with --mode=predict, list '
                    f'them in a manifest folder given as '
                    f'--config.predict.manual_dir.')
  if mode == 'summary':
    from parallelnet import summary  # pylint: disable=g-import-not-at-top
    print(summary.summarize(config))
    return

  from parallelnet import mesh  # pylint: disable=g-import-not-at-top
  from parallelnet import train  # pylint: disable=g-import-not-at-top
  if mesh.maybe_initialize_distributed(
      _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value):
    # Process 0 builds the dataset and writes checkpoints for all.
    mesh.check_shared_storage({'workdir': workdir,
                               'data_dir': config.dataset.data_dir})
  if mode in ('train', 'cv', 'study'):
    from parallelnet.models import pretrained  # pylint: disable=g-import-not-at-top
    pretrained.check_files(config)
    random_trunks = pretrained.random_trunks_warning(config)
    if random_trunks:
      logging.warning(random_trunks)

  if mode == 'train':
    metrics = train.train_and_evaluate(config, workdir)
    logging.vlog(1, 'Test metrics: %s', metrics)
    print(f"test_accuracy={metrics['accuracy']:.4f}")
    if config.explain.after_train:
      from explain import run as explain_run  # pylint: disable=g-import-not-at-top
      explain_run.explain_dataset(config, workdir)
  elif mode == 'eval':
    metrics = train.evaluate(config, workdir)
    print(f"test_accuracy={metrics['accuracy']:.4f}")
  elif mode == 'cv':
    result = train.cross_validate(config, workdir)
    print(f"cv ({result['num_folds']} folds): " + ', '.join(
        f"{m} {result[m]['mean']:.4f} ± {result[m]['std']:.4f}"
        for m in train.METRIC_KEYS))
  elif mode == 'study':
    from parallelnet import study  # pylint: disable=g-import-not-at-top
    results = study.run_study(
        config, workdir, config_file=flags.FLAGS['config'].config_filename,
        overrides=flags.FLAGS['config'].override_values)
    print(study.markdown_table(results, config.study.cv), end='')
  elif mode == 'explain':
    from explain import run as explain_run  # pylint: disable=g-import-not-at-top
    # One of the two alone: a pair lacking the other modality.
    if _IMAGE.value or _AUDIO.value:
      explain_run.explain_files(config, workdir, _IMAGE.value, _AUDIO.value)
    else:
      explain_run.explain_dataset(config, workdir)
  elif mode == 'explain_eval':
    from explain import evaluate_run  # pylint: disable=g-import-not-at-top
    evaluate_run.evaluate(config, workdir)
  elif mode == 'predict':
    from parallelnet import predict  # pylint: disable=g-import-not-at-top
    out = predict.predict(config, workdir)
    if out['accuracy'] is not None:
      print(f"accuracy={out['accuracy']:.4f}")
  elif mode == 'robustness':
    from parallelnet import robustness  # pylint: disable=g-import-not-at-top
    for row in robustness.run_robustness(config, workdir):
      print(f"{row['condition']:<20} accuracy={row['accuracy']:.4f} "
            f"macro_f1={row['macro_f1']:.4f}")

  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    if mode in ('train', 'explain', 'study'):
      _write_report(workdir, mode, started,
                    config if mode == 'train' else None)
    print(written_summary(workdir, started))


def _write_report(workdir, mode, started, config=None):
  """Writes <workdir>/report/index.html, recording this run in runs.jsonl
  (with the split sizes when `config` is given). Returns the page's path."""
  from explain import report  # pylint: disable=g-import-not-at-top
  config_flag = flags.FLAGS['config']
  path, colon, arg = paths.split_spec(config_flag.config_filename)
  run = dict(mode=mode, config_file=paths.abspath(path) + colon + arg,
             overrides={k: v for k, v in (config_flag.override_values
                                          or {}).items()},
             started=started, seconds=time.time() - started)
  if config is not None:
    import input_pipeline  # pylint: disable=g-import-not-at-top
    from parallelnet.models import scaling  # pylint: disable=g-import-not-at-top
    resolved = scaling.resolve_config(config)
    run['splits'] = {}
    for split in ('train', 'validation', 'test'):
      try:
        run['splits'][split] = int(input_pipeline.num_examples(resolved, split))
      except (ValueError, KeyError, UserError):  # No such split (val = test).
        pass
  return report.write_report(workdir, run=run)


def written_summary(workdir, since):
  """One line naming what this run wrote (or rewrote) in `workdir`."""
  entries = []
  if paths.isdir(workdir):
    counts = {}  # Top-level name: files written since `since` (None: a file).
    for rel, mtime in paths.files_with_mtimes(workdir):
      # Object stores keep whole seconds: a file of this run may read as
      # up to 1 s older than `since`.
      if mtime >= since - (1 if paths.is_url(workdir) else 0):
        top, sep, _ = rel.replace(os.sep, '/').partition('/')
        counts[top] = (counts.get(top) or 0) + 1 if sep else None
    for name in sorted(counts):
      n = counts[name]
      entries.append(name if n is None else
                     f'{name}/ ({n} file{"s" if n > 1 else ""})')
  if not entries:
    return f'Nothing written in {workdir}.'
  return f'Wrote in {workdir}: ' + ', '.join(entries)


# ------------------------------------------------------------- user errors --

_HELP_FLAGS = ('-h', '-?', '--help', '--helpshort', '--helpfull', '--helpxml')


def _verbose(argv=()):
  if _env_verbose():
    return True
  if flags.FLAGS.is_parsed():
    return flags.FLAGS.verbose
  return '--verbose' in argv


def _fail(message, argv=()):
  """Prints a user error on stderr (traceback only if verbose); exit 1."""
  if _verbose(argv):
    traceback.print_exc()
  else:
    message += '\n(--verbose or PARALLELNET_VERBOSE=1 shows the traceback.)'
  print(f'error: {message}', file=sys.stderr)
  sys.exit(1)


def _innermost_text(e):
  """The message of an exception that wraps others in its args (ml-collections
  raises AttributeError(KeyError("'x'\\nDid you mean ...")))."""
  while e.args and isinstance(e.args[0], BaseException):
    e = e.args[0]
  return str(e.args[0]) if e.args else str(e)


def _parse_flags(argv):
  """absl's flag parsing, with config-file and override mistakes as user
  errors and --help exiting 0."""
  try:
    args = app.parse_flags_with_usage(argv)
  except SystemExit as e:
    if e.code == 1 and any(a.split('=')[0] in _HELP_FLAGS for a in argv[1:]):
      sys.exit(0)
    raise
  except (AttributeError, KeyError) as e:
    # An unknown field in a --config.* override (ml-collections raises
    # AttributeError(KeyError("'field'\\nDid you mean ..."))). Anything else
    # (a bug in a config file) keeps its traceback.
    lines = _innermost_text(e).split('\n')
    key = lines[0].strip('\'"')
    culprits = [a for a in argv[1:] if a.startswith('--config.')
                and key in a.split('=')[0].split('.')]
    if not culprits:
      raise
    lines[0] = f'no config field {key!r}.'
    _fail(' '.join(culprits) + ': ' + '\n'.join(lines), argv)
  try:  # ml-collections defers a config file's load error to its first use.
    flags.FLAGS['config'].value.keys()
  except OSError as e:
    path = flags.FLAGS['config'].config_filename
    file = paths.split_spec(path)[0]
    reason = ('no such file' if not paths.is_url(file) and
              not os.path.exists(file)
              else str(e).strip().split('\n')[-1].strip())
    _fail(f'--config={path}: cannot load the config file ({reason}).', argv)
  return args


def run():
  """app.run(main) where user errors print one line instead of a traceback."""
  try:
    app.run(main, flags_parser=_parse_flags)
  except UserError as e:
    _fail(str(e), sys.argv)


if __name__ == '__main__':
  run()
