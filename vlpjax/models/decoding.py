"""Greedy and beam-search decoding over any model step `step(ids, mask, cache) -> (logits, cache)`.

The step owns everything model-specific (for Flamingo: the media, encoded once per prompt and
closed over), so the same two loops serve the bare LM and the multimodal model. Prompts are
left-padded to one length; the KV cache marks the padding so no token attends to it.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Step = Callable[..., tuple[jax.Array, object]]


def left_pad(prompts: list[list[int]], pad_id: int, round_to: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> (ids [B, L], mask [B, L]) padded on the left, L a multiple of `round_to`."""
    length = -(-max(len(p) for p in prompts) // round_to) * round_to
    ids = np.full((len(prompts), length), pad_id, np.int32)
    mask = np.zeros((len(prompts), length), bool)
    for row, p in enumerate(prompts):
        ids[row, length - len(p) :] = p
        mask[row, length - len(p) :] = True
    return ids, mask


def jitted_step(module, method: str = "__call__", *fixed) -> Step:
    """step(ids, mask, cache) running `module.method(ids, mask, cache, *fixed)` under jit, with
    the weights and `fixed` (Flamingo's media latents, encoded once) passed as arguments."""
    graphdef, state = nnx.split(module)

    @jax.jit
    def run(state, fixed, ids, mask, cache):
        return getattr(nnx.merge(graphdef, state), method)(ids, mask, cache, *fixed)

    return lambda ids, mask, cache: run(state, fixed, ids, mask, cache)


def greedy(step: Step, ids, mask, cache, max_new_tokens: int, eos_id: int | None = None) -> np.ndarray:
    """[B, max_new_tokens] continuations; after a row's EOS it repeats EOS."""
    logits, cache = step(jnp.asarray(ids), jnp.asarray(mask), cache)
    token = jnp.argmax(logits[:, -1], axis=-1)
    out, done = [token], token == eos_id if eos_id is not None else jnp.zeros_like(token, bool)
    one = jnp.ones((ids.shape[0], 1), bool)
    for _ in range(max_new_tokens - 1):
        if bool(jnp.all(done)):
            out.append(token)
            continue
        logits, cache = step(token[:, None], one, cache)
        token = jnp.argmax(logits[:, -1], axis=-1)
        if eos_id is not None:
            token = jnp.where(done, eos_id, token)
            done = done | (token == eos_id)
        out.append(token)
    return np.asarray(jnp.stack(out, axis=1))


def beam_search(step: Step, ids, mask, cache, max_new_tokens: int, beams: int, eos_id: int | None = None):
    """The highest total log-probability continuation per row found with `beams` beams.

    Returns (tokens [B, max_new_tokens], scores [B]). A finished beam (it emitted EOS) keeps
    its score and continues with EOS at no cost, so finished and open beams compete fairly.
    """
    b = ids.shape[0]
    logits, cache = step(jnp.asarray(ids), jnp.asarray(mask), cache)
    cache = cache.expand(jnp.repeat(jnp.arange(b), beams))
    logprobs = jax.nn.log_softmax(logits[:, -1].astype(jnp.float32), axis=-1)
    vocab = logprobs.shape[-1]
    logprobs = jnp.repeat(logprobs, beams, axis=0)  # [B*K, V]
    # Only the first copy of each prompt may start a beam: the others would duplicate it.
    scores = jnp.tile(jnp.asarray([0.0] + [-jnp.inf] * (beams - 1)), b)
    tokens = jnp.zeros((b * beams, 0), jnp.int32)
    done = jnp.zeros((b * beams,), bool)
    one = jnp.ones((b * beams, 1), bool)
    for t in range(max_new_tokens):
        if t:
            logits, cache = step(tokens[:, -1:], one, cache)
            logprobs = jax.nn.log_softmax(logits[:, -1].astype(jnp.float32), axis=-1)
        if eos_id is not None:
            finished_row = jnp.full((vocab,), -jnp.inf).at[eos_id].set(0.0)
            logprobs = jnp.where(done[:, None], finished_row, logprobs)
        total = (scores[:, None] + logprobs).reshape(b, beams * vocab)
        scores, flat = jax.lax.top_k(total, beams)  # [B, K]
        parent = (flat // vocab + jnp.arange(b)[:, None] * beams).reshape(-1)
        token = (flat % vocab).reshape(-1).astype(jnp.int32)
        scores = scores.reshape(-1)
        tokens = jnp.concatenate([tokens[parent], token[:, None]], axis=1)
        done = done[parent] | (token == eos_id if eos_id is not None else False)
        cache = cache.expand(parent)
    best = jnp.argmax(scores.reshape(b, beams), axis=1) + jnp.arange(b) * beams
    return np.asarray(tokens[best]), np.asarray(scores[best])
