"""Scaled dot-product attention through `jax.nn.dot_product_attention`, and the masks it takes.

`model.attention` picks the kernel:

- `xla`: XLA's fused softmax attention; runs everywhere, any mask, any dtype.
- `cudnn`: cuDNN's flash attention (NVIDIA GPUs, bfloat16 / float16). The attention matrix is
  never materialised. The kernel takes real keys as per-row lengths and causality as a flag, so
  a `Mask` keeps those two apart from any other pattern, which reaches the kernel as an additive
  bias only when a model needs one (merged-stream padding, Flamingo's image-to-token map).

A `Mask` says which keys each query may attend to:

- `keys` [B, Lk] bool: real keys. Under `cudnn` they are read as lengths (their count per row),
  so key masks must be right-padded, as every vlpjax pipeline makes them;
- `causal`: query i sees keys <= i;
- `pairs`: any other pattern, bool broadcastable to [B, H, Lq, Lk].

Logits and softmax statistics are float32 whatever the compute dtype, in both kernels.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from vlpjax.taxonomy import ATTENTION_KERNELS

Array = jax.Array

# cuDNN's fused kernel tiles the sequence in blocks of 64 and wants whole blocks.
CUDNN_LENGTH_MULTIPLE = 64
# The bias a disallowed key gets: exp() of it underflows to exactly 0 in float32, and adding a
# real logit (|logit| << 1e30) keeps it finite in bfloat16 as well.
_DISALLOWED_BIAS = -1e30


class Mask(NamedTuple):
    keys: Array | None = None  # [B, Lk] bool: the real keys
    causal: bool = False
    pairs: Array | None = None  # bool, broadcastable to [B, H, Lq, Lk]

    def dense(self, q_len: int, k_len: int) -> Array | None:
        """The whole pattern as one boolean [B|1, 1|H, Lq, Lk] array, or None for "everything"."""
        parts = []
        if self.keys is not None:
            parts.append(self.keys.astype(bool)[:, None, None, :])
        if self.causal:
            parts.append(jnp.tril(jnp.ones((q_len, k_len), bool))[None, None])
        if self.pairs is not None:
            parts.append(self.pairs.astype(bool))
        if not parts:
            return None
        out = parts[0]
        for part in parts[1:]:
            out = jnp.logical_and(out, part)
        return out


def key_padding(kv_mask: Array | None) -> Mask:
    """Every query may attend to every real key."""
    return Mask(keys=None if kv_mask is None else kv_mask.astype(bool))


def check_kernel(name: str) -> str:
    if name not in ATTENTION_KERNELS:
        raise ValueError(f"unknown attention kernel {name!r}; choose one of {ATTENTION_KERNELS}")
    return name


def attend(q: Array, k: Array, v: Array, mask: Mask | None = None, *, kernel: str = "xla") -> Array:
    """q [B, Lq, H, Dh], k/v [B, Lk, G, Dh] (H a multiple of G) -> [B, Lq, H, Dh]."""
    mask = mask or Mask()
    if check_kernel(kernel) == "xla":
        return jax.nn.dot_product_attention(q, k, v, mask=mask.dense(q.shape[1], k.shape[1]), implementation="xla")
    return fused_attention(q, k, v, mask, implementation="cudnn")


def _pad_length(x: Array, length: int) -> Array:
    return jnp.pad(x, [(0, 0), (0, length - x.shape[1])] + [(0, 0)] * (x.ndim - 2))


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def fused_attention(
    q: Array, k: Array, v: Array, mask: Mask, *, implementation: str, multiple: int = CUDNN_LENGTH_MULTIPLE
) -> Array:
    """Attention in the form a fused kernel takes: both sequences padded to `multiple`, real keys
    as lengths, causality as a flag, any other pattern as a bias. `implementation='xla'` runs the
    same arguments through XLA, which is how this is tested on CPU."""
    b, q_len, _, _ = q.shape
    k_len = k.shape[1]
    q_pad, k_pad = _round_up(q_len, multiple), _round_up(k_len, multiple)
    key_lengths = jnp.full((b,), k_len, jnp.int32) if mask.keys is None else jnp.sum(mask.keys, axis=1, dtype=jnp.int32)
    bias = None
    if mask.pairs is not None:
        allowed = jnp.broadcast_to(mask.pairs.astype(bool), (*mask.pairs.shape[:2], q_len, k_len))
        allowed = jnp.pad(allowed, [(0, 0), (0, 0), (0, q_pad - q_len), (0, k_pad - k_len)])
        bias = jnp.where(allowed, 0.0, _DISALLOWED_BIAS).astype(q.dtype)
    out = jax.nn.dot_product_attention(
        _pad_length(q, q_pad),
        _pad_length(k, k_pad),
        _pad_length(v, k_pad),
        bias=bias,
        is_causal=mask.causal,
        query_seq_lengths=jnp.full((b,), q_len, jnp.int32),
        key_value_seq_lengths=key_lengths,
        implementation=implementation,
    )
    return out[:, :q_len]
