"""Files on disk -> TFDS -> tf.data -> global jax.Arrays (see DESIGN.md).

The public functions live in pipeline.py and are imported lazily, so that
the light modules (audio, image, manifest, synthetic) load without
TensorFlow.
"""

from input_pipeline.manifest import fixed_sources

_PUBLIC = ('get_builder', 'split_names', 'train_batches', 'eval_batches',
           'load_examples', 'preprocess_pair', 'num_examples',
           'steps_per_epoch', 'process_split', 'train_dataset',
           'eval_dataset', 'epoch_seed')

__all__ = _PUBLIC + ('fixed_sources',)


def __getattr__(name):
  if name in _PUBLIC:
    from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
    return getattr(pipeline, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
