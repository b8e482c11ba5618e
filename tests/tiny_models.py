"""Tiny model configs and random batches shared by the tests."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlpjax.models.vlp import build_dual_encoder

VOCAB = 61
TEXT_LEN = 7
IMAGE_SIZE = 8

TINY_VIT = {
    "kind": "vit",
    "variant": "mu/4",
    "width": 16,
    "depth": 1,
    "mlp_dim": 32,
    "num_heads": 2,
    "image_size": IMAGE_SIZE,
}
TINY_CAUSAL = {
    "kind": "causal",
    "vocab_size": VOCAB,
    "width": 16,
    "depth": 1,
    "num_heads": 2,
    "mlp_dim": 32,
    "max_len": TEXT_LEN,
}


def tiny_dual_encoder(contrastive="softmax", seed=0, embed_dim=8):
    spec = {"image": TINY_VIT, "text": TINY_CAUSAL, "embed_dim": embed_dim, "contrastive": contrastive}
    return build_dual_encoder(spec, rngs=nnx.Rngs(seed))


def random_text(rng: np.random.Generator, batch: int, length: int = TEXT_LEN, vocab: int = VOCAB):
    """Right-padded random ids (pad id 0) with at least one real token per row."""
    lengths = rng.integers(1, length + 1, size=batch)
    mask = np.arange(length)[None, :] < lengths[:, None]
    ids = np.where(mask, rng.integers(1, vocab, size=(batch, length)), 0)
    return ids.astype(np.int32), mask


def random_batch(seed: int, batch: int):
    rng = np.random.default_rng(seed)
    ids, mask = random_text(rng, batch)
    return {
        "image": rng.normal(size=(batch, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32),
        "text_ids": ids,
        "text_mask": mask,
    }


def caption_batch(vocab: int, rows: int = 16, length: int = 9, seed: int = 0) -> dict:
    """Images and captions of 3..length real tokens (non-zero ids, no pad token in the ids):
    the batches the captioning models' tests run."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, length + 1, size=rows)
    return {
        "image": jnp.asarray(rng.normal(size=(rows, IMAGE_SIZE, IMAGE_SIZE, 3)), jnp.float32),
        "text_ids": jnp.asarray(rng.integers(1, vocab, size=(rows, length)), jnp.int32),
        "text_mask": jnp.asarray(np.arange(length)[None] < lengths[:, None]),
    }
