"""A small dual encoder memorises a fixed random toy set: the loss falls by at least half."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from tests.tiny_models import random_batch, tiny_dual_encoder
from vlpjax.objectives.contrastive import sigmoid_loss, softmax_loss

STEPS = 200


def _loss(out):
    if "logit_bias" in out:
        return sigmoid_loss(out["img_emb"], out["txt_emb"], out["logit_scale"], out["logit_bias"])[0]
    return softmax_loss(out["img_emb"], out["txt_emb"], out["logit_scale"])[0]


@pytest.mark.parametrize("contrastive", ["softmax", "sigmoid"])
def test_dual_encoder_loss_halves_in_200_steps(contrastive):
    model = tiny_dual_encoder(contrastive, seed=0, embed_dim=16)
    graphdef, params = nnx.split(model)
    batch = {k: jnp.asarray(v) for k, v in random_batch(0, 32).items()}
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: _loss(nnx.merge(graphdef, p)(batch)))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(STEPS):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    first, last = losses[0], float(np.mean(losses[-5:]))
    print(f"{contrastive}: loss {first:.3f} -> {last:.3f}")
    assert np.isfinite(losses).all()
    assert last <= 0.5 * first, (first, last)
