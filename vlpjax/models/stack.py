"""Running a stack of identical layers: rematerialisation and scan, the two switches that trade
compute and compile time for memory.

- `model.remat` wraps each layer in `jax.checkpoint` with a policy: the backward pass recomputes
  what the policy did not save.

  | name | saved inside a layer | recomputed in the backward pass |
  | --- | --- | --- |
  | `none` | every activation | nothing |
  | `block` | nothing: only the layer's input is kept | the whole layer |
  | `dots_saveable` | every matmul output | the elementwise ops (norms, activations, softmax) |
  | `nothing_saveable` | nothing (JAX's policy of that name; the same memory as `block`) | the whole layer |

- `model.scan_layers` runs the layers under `jax.lax.scan`: the layer is traced and compiled
  once however deep the stack. The parameters stay one module per layer, stacked inside the
  step, so a checkpoint has one layout whether or not the run scanned.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vlpjax import taxonomy

REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,
    "block": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
}
assert tuple(REMAT_POLICIES) == taxonomy.REMAT_POLICIES


def check_remat(name: str) -> str:
    if name not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {name!r}; choose one of {tuple(REMAT_POLICIES)}")
    return name


def _layer_fn(graphdef, call: Callable, remat: str) -> Callable:
    """(layer state, carry) -> carry, checkpointed by the remat policy."""

    def run(state, carry):
        return call(nnx.merge(graphdef, state), carry)

    if remat == "none":
        return run
    return jax.checkpoint(run, policy=REMAT_POLICIES[remat])


def run_stack(layers: Sequence[Any], carry, call: Callable, *, remat: str = "none", scan: bool = False):
    """carry -> call(layer, carry) for each layer in order; `layers` are modules (or tuples of
    modules that run together, as the two streams of a co-attention layer)."""
    if (check_remat(remat) == "none" and not scan) or not layers:
        for layer in layers:
            carry = call(layer, carry)
        return carry
    splits = [nnx.split(layer) for layer in layers]
    graphdef = splits[0][0]
    fn = _layer_fn(graphdef, call, remat)
    if not scan or len(layers) < 2:
        for _, state in splits:
            carry = fn(state, carry)
        return carry
    if any(g != graphdef for g, _ in splits[1:]):
        raise ValueError("scan_layers needs layers of one structure; this stack mixes layer types")
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[state for _, state in splits])
    carry, _ = jax.lax.scan(lambda c, state: (fn(state, c), None), carry, stacked)
    return carry
