"""Activations are pinned to logical axes at block boundaries when the parallel layer asks:
the batch over (data, fsdp), the MLP hidden layer and the attention heads over tensor; the
values do not change."""

import jax
import numpy as np
from flax import nnx

from tests.tiny_models import IMAGE_SIZE, random_text, tiny_dual_encoder
from vlpjax.parallel import make_mesh
from vlpjax.parallel.partitioning import activation_sharding


def test_blocks_constrain_batch_and_mlp_activations_only_when_asked():
    model = tiny_dual_encoder()
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(0)
    ids, mask = random_text(rng, 8)
    batch = {
        "image": rng.normal(size=(8, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32),
        "text_ids": ids,
        "text_mask": mask,
    }
    mesh = make_mesh(data=4, fsdp=1, tensor=2)

    def forward(state, batch):
        out = nnx.merge(graphdef, state)(batch)
        return out["img_emb"], out["txt_emb"]

    def forward_on_mesh(state, batch):  # a function of its own: jit caches traces per function
        with activation_sharding(mesh):
            return forward(state, batch)

    plain = jax.jit(forward).lower(state, batch)
    constrained = jax.jit(forward_on_mesh).lower(state, batch)
    text = constrained.as_text()
    assert "sharding_constraint" not in plain.as_text()
    # 2 blocks (image and text towers, depth 1 each): per block its output, its MLP hidden layer
    # and its query, key and value heads.
    assert text.count("sdy.sharding_constraint") == 10, text.count("sdy.sharding_constraint")
    assert text.count('[{"data", "fsdp"}, {}, {"tensor"}, {}]') == 6  # q, k, v: the heads over tensor
    assert text.count('[{"data", "fsdp"}, {}, {}]') == 2  # block outputs: the batch split, the rest whole
    assert text.count('[{"data", "fsdp"}, {}, {"tensor"}]') == 2  # MLP hidden: the units over tensor
    for got, want in zip(constrained.compile()(state, batch), plain.compile()(state, batch), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
