"""Attention through jax.nn.dot_product_attention: the `xla` kernel equals the einsum-softmax
attention vlpjax had before, and the fused-kernel form (both sequences padded to 64, real keys
as lengths, causality as a flag, other patterns as a bias) equals it too, run through XLA here
since a CPU has no cuDNN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlpjax.models.attention import Mask, attend, fused_attention, key_padding
from vlpjax.models.layers import MultiHeadAttention

B, LQ, LK, H, DH = 3, 7, 9, 4, 8


def einsum_attention(q, k, v, mask):
    """The attention of vlpjax before this change: masked logits set to float32's minimum."""
    groups = k.shape[2]
    k, v = (jnp.repeat(x, q.shape[2] // groups, axis=2) for x in (k, v))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q / np.sqrt(q.shape[-1]), k, preferred_element_type=jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, float(np.finfo(np.float32).min))
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)


def qkv(seed, lq=LQ, lk=LK, kv_heads=H):
    keys = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(keys[0], (B, lq, H, DH)),
        jax.random.normal(keys[1], (B, lk, kv_heads, DH)),
        jax.random.normal(keys[2], (B, lk, kv_heads, DH)),
    )


def right_padded(lengths, total):
    return jnp.arange(total)[None, :] < jnp.asarray(lengths)[:, None]


def pairs_mask():
    """Something no length and no causal flag can express: a checkerboard, every row keeping a key."""
    grid = (np.arange(LQ)[:, None] + np.arange(LK)[None, :]) % 2 == 0
    return jnp.asarray(grid)[None, None]


def masks():
    keys = right_padded([LK, 4, 2], LK)  # every query keeps a key under the checkerboard too
    square_keys = right_padded([LQ, 5, 2], LQ)
    return {
        "none": (Mask(), None, LK),
        "keys": (key_padding(keys), keys[:, None, None, :], LK),
        "causal_keys": (
            Mask(keys=square_keys, causal=True),
            square_keys[:, None, None, :] & jnp.tril(jnp.ones((LQ, LQ), bool)),
            LQ,
        ),
        "pairs_keys": (Mask(keys=keys, pairs=pairs_mask()), keys[:, None, None, :] & pairs_mask(), LK),
    }


@pytest.mark.parametrize("name", ["none", "keys", "causal_keys", "pairs_keys"])
@pytest.mark.parametrize("kv_heads", [H, 2])
def test_xla_kernel_equals_the_einsum_attention(name, kv_heads):
    mask, dense, lk = masks()[name]
    q, k, v = qkv(0, lk=lk, kv_heads=kv_heads)
    np.testing.assert_allclose(attend(q, k, v, mask, kernel="xla"), einsum_attention(q, k, v, dense), atol=1e-5)


@pytest.mark.parametrize("name", ["none", "keys", "causal_keys", "pairs_keys"])
def test_fused_kernel_form_equals_the_einsum_attention(name):
    mask, dense, lk = masks()[name]
    q, k, v = qkv(1, lk=lk)
    out = fused_attention(q, k, v, mask, implementation="xla")
    assert out.shape == q.shape
    np.testing.assert_allclose(out, einsum_attention(q, k, v, dense), atol=1e-5)


def test_fused_kernel_form_pads_to_whole_blocks():
    """The padded keys must be invisible: the same output at 64 as at a block of 8."""
    mask, _, _ = masks()["pairs_keys"]
    q, k, v = qkv(2)
    np.testing.assert_allclose(
        fused_attention(q, k, v, mask, implementation="xla", multiple=64),
        fused_attention(q, k, v, mask, implementation="xla", multiple=8),
        atol=1e-6,
    )


def test_fused_kernel_form_keeps_bfloat16_inputs_finite():
    mask, dense, lk = masks()["pairs_keys"]
    q, k, v = (x.astype(jnp.bfloat16) for x in qkv(3, lk=lk))
    out = fused_attention(q, k, v, mask, implementation="xla")
    assert out.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(out.astype(jnp.float32))))
    reference = einsum_attention(*(x.astype(jnp.float32) for x in (q, k, v)), dense)
    np.testing.assert_allclose(out.astype(jnp.float32), reference, atol=3e-2)


def test_masked_keys_get_no_weight_whatever_their_values():
    """Changing a padded key or value changes nothing, in both forms."""
    mask, _, _ = masks()["keys"]
    q, k, v = qkv(4)
    k2, v2 = k.at[1, 4:].set(1e3), v.at[1, 4:].set(-1e3)
    for run in (lambda *a: attend(*a, mask, kernel="xla"), lambda *a: fused_attention(*a, mask, implementation="xla")):
        np.testing.assert_allclose(run(q, k, v), run(q, k2, v2), atol=1e-5)


def test_unknown_kernel_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown attention kernel 'flash'.*xla.*cudnn"):
        MultiHeadAttention(8, 2, attention="flash", rngs=__import__("flax").nnx.Rngs(0))
