"""The training step's costliest CPU ops alone, per XLA:CPU setting, vs TF.

The 3x3 conv kernel gradient (b8, 64x64x128 and 128x128x64) and the 2x2
max-pool gradient (b8, 128x128x64; lax reduce_window and the model's
reshape + max form), each jitted alone and compiled once per setting
(compiler_options, as `train_throughput.py --xla`), against TF's
Conv2DBackpropFilter / MaxPoolGrad (oneDNN); 5 alternating rounds, medians,
and the largest difference to the default relative to its largest value.

  PARALLELNET_CPU_FLAGS=0 python bench/cpu_ops.py
"""
import os, time, sys
os.environ['TF_CPP_MIN_LOG_LEVEL']='2'
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jax, jax.numpy as jnp, numpy as np
import tensorflow as tf
from bench.train_throughput import compiler_options
settings = {'default': '', 'ynn=dot': '--xla_cpu_experimental_ynn_fusion_type=dot',
            'onednn': '--xla_cpu_use_onednn=true'}
rng = np.random.default_rng(0)
def conv_case(n, h, c):
  x = rng.random((n,h,h,c), np.float32); k = (rng.random((3,3,c,c), np.float32)-0.5)*0.1
  dy = rng.random((n,h,h,c), np.float32)
  def kgrad(x, dy):
    f = lambda k: jax.lax.conv_general_dilated(x,k,(1,1),'SAME',dimension_numbers=('NHWC','HWIO','NHWC'))
    return jax.vjp(f, jnp.asarray(k))[1](dy)[0]
  low = jax.jit(kgrad).lower(x, dy)
  fns = {n_: low.compile(compiler_options=compiler_options(f)) for n_, f in settings.items()}
  xt, dyt = tf.constant(x), tf.constant(dy)
  tfk = tf.function(lambda: tf.raw_ops.Conv2DBackpropFilter(input=xt, filter_sizes=[3,3,c,c], out_backprop=dyt, strides=[1,1,1,1], padding='SAME'))
  fns['TF oneDNN'] = lambda *a: tfk()
  return fns, (x, dy)
def pool_case(n, h, c):
  x = rng.random((n,h,h,c), np.float32); dy = rng.random((n,h//2,h//2,c), np.float32)
  def pgrad(x, dy):
    f = lambda x: jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1,2,2,1), (1,2,2,1), 'VALID')
    return jax.vjp(f, x)[1](dy)[0]
  def tiled(x, dy):
    f = lambda x: x.reshape(n, h//2, 2, h//2, 2, c).max(axis=(2,4))
    return jax.vjp(f, x)[1](dy)[0]
  low = jax.jit(pgrad).lower(x, dy)
  fns = {n_: low.compile(compiler_options=compiler_options(f)) for n_, f in settings.items()}
  lt = jax.jit(tiled).lower(x, dy)
  fns.update({'tiled ' + n_: lt.compile(compiler_options=compiler_options(f)) for n_, f in settings.items()})
  xt, dyt = tf.constant(x), tf.constant(dy)
  yt = tf.nn.max_pool2d(xt, 2, 2, 'VALID')
  tfp = tf.function(lambda: tf.raw_ops.MaxPoolGrad(orig_input=xt, orig_output=yt, grad=dyt, ksize=[1,2,2,1], strides=[1,2,2,1], padding='VALID'))
  fns['TF oneDNN'] = lambda *a: tfp()
  return fns, (x, dy)
for name, (fns, args) in [('conv dK b8 64x64x128', conv_case(8, 64, 128)), ('conv dK b8 128x128x64', conv_case(8,128,64)),
                          ('maxpool grad b8 128x128x64', pool_case(8,128,64))]:
  args = [jnp.asarray(a) for a in args]
  outs = {k: np.asarray(f(*args)) for k, f in fns.items()}
  ref = outs['default']
  ts = {k: [] for k in fns}
  for r in range(5):
    for k, f in fns.items():
      t = time.perf_counter(); o = f(*args); (o.block_until_ready() if hasattr(o, 'block_until_ready') else o.numpy()); ts[k].append(time.perf_counter()-t)
  print(name, ' | '.join(f'{k} {np.median(v)*1e3:.0f} ms (rel {np.max(np.abs(outs[k]-ref))/np.max(np.abs(ref)):.0e})' for k, v in ts.items()), flush=True)
