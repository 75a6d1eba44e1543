r"""The dataset-construction command line (paper §3.1; PAPER.md, "Building
the dataset"):

  python -m parallelnet.construct --source=SRC --out=OUT \\
      --ser_teacher=SER_WORKDIR --ier_teacher=IER_WORKDIR [--tts=espeak-ng |
      --tts_cmd='mytts --out {out} --text-file {text_file}'] [--threshold=0.5]
      [--require_agreement] [--class_map=excitement:happy,disgust:hate]
      [--class_merge=max|sum]
      [--label_from=teachers|source] [--skip_bad] [--workers=2]

The library (input_pipeline.construct) takes teacher objects; this entry
point turns flag values into them, loading a training workdir through
parallelnet.teachers, which is why it lives above the data package.
"""

import os
import sys
import types

from absl import app
from absl import flags

from input_pipeline.construct import CLASS_MERGES
from input_pipeline.construct import CommandTTS
from input_pipeline.construct import construct_dataset
from input_pipeline.construct import DEFAULT_CLASS_MAP
from input_pipeline.construct import EspeakTTS
from input_pipeline.construct import is_callable_spec
from input_pipeline.construct import load_callable_teacher
from parallelnet import teachers
from parallelnet.core.classes import EMOTIONS
from parallelnet.core.errors import UserError


def _flags():
  f = types.SimpleNamespace()
  f.source = flags.DEFINE_string('source', None, 'Folder with source.csv '
                                 '(id,text,image[,label,...]) and the images.')
  f.out = flags.DEFINE_string('out', None, 'Output dataset folder (new, empty, '
                              'or an interrupted run to resume).')
  f.ser_teacher = flags.DEFINE_string(
      'ser_teacher', None, 'Speech teacher: a speech-only training workdir '
      '(e.g. configs/parallelnet.py:ser_only) or module:function.')
  f.ier_teacher = flags.DEFINE_string(
      'ier_teacher', None, 'Image teacher: an image-only training workdir '
      '(e.g. configs/parallelnet.py:ier_only) or module:function.')
  f.teacher_checkpoint = flags.DEFINE_enum(
      'teacher_checkpoint', 'best', ['best', 'latest'],
      'Which checkpoint of a workdir teacher to use.')
  f.tts = flags.DEFINE_enum('tts', 'espeak-ng', ['espeak-ng'],
                            'Built-in TTS engine (ignored with --tts_cmd).')
  f.tts_cmd = flags.DEFINE_string(
      'tts_cmd', None, "Any TTS engine as a command template, e.g. 'mytts "
      "--out {out} --text-file {text_file}' ({text} also works).")
  f.voice = flags.DEFINE_string('voice', 'en-us', 'espeak-ng voice.')
  f.rate = flags.DEFINE_integer('rate', 175, 'espeak-ng speed, words/minute.')
  f.sample_rate = flags.DEFINE_integer(
      'sample_rate', 16000, 'Sample rate of the written WAVs (0 with --tts_cmd: '
      'keep the engine\'s).')
  f.threshold = flags.DEFINE_float(
      'threshold', 0.5, 'Discard a pair when both teachers\' maxima are below.')
  f.require_agreement = flags.DEFINE_bool(
      'require_agreement', False, 'Also discard pairs whose teachers\' '
      'argmaxes differ.')
  f.class_map = flags.DEFINE_string(
      'class_map', DEFAULT_CLASS_MAP, 'teacher_class:target_class pairs.')
  f.class_merge = flags.DEFINE_enum(
      'class_merge', 'max', list(CLASS_MERGES),
      'max: the paper\'s rule (a teacher\'s maximum over its own classes, '
      'then relabelled; a class mapping to no target drops the pair as '
      'unmapped); sum: probabilities of classes mapped together are summed.')
  f.classes = flags.DEFINE_list('classes', list(EMOTIONS),
                                'Target classes, in label-index order.')
  f.label_from = flags.DEFINE_enum(
      'label_from', 'teachers', ['teachers', 'source'],
      'teachers: the labelling rule; source: the source\'s label column '
      '(e.g. B-T4SA sentiments, Table 3).')
  f.skip_bad = flags.DEFINE_bool(
      'skip_bad', False, 'Record bad rows as bad_input instead of failing.')
  f.workers = flags.DEFINE_integer(
      'workers', min(os.cpu_count() or 1, 8), 'TTS/decoding processes.')
  f.batch_size = flags.DEFINE_integer(
      'batch_size', 32, 'Rows per chunk: teacher batch and resume unit.')
  return f


def _load_teacher(spec, modality, which, batch_size, classes):
  """A teacher from a flag value: module:function, or a training workdir."""
  if spec is None:
    return None
  if is_callable_spec(spec):
    return load_callable_teacher(spec, modality, classes)
  return teachers.WorkdirTeacher(spec, modality, which=which,
                                 batch_size=batch_size)


def main(argv, f):
  if len(argv) > 1:
    raise UserError(f'Unexpected arguments: {argv[1:]}')
  if not f.source.value or not f.out.value:
    raise UserError('--source and --out are required.')
  if f.tts_cmd.value:
    tts = CommandTTS(f.tts_cmd.value, sample_rate=f.sample_rate.value)
  else:
    tts = EspeakTTS(voice=f.voice.value, rate=f.rate.value,
                    sample_rate=f.sample_rate.value or 16000)
  ser = _load_teacher(f.ser_teacher.value, 'speech', f.teacher_checkpoint.value,
                      f.batch_size.value, f.classes.value)
  ier = _load_teacher(f.ier_teacher.value, 'image', f.teacher_checkpoint.value,
                      f.batch_size.value, f.classes.value)
  stats = construct_dataset(
      f.source.value, f.out.value, tts=tts, ser_teacher=ser, ier_teacher=ier,
      classes=f.classes.value, class_map=f.class_map.value,
      class_merge=f.class_merge.value,
      threshold=f.threshold.value, require_agreement=f.require_agreement.value,
      label_from=f.label_from.value, skip_bad=f.skip_bad.value,
      workers=f.workers.value, batch_size=f.batch_size.value)
  t = stats['timing']
  print(f'{stats["kept"]} of {stats["rows"]} rows kept in {f.out.value} '
        f'({stats["decisions"]}); {stats["rows"] / t["wall_s"]:.2f} rows/s')


def run():
  """`python -m parallelnet.construct`: user errors as one line, exit 1."""
  f = _flags()
  try:
    app.run(lambda argv: main(argv, f))
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt:
    print('interrupted: run the same command again to resume (finished '
          'chunks are kept).', file=sys.stderr)
    sys.exit(130)


if __name__ == '__main__':
  run()
