"""Mesh construction, the logical-axis rule table, sharded model state and global batches."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from tests.tiny_models import random_batch, tiny_dual_encoder
from vlpjax.parallel import (
    global_to_host_local,
    host_local_to_global,
    logical_to_spec,
    make_mesh,
    shard_model,
    state_specs,
)
from vlpjax.parallel.mesh import resolve_axis_sizes


def test_mesh_minus_one_takes_the_rest():
    assert resolve_axis_sizes({"data": -1, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
    assert resolve_axis_sizes({"data": 2, "fsdp": -1}, 8) == (2, 4, 1)
    mesh = make_mesh(data=-1, fsdp=2, tensor=1)
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}


@pytest.mark.parametrize(
    "sizes,message",
    [
        ({"data": -1, "fsdp": -1}, "only one"),
        ({"data": 3}, "needs 3 devices"),
        ({"data": -1, "fsdp": 3}, "cannot be split"),
        ({"pipeline": 2}, "unknown mesh axes"),
    ],
)
def test_mesh_errors_name_the_problem(sizes, message):
    with pytest.raises(ValueError, match=message):
        resolve_axis_sizes(sizes, 8)


def test_rule_table_maps_logical_axes():
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    assert logical_to_spec(("embed", "mlp"), (16, 32), mesh) == P("fsdp", "tensor")
    assert logical_to_spec(("mlp", "embed"), (32, 16), mesh) == P("tensor", "fsdp")
    # A dimension the mesh axis does not divide stays whole.
    assert logical_to_spec(("vocab", "embed"), (61, 16), mesh) == P(None, "fsdp")
    # A mesh axis is used once per array.
    assert logical_to_spec(("heads", "mlp"), (16, 16), mesh) == P("tensor", None)
    assert logical_to_spec(None, (3,), mesh) == P()
    with pytest.raises(ValueError, match="do not match"):
        logical_to_spec(("embed",), (4, 4), mesh)


def test_model_state_is_sharded_by_the_rules():
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    model = tiny_dual_encoder("softmax")
    before = tiny_dual_encoder("softmax")(random_batch(0, 8))
    shard_model(model, mesh)
    fc1 = model.txt.blocks[0].mlp.fc1.kernel
    assert fc1.get_value().sharding.spec == P("fsdp", "tensor")
    assert model.txt.blocks[0].attn.out.kernel.get_value().sharding.spec == P("tensor", "fsdp")
    specs = state_specs(nnx.state(model), mesh)
    leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
    assert any(s != P() for s in leaves) and any(s == P() for s in leaves)
    # Sharding changes placement, not values: the sharded model computes the same embeddings.
    batch = host_local_to_global(random_batch(0, 8), mesh)
    after = nnx.jit(lambda m, b: m(b))(model, batch)
    np.testing.assert_allclose(after["img_emb"], before["img_emb"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(after["txt_emb"], before["txt_emb"], rtol=1e-5, atol=1e-6)


def test_host_local_batch_becomes_a_global_array():
    mesh = make_mesh(data=4, fsdp=2)
    local = {"x": np.arange(16 * 3, dtype=np.float32).reshape(16, 3), "ids": np.arange(16, dtype=np.int32)}
    batch = host_local_to_global(local, mesh)
    assert batch["x"].shape == (16, 3)
    assert batch["x"].sharding.spec == P(("data", "fsdp"), None)
    assert len(batch["x"].addressable_shards) == 8
    assert batch["x"].addressable_shards[1].data.shape == (2, 3)
    np.testing.assert_array_equal(global_to_host_local(batch["x"]), local["x"])
    with pytest.raises(ValueError, match="'x'.*does not split"):
        host_local_to_global({"x": np.zeros((6, 3), np.float32)}, mesh)
