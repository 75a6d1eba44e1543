r"""What the model reads for a missing modality: zeros vs the mean input.

Test accuracy of trained demo workdirs with the image or the speech replaced
by zeros in model-input space (parallelnet.modality.missing_inputs) or by
the training split's mean input (explain's 'mean' baseline). DESIGN.md,
"Missing modalities", records the numbers.

  python bench/missing_input.py /tmp/md_wd /tmp/md_wd0
"""

import sys

import jax
import numpy as np
import optax

from configs import demo
from explain import run as explain_run
import input_pipeline
from parallelnet import checkpointing
from parallelnet import mesh as mesh_lib
from parallelnet import metrics as metrics_lib
from parallelnet import modality
from parallelnet import robustness
from parallelnet import train
from parallelnet.models import scaling as model_scaling


def main(workdirs):
  config = model_scaling.resolve_config(demo.get_config())
  ex = input_pipeline.load_examples(config, 'test')
  mean_image, mean_speech = explain_run._mean_input(config, None)  # pylint: disable=protected-access
  choices = {'zeros': modality.missing_inputs(config),
             'mean': dict(image=mean_image.astype(np.float32),
                          spectrogram=mean_speech.astype(np.float32))}
  mesh = mesh_lib.make_mesh()
  steps = train.Steps(config, mesh)
  batch = int(config.train.eval_batch_size)
  for wd in workdirs:
    model, variables, _ = checkpointing.restore_for_inference(config, wd)
    state = jax.device_put(train.TrainState.create(
        apply_fn=model.apply, params=variables['params'],
        tx=optax.identity(), batch_stats=variables['batch_stats']),
                           mesh_lib.replicated(mesh))
    for name, missing in choices.items():
      out = []
      for which in modality.MISSING:
        images, specs = modality.replace_modality(
            ex['image'], ex['spectrogram'], which, missing)
        _, cm = train.evaluate_batches(steps, state, robustness._batches(  # pylint: disable=protected-access
            mesh, images, specs, ex['label'], batch))
        out.append(f'no_{which} {metrics_lib.accuracy(cm):.4f}')
      print(f'{wd}  missing={name:<5}  ' + '  '.join(out), flush=True)


if __name__ == '__main__':
  main(sys.argv[1:])
