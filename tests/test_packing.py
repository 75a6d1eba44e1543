"""parallelnet.packing: a state tree round-trips through its packed form, the
packed shapes are known from the abstract tree alone, and checkpoints
written unpacked (before packing) still restore."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from parallelnet import checkpointing
from parallelnet import mesh as mesh_lib
from parallelnet import packing
import train_helpers


def _tree():
  rng = np.random.default_rng(0)
  return dict(
      step=jnp.int32(7),
      params={'a': {'kernel': jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
                    'bias': jnp.arange(4, dtype=jnp.float32)},
              'b': jnp.asarray(rng.normal(size=(2, 2, 5)), jnp.bfloat16)},
      opt_state=(jnp.int32(3), {'mu': jnp.ones((6,), jnp.float32)}),
      rng=jax.random.key(1))


def _abstract(tree, sharding=None):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      tree)


def test_round_trip_keys_dtypes_and_scalars():
  tree = _tree()
  packed = packing.pack(tree)
  # params: one flat array per dtype, sorted by name; keys and scalars kept.
  assert sorted(packed['params']) == ['bfloat16', 'float32']
  assert packed['params']['float32'].shape == (16,)
  assert packed['params']['bfloat16'].shape == (20,)
  assert packed['step'].shape == ()
  assert jax.dtypes.issubdtype(packed['rng'].dtype, jax.dtypes.prng_key)
  sharding = mesh_lib.replicated(mesh_lib.make_mesh())
  abstract = _abstract(tree, sharding)
  assert jax.tree.map(lambda x: (x.shape, x.dtype),
                      packing.packed_abstract(abstract)) == jax.tree.map(
                          lambda x: (x.shape, x.dtype), packed)
  back = packing.unpack(packed, abstract)
  assert jax.tree.structure(back) == jax.tree.structure(tree)
  for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(tree)):
    assert got.dtype == want.dtype and got.shape == want.shape
    if jax.dtypes.issubdtype(want.dtype, jax.dtypes.prng_key):
      got, want = jax.random.key_data(got), jax.random.key_data(want)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  # A subset of the entries unpacks from a subset of the packed ones.
  part = packing.unpack({'params': packed['params']},
                        {'params': abstract['params']})
  np.testing.assert_array_equal(part['params']['a']['kernel'],
                                tree['params']['a']['kernel'])


def test_pack_is_a_copy():
  tree = _tree()
  packed = packing.pack(tree)
  assert (packed['step'].unsafe_buffer_pointer()
          != tree['step'].unsafe_buffer_pointer())


def test_a_sharded_array_is_refused_by_name():

  class Split:  # A sharding over several devices, as model parallelism has.
    is_fully_replicated = False

    def __repr__(self):
      return 'Split()'

  one = mesh_lib.replicated(mesh_lib.make_mesh())
  whole = jax.ShapeDtypeStruct((4,), jnp.float32, sharding=one)
  split = type('Leaf', (), dict(shape=(4,), dtype=jnp.float32,
                                sharding=Split()))()
  assert packing.packed_abstract({'params': {'w': whole, 'v': whole}})
  with pytest.raises(ValueError, match=r"\['v'\].*Split\(\)"):
    packing.packed_abstract({'params': {'w': whole, 'v': split}})


def test_checkpoints_written_unpacked_still_restore(tmp_path):
  """A checkpoint of the earlier layout (one array per leaf, no `format`
  in its meta) restores through Checkpoints.restore unchanged."""
  config = train_helpers.tiny_config()
  mesh = mesh_lib.make_mesh()
  tree = _tree()
  tree.pop('rng')
  meta = dict(model_config=checkpointing.model_config(config),
              state_crc32=checkpointing.tree_checksums(tree))
  with ocp.CheckpointManager(tmp_path / 'checkpoints' / 'best',
                             item_names=('state', 'meta')) as mgr:
    mgr.save(7, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                        meta=ocp.args.JsonSave(meta)))
  ckpts = checkpointing.Checkpoints(str(tmp_path), config, async_save=False)
  abstract = _abstract(tree, mesh_lib.replicated(mesh))
  got, _ = ckpts.restore('best', abstract)
  ckpts.close()
  np.testing.assert_array_equal(got['params']['a']['kernel'],
                                tree['params']['a']['kernel'])
