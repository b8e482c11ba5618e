"""The fusion pretraining objective (ITC + ITM with global hard negatives + MLM) through a real
FusionVLP: on 8 devices its loss and every gradient equal one device's on the global batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vlpjax.models.fusion_vlp import build_fusion_vlp
from vlpjax.objectives.registry import StepContext, TextVocab, make_objective
from vlpjax.parallel import BATCH_AXES, AxisShards, MeshShards, make_mesh

VOCAB = TextVocab(vocab_size=40, mask_id=4, special_ids=(0, 2, 3, 4))
BATCH, LENGTH = 16, 10
LAYOUTS = {
    "albef": dict(text=dict(num_hidden_layers=2, cross_attention_from=1), fusion=dict(layout="albef")),
    "merged": dict(
        text=dict(num_hidden_layers=1), fusion=dict(layout="merged", width=16, depth=1, num_heads=2, mlp_dim=32)
    ),
    "co_attention": dict(
        text=dict(num_hidden_layers=1), fusion=dict(layout="co_attention", width=16, depth=1, num_heads=2, mlp_dim=32)
    ),
}


def _model(layout):
    parts = LAYOUTS[layout]
    spec = {
        "image": dict(kind="vit", variant="x/8", width=16, depth=1, mlp_dim=32, num_heads=2, image_size=16, pool="gap"),
        "text": dict(
            kind="bert",
            vocab_size=VOCAB.vocab_size,
            hidden_size=16,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=LENGTH,
            **parts["text"],
        ),
        "fusion": parts["fusion"],
        "embed_dim": 8,
    }
    return build_fusion_vlp(spec, rngs=nnx.Rngs(0))


def _batch():
    rng = np.random.default_rng(0)
    lengths = rng.integers(4, LENGTH + 1, size=BATCH)
    ids = rng.integers(5, VOCAB.vocab_size, size=(BATCH, LENGTH)).astype(np.int32)
    ids[:, 0] = 2
    mask = np.arange(LENGTH)[None] < lengths[:, None]
    ids = np.where(mask, ids, 0)
    image_id = np.arange(BATCH) // 2  # two captions per image: same-image columns are never negatives
    return {
        "image": rng.normal(size=(BATCH, 16, 16, 3)).astype(np.float32),
        "text_ids": ids,
        "text_mask": mask,
        "image_id": image_id.astype(np.int32),
    }


def _loss_and_grads(graphdef, params, batch, shards, key):
    objective = make_objective({"itc": {}, "itm": {}, "mlm": {"weight": 0.5}}, VOCAB)

    def loss_fn(params):
        m = nnx.merge(graphdef, params)
        return objective(m(batch), batch, StepContext(model=m, key=key, shards=shards))

    return jax.value_and_grad(loss_fn, has_aux=True)(params)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_fusion_objective_on_8_devices_equals_one_device(layout):
    graphdef, params = nnx.split(_model(layout))
    batch, key = _batch(), jax.random.key(3)
    (_, metrics_1), grads_1 = jax.jit(lambda p, b, k: _loss_and_grads(graphdef, p, b, AxisShards(None), k))(
        params, batch, key
    )

    mesh = make_mesh(data=8)
    sharded_batch = jax.device_put(batch, NamedSharding(mesh, P(BATCH_AXES)))
    run = jax.jit(lambda p, b, k: _loss_and_grads(graphdef, p, b, MeshShards(mesh), k))
    (_, metrics_8), grads_8 = run(params, sharded_batch, key)

    assert float(metrics_1["mlm/masked_tokens"]) > 0 and 0 < float(metrics_1["itm/loss"])
    for name in ("loss", "itc/loss", "itm/loss", "mlm/loss", "mlm/masked_tokens", "itm/accuracy"):
        np.testing.assert_allclose(float(metrics_8[name]), float(metrics_1[name]), rtol=1e-5, err_msg=name)
    flat_1, flat_8 = jax.tree.leaves(grads_1), jax.tree.leaves(grads_8)
    scale = max(float(jnp.max(jnp.abs(g))) for g in flat_1)
    for g1, g8 in zip(flat_1, flat_8, strict=False):
        np.testing.assert_allclose(np.asarray(g8), np.asarray(g1), rtol=1e-4, atol=1e-6 * scale)


def test_the_step_key_changes_the_sampled_negatives_and_masks():
    graphdef, params = nnx.split(_model("albef"))
    batch = _batch()
    run = jax.jit(lambda k: _loss_and_grads(graphdef, params, batch, AxisShards(None), k)[0][1])
    a, b = run(jax.random.key(0)), run(jax.random.key(1))
    assert float(a["mlm/loss"]) != float(b["mlm/loss"]) or float(a["itm/loss"]) != float(b["itm/loss"])
