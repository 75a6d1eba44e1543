r"""Dataset construction (paper §3.1; PAPER.md, "Building the dataset"):
text + image -> speech + image.

From a B-T4SA-style source folder (`source.csv` with `id,text,image`, an
optional `label` and any other columns, plus the images), builds a dataset
folder in our manifest format (manifest.py) that the `iitr_sier` builder
reads unchanged (`b_t4sa` with `label_from='source'` and sentiment classes:
Table 3's setting):

  speech = TTS(text)                      (espeak-ng, or any command)
  p_s = SER teacher(speech), p_i = IER teacher(image)
  label = label_pair(p_i, p_s)            (the more confident teacher's class)

The command line is parallelnet/construct.py (`python -m
parallelnet.construct`): it may load a training workdir as a teacher
(parallelnet.teachers), which this library never imports (DESIGN.md).

Output folder: manifest.csv (id,image,audio,label,text + the source's other
columns; a source `label` becomes `source_label` when the teachers label),
images/ and audio/ (16-bit mono WAV) of the kept rows, decisions.csv (one
row per source row: id, decision, label, image_probs, speech_probs, reason),
stats.json (counts per class, per decision and per labelling modality) and
stats.png (like the paper's Fig. 1).

A run (run.py). Rows are cut into chunks of `batch_size` in source order.
Worker processes synthesise and decode the rows of a chunk (workers.py); the
main process runs both teachers on the chunk as one batch and appends the
chunk's probabilities to a journal (`OUT/.construct/chunks.jsonl`). Chunks
are journaled strictly in order and depend only on the source, so the output
does not depend on the number of workers. An interrupted run resumes from the
journal: chunks whose source rows are unchanged (sources.py's fingerprints)
are not redone. Every file is written under a temporary name and renamed
when complete; manifest.csv is written last and the journal removed.

Teachers (teachers.py). Anything with `modality` ('speech' | 'image'),
`classes` (its class names in output order), `input_spec` (a picklable dict
telling the workers how to decode a file for it: {'kind': 'spectrogram',
sample_rate, n_fft, hop_length, n_mels, num_frames, duration_s}, {'kind':
'image', image_size, image_scaling} or {'kind': 'path'}), `description` (a
string recorded in stats.json) and `predict(inputs) -> (n, len(classes))`
probabilities (the stacked decoded arrays, or the list of file paths for
kind 'path'): a training workdir (parallelnet/teachers.py), or any
`module:function` taking a list of file paths (`CallableTeacher`).

Class map (labels.py). A teacher class with a target's name maps to it,
others through `class_map` (default excitement->happy, disgust->hate).
The paper's rule (class_merge='max'): each teacher's confidence is the
maximum over its OWN classes and it names the target its argmax class maps
to; a pair whose more confident teacher names a class that maps to no
target (fear, neutral, ...) is dropped as `unmapped`. class_merge='sum'
instead sums the probabilities of classes mapped onto one target before
taking the maximum (every class must then map). decisions.csv records each
teacher's own probabilities, in the order stats.json's settings list
(`ser_classes`, `ier_classes`).
"""

from input_pipeline.construct.labels import CLASS_MERGES
from input_pipeline.construct.labels import class_matrix
from input_pipeline.construct.labels import class_targets
from input_pipeline.construct.labels import ClassMapping
from input_pipeline.construct.labels import combine
from input_pipeline.construct.labels import DECISIONS
from input_pipeline.construct.labels import DEFAULT_CLASS_MAP
from input_pipeline.construct.labels import label_pair
from input_pipeline.construct.labels import parse_class_map
from input_pipeline.construct.run import construct_dataset
from input_pipeline.construct.run import STATE_DIR
from input_pipeline.construct.sources import ConstructError
from input_pipeline.construct.sources import read_source
from input_pipeline.construct.stats import plot_stats
from input_pipeline.construct.teachers import CallableTeacher
from input_pipeline.construct.teachers import is_callable_spec
from input_pipeline.construct.teachers import load_callable_teacher
from input_pipeline.construct.tts import CommandTTS
from input_pipeline.construct.tts import EspeakTTS
from input_pipeline.construct.tts import TTSError
from parallelnet.core.classes import EMOTIONS
# The id -> file name rule of the constructed folder (tests check it).
from parallelnet.core.paths import safe_name as _safe_name
