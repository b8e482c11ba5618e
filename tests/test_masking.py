"""MLM masking: 15% of non-special tokens, 80/10/10, never special or pad; sharded == single device."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from vlpjax.objectives.masking import mask_tokens, mlm_loss
from vlpjax.parallel import BATCH_AXES, make_mesh

PAD, CLS, SEP, MASK = 0, 2, 3, 4
SPECIAL = (PAD, 1, CLS, SEP, MASK)
VOCAB = 50


def _text(rows, length, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, length + 1, size=rows)
    ids = rng.integers(5, VOCAB, size=(rows, length))
    ids[:, 0] = CLS
    ids[np.arange(rows), lengths - 1] = SEP
    valid = np.arange(length)[None] < lengths[:, None]
    return np.where(valid, ids, PAD).astype(np.int32), valid


def _mask(key, ids, valid, axis_name=None):
    return mask_tokens(key, ids, valid, mask_id=MASK, special_ids=SPECIAL, vocab_size=VOCAB, axis_name=axis_name)


def test_masking_statistics_on_100k_tokens():
    ids, valid = _text(4000, 32)
    masked, targets, selected = (np.asarray(x) for x in _mask(jax.random.key(0), jnp.asarray(ids), jnp.asarray(valid)))
    candidates = valid & ~np.isin(ids, SPECIAL)
    assert candidates.sum() > 50_000 and valid.sum() > 60_000
    rate = selected.sum() / candidates.sum()
    assert abs(rate - 0.15) < 0.005, rate
    chosen = selected.astype(bool)
    to_mask = np.mean(masked[chosen] == MASK)
    unchanged = np.mean(masked[chosen] == ids[chosen])
    to_random = 1 - to_mask - unchanged
    # A random replacement can draw the original token (1 in 45 here); count it where it lands.
    assert (
        abs(to_mask - 0.8) < 0.01 and abs(to_random - 0.1 * 44 / 45) < 0.01 and abs(unchanged - 0.1 - 0.1 / 45) < 0.01
    )
    # Special and padded tokens are never selected or changed; targets are the originals.
    assert not selected[~candidates].any()
    np.testing.assert_array_equal(masked[~chosen], ids[~chosen])
    np.testing.assert_array_equal(targets, ids)
    assert not np.isin(masked[chosen & (masked != MASK)], [PAD, 1, CLS, SEP]).any()


def test_masking_and_loss_are_the_same_sharded_and_on_one_device():
    ids, valid = _text(64, 12, seed=1)
    key = jax.random.key(5)
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(64, 12, VOCAB)), jnp.float32)
    ref_masked, _, ref_selected = _mask(key, jnp.asarray(ids), jnp.asarray(valid))
    ref_loss, ref_grad = jax.value_and_grad(lambda lg: mlm_loss(lg, jnp.asarray(ids), ref_selected)[0])(logits)

    mesh = make_mesh(data=8)

    def local(key, ids, valid, logits):
        masked, targets, selected = _mask(key, ids, valid, BATCH_AXES)
        loss, _ = mlm_loss(logits, targets, selected, axis_name=BATCH_AXES)
        return masked, selected, loss

    run = jax.jit(
        jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(P(), P(BATCH_AXES), P(BATCH_AXES), P(BATCH_AXES)),
            out_specs=(P(BATCH_AXES), P(BATCH_AXES), P()),
        )
    )
    masked, selected, loss = run(key, ids, valid, logits)
    np.testing.assert_array_equal(masked, ref_masked)
    np.testing.assert_array_equal(selected, ref_selected)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    grad = jax.jit(jax.grad(lambda lg: run(key, ids, valid, lg)[2]))(logits)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-9)


def test_mlm_loss_counts_only_selected_positions():
    logits = jnp.zeros((1, 3, VOCAB)).at[0, 0, 7].set(10.0)
    targets = jnp.array([[7, 9, 9]])
    only_first = mlm_loss(logits, targets, jnp.array([[True, False, False]]))[0]
    assert float(only_first) < 0.01  # the confident, correct position alone: log(1 + 49 e^-10)
    assert float(mlm_loss(logits, targets, jnp.array([[True, True, False]]))[0]) > 1.0
