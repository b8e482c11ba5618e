"""ITM hard negatives over the global batch: planted cross-device negatives, never a positive,
and loss + gradients equal to the single-device reference for the same key."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from vlpjax.objectives.matching import hard_negatives, itm_loss, take_global_rows
from vlpjax.objectives.shards import gather_rows
from vlpjax.parallel import BATCH_AXES, make_mesh

DEVICES, PER_DEVICE = 8, 4
N = DEVICES * PER_DEVICE


def _on_mesh(fn, in_specs, out_specs):
    return jax.jit(jax.shard_map(fn, mesh=make_mesh(data=DEVICES), in_specs=in_specs, out_specs=out_specs))


def _sample_sharded(key, sim_i2t, sim_t2i, image_ids):
    def fn(k, a, b, ids):
        return hard_negatives(k, a, b, ids, axis_name=BATCH_AXES)

    return _on_mesh(fn, (P(), P(BATCH_AXES), P(BATCH_AXES), P(BATCH_AXES)), (P(BATCH_AXES), P(BATCH_AXES)))(
        key, sim_i2t, sim_t2i, image_ids
    )


def test_planted_hardest_negative_on_another_device_is_sampled():
    sim = np.zeros((N, N), np.float32)
    np.fill_diagonal(sim, 60.0)  # positives score highest but are masked
    row, target = 1, 5 * PER_DEVICE + 2  # an image on device 0, its hardest negative text on device 5
    sim[row, target] = 40.0
    sim_t2i = sim.T.copy()  # text `target` (device 5) has image `row` (device 0) as its hardest negative
    ids = np.arange(N, dtype=np.int32)
    for seed in range(5):
        neg_text, neg_image = (np.asarray(x) for x in _sample_sharded(jax.random.key(seed), sim, sim_t2i, ids))
        assert neg_text[row] == target and target // PER_DEVICE == 5
        assert neg_image[target] == row and row // PER_DEVICE == 0


def test_a_negative_is_never_the_positive_nor_the_same_image():
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(N // 2, dtype=np.int32), 2)  # every image appears twice (two captions)
    rng.shuffle(ids)
    for seed in range(20):
        sim = rng.normal(size=(N, N)).astype(np.float32) * 3
        neg_text, neg_image = (np.asarray(x) for x in _sample_sharded(jax.random.key(seed), sim, sim.T.copy(), ids))
        assert (ids[neg_text] != ids).all() and (ids[neg_image] != ids).all()
        assert (neg_text != np.arange(N)).all() and (neg_image != np.arange(N)).all()


def _itm_objective(params, x_img, x_txt, image_ids, key, axis_name):
    """A dual encoder plus a bilinear matching head stand in for the fusion model."""

    def normalize(v):
        return v / jnp.linalg.norm(v, axis=-1, keepdims=True)

    img, txt = normalize(x_img @ params["w_img"]), normalize(x_txt @ params["w_txt"])
    sim_i2t = 10.0 * img @ gather_rows(txt, axis_name).T
    sim_t2i = 10.0 * txt @ gather_rows(img, axis_name).T
    neg_text, neg_image = hard_negatives(key, sim_i2t, sim_t2i, image_ids, axis_name=axis_name)

    def score(i, t):
        match = jnp.sum(i * t * params["w_itm"], axis=-1) + params["b_itm"]
        return jnp.stack([jnp.zeros_like(match), match], axis=-1)

    pos = score(img, txt)
    with_neg_image = score(take_global_rows(img, neg_image, axis_name), txt)
    with_neg_text = score(img, take_global_rows(txt, neg_text, axis_name))
    return itm_loss(pos, with_neg_image, with_neg_text, axis_name=axis_name)[0]


def test_itm_loss_and_gradients_match_single_device():
    rng = np.random.default_rng(1)
    params = {
        "w_img": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32),
        "w_txt": jnp.asarray(rng.normal(size=(7, 5)), jnp.float32),
        "w_itm": jnp.asarray(rng.normal(size=(5,)), jnp.float32),
        "b_itm": jnp.float32(0.3),
    }
    x_img = jnp.asarray(rng.normal(size=(N, 6)), jnp.float32)
    x_txt = jnp.asarray(rng.normal(size=(N, 7)), jnp.float32)
    ids = jnp.arange(N, dtype=jnp.int32)
    key = jax.random.key(3)
    ref_loss, ref_grads = jax.jit(jax.value_and_grad(lambda p: _itm_objective(p, x_img, x_txt, ids, key, None)))(params)
    sharded = _on_mesh(
        lambda p, a, b, i, k: _itm_objective(p, a, b, i, k, BATCH_AXES),
        (P(), P(BATCH_AXES), P(BATCH_AXES), P(BATCH_AXES), P()),
        P(),
    )
    loss, grads = jax.jit(jax.value_and_grad(lambda p: sharded(p, x_img, x_txt, ids, key)))(params)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for name in params:
        assert np.abs(np.asarray(ref_grads[name])).max() > 1e-6, name
        np.testing.assert_allclose(grads[name], ref_grads[name], rtol=1e-5, atol=1e-7, err_msg=name)
