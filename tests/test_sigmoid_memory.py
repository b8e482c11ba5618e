"""The ring (chunked) sigmoid loss keeps one b x b block live; the all-gather form holds b x N."""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vlpjax.objectives.contrastive import sigmoid_loss
from vlpjax.parallel import BATCH_AXES, make_mesh, over_batch_axes

DEVICES, PER_DEVICE, DIM = 8, 1024, 256


def _temp_bytes(chunked: bool, with_grad: bool) -> int:
    mesh = make_mesh(data=DEVICES)
    loss = over_batch_axes(
        lambda *a, axis_name: sigmoid_loss(*a, axis_name=axis_name, chunked=chunked)[0], mesh, num_batched=2
    )
    fn = jax.value_and_grad(loss, argnums=(0, 1)) if with_grad else loss
    emb = jax.ShapeDtypeStruct((DEVICES * PER_DEVICE, DIM), jnp.float32, sharding=NamedSharding(mesh, P(BATCH_AXES)))
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
    compiled = jax.jit(fn).lower(emb, emb, scalar, scalar).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_chunked_sigmoid_uses_at_most_a_quarter_of_the_all_gather_memory():
    rows = []
    for with_grad in (False, True):
        gathered, chunked = _temp_bytes(False, with_grad), _temp_bytes(True, with_grad)
        rows.append((with_grad, gathered, chunked))
        print(
            f"sigmoid loss{' + grad' if with_grad else ''}, {DEVICES} devices, global batch "
            f"{DEVICES}x{PER_DEVICE}, {DIM}-d: all-gather {gathered / 2**20:.1f} MiB, "
            f"chunked {chunked / 2**20:.1f} MiB, ratio {chunked / gathered:.3f}"
        )
    for with_grad, gathered, chunked in rows:
        assert chunked <= gathered / 4, (with_grad, gathered, chunked)
