"""Greedy and beam-search decoding over any model method `method(ids, mask, cache, *fixed) -> (logits, cache)`.

The method owns everything model-specific (for Flamingo: `decode`, with the media latents,
encoded once per batch of prompts, as `fixed`), so the same two loops serve the bare LM and the
multimodal model. Prompts are left-padded to one length; the KV cache, preallocated for the
prompt and every new token, marks the padding so no token attends to it.

A whole generation is one jitted call: the prompt step and a `lax.while_loop` over the new
tokens, which stops early once every row has emitted EOS. Nothing returns to the host until
the tokens are done.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class Step(NamedTuple):
    """A model's decoding step as data: `method` of the module `graphdef` with weights `state`,
    given `fixed` after (ids, mask, cache). It is traced inside the generation loop. `fixed`
    holds per-prompt arrays, batch first (beam search repeats them for each beam)."""

    graphdef: nnx.GraphDef
    state: nnx.State
    method: str = "__call__"
    fixed: tuple = ()


def model_step(module: nnx.Module, method: str = "__call__", *fixed) -> Step:
    graphdef, state = nnx.split(module)
    return Step(graphdef, state, method, tuple(fixed))


def left_pad(prompts: list[list[int]], pad_id: int = 0, round_to: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> (ids [B, L], mask [B, L]) padded on the left with `pad_id`, L a multiple of
    `round_to`. The mask, not the id, tells padding from tokens."""
    length = -(-max(len(p) for p in prompts) // round_to) * round_to
    ids = np.full((len(prompts), length), pad_id, np.int32)
    mask = np.zeros((len(prompts), length), bool)
    for row, p in enumerate(prompts):
        ids[row, length - len(p) :] = p
        mask[row, length - len(p) :] = True
    return ids, mask


def greedy(step: Step, ids, mask, cache, max_new_tokens: int, eos_id: int | None = None) -> jax.Array:
    """[B, max_new_tokens] continuations; after a row's EOS it repeats EOS."""
    return _generate(*step, ids, mask, cache, max_new_tokens, None, eos_id)


def beam_search(
    step: Step, ids, mask, cache, max_new_tokens: int, beams: int, eos_id: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """The highest total log-probability continuation per row found with `beams` beams.

    Returns (tokens [B, max_new_tokens], scores [B]). A finished beam (it emitted EOS) keeps
    its score and continues with EOS at no cost, so finished and open beams compete fairly.
    """
    return _generate(*step, ids, mask, cache, max_new_tokens, beams, eos_id)


# The module's structure, the method and the loop's sizes are static: one compilation per
# (model, prompt shape, max_new_tokens, beams), whatever the weights and the prompts.
@functools.partial(jax.jit, static_argnames=("graphdef", "method", "max_new_tokens", "beams", "eos_id"))
def _generate(graphdef, state, method, fixed, ids, mask, cache, max_new_tokens, beams, eos_id):
    model = nnx.merge(graphdef, state)

    def step(ids, mask, cache, fixed):
        return getattr(model, method)(ids, mask, cache, *fixed)

    if beams is None:  # greedy
        return _greedy_loop(functools.partial(step, fixed=fixed), ids, mask, cache, max_new_tokens, eos_id)
    return _beam_loop(step, fixed, ids, mask, cache, max_new_tokens, beams, eos_id)


def _is_eos(token, eos_id):
    return jnp.zeros(token.shape, bool) if eos_id is None else token == eos_id


def _until_all_done(max_new_tokens: int):
    """The loop condition on carries (t, done, ...): more tokens to make and an open row."""
    return lambda carry: (carry[0] < max_new_tokens) & ~jnp.all(carry[1])


def _greedy_loop(step, ids, mask, cache, max_new_tokens, eos_id):
    logits, cache = step(ids, mask, cache)
    token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    # Slots the loop does not reach (it stops when every row is done) hold EOS already.
    out = jnp.full((ids.shape[0], max_new_tokens), 0 if eos_id is None else eos_id, jnp.int32)
    one = jnp.ones((ids.shape[0], 1), bool)

    def body(carry):
        t, done, token, out, cache = carry
        logits, cache = step(token[:, None], one, cache)
        token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
        if eos_id is not None:
            token = jnp.where(done, eos_id, token)
        return t + 1, done | _is_eos(token, eos_id), token, out.at[:, t].set(token), cache

    carry = (jnp.int32(1), _is_eos(token, eos_id), token, out.at[:, 0].set(token), cache)
    return jax.lax.while_loop(_until_all_done(max_new_tokens), body, carry)[3]


def _beam_loop(step, fixed, ids, mask, cache, max_new_tokens, beams, eos_id):
    b = ids.shape[0]
    logits, cache = step(ids, mask, cache, fixed)
    vocab = logits.shape[-1]
    cache = cache.expand(jnp.repeat(jnp.arange(b), beams))
    # Beams are reordered only within their prompt's rows, so the per-prompt inputs repeat once.
    fixed = jax.tree.map(lambda x: jnp.repeat(x, beams, axis=0), fixed)
    logits = jnp.repeat(logits[:, -1], beams, axis=0)  # [B*K, V]
    finished_row = jnp.full((vocab,), -jnp.inf).at[eos_id].set(0.0) if eos_id is not None else None

    def choose(t, logits, done, scores, tokens, cache):
        """Extend every beam by every token and keep the `beams` best of each row."""
        logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        if eos_id is not None:
            logprobs = jnp.where(done[:, None], finished_row, logprobs)
        total = (scores[:, None] + logprobs).reshape(b, beams * vocab)
        scores, flat = jax.lax.top_k(total, beams)  # [B, K]
        parent = (flat // vocab + jnp.arange(b)[:, None] * beams).reshape(-1)
        token = (flat % vocab).reshape(-1).astype(jnp.int32)
        tokens = tokens[parent].at[:, t].set(token)
        return done[parent] | _is_eos(token, eos_id), scores.reshape(-1), tokens, cache.expand(parent)

    def body(carry):
        t, done, scores, tokens, cache = carry
        logits, cache = step(tokens[:, t - 1][:, None], jnp.ones((b * beams, 1), bool), cache, fixed)
        return t + 1, *choose(t, logits[:, -1], done, scores, tokens, cache)

    # Only the first copy of each prompt may start a beam: the others would duplicate it.
    scores = jnp.tile(jnp.asarray([0.0] + [-jnp.inf] * (beams - 1)), b)
    tokens = jnp.full((b * beams, max_new_tokens), 0 if eos_id is None else eos_id, jnp.int32)
    carry = (jnp.int32(1), *choose(0, logits, jnp.zeros((b * beams,), bool), scores, tokens, cache))
    _, _, scores, tokens, _ = jax.lax.while_loop(_until_all_done(max_new_tokens), body, carry)
    best = jnp.argmax(scores.reshape(b, beams), axis=1) + jnp.arange(b) * beams
    return tokens[best], scores[best]
