"""Parameters are created already sharded: with fsdp=8 every addressable shard of a 2-D kernel
is 1/8 of it along its fsdp dimension, and the values equal an unsharded build bit for bit.

The reference is the same build jitted onto one device: an eager (op-by-op) build differs in
the last bit of a few initializer outputs, because XLA fuses the initializers' arithmetic
differently when it compiles them together; against it the test asserts rtol 1e-6."""

import os

import jax
import numpy as np

from vlpjax.config import load_config
from vlpjax.train.build import build_model, create_run
from vlpjax.train.state import split_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 61


def test_fsdp_initialisation_is_sharded_and_equals_the_eager_build():
    config = load_config(
        os.path.join(ROOT, "configs", "clip_shapes.py") + ":tiny", ["--config.mesh.data=1", "--config.mesh.fsdp=8"]
    )
    run = create_run(config, VOCAB)

    def build():
        return split_model(build_model(config.model, VOCAB, config.seed), tuple(config.rules.frozen))[1]

    one_device = jax.jit(build, out_shardings=jax.sharding.SingleDeviceSharding(jax.devices()[0]))()
    eager = build()
    sharded_kernels = 0
    leaves = zip(
        jax.tree_util.tree_leaves_with_path(run.state.params),
        jax.tree.leaves(one_device),
        jax.tree.leaves(eager),
        strict=True,
    )
    for (path, got), want, op_by_op in leaves:
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=jax.tree_util.keystr(path))
        np.testing.assert_allclose(np.asarray(got), np.asarray(op_by_op), rtol=1e-6, atol=1e-7)
        spec = got.sharding.spec
        if got.ndim == 2 and "fsdp" in spec:
            dim = list(spec).index("fsdp")
            for shard in got.addressable_shards:
                expected = list(got.shape)
                expected[dim] //= 8
                assert shard.data.shape == tuple(expected), (jax.tree_util.keystr(path), shard.data.shape)
            sharded_kernels += 1
    assert sharded_kernels >= 8  # every embed-major kernel of both towers
