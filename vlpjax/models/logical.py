"""Activations named by logical axes: the models say what a dimension is ("batch", "length",
"embed", "mlp"), never which devices hold it.

`constrain(x, names)` is a no-op unless the parallel layer has installed a constraint for the
duration of a trace (`parallel.partitioning.activation_sharding`); then GSPMD is told the
layout at block boundaries instead of inferring it.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Sequence

import jax

_CONSTRAINT: contextvars.ContextVar[Callable | None] = contextvars.ContextVar(
    "vlpjax_activation_constraint", default=None
)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """`x` with its layout pinned to the logical axes `names` (one per dimension), where a
    constraint is installed."""
    rule = _CONSTRAINT.get()
    return x if rule is None else rule(x, tuple(names))


@contextlib.contextmanager
def installed(rule: Callable[[jax.Array, tuple], jax.Array]):
    """Run the enclosed tracing with `rule(x, names)` applied at every `constrain`."""
    token = _CONSTRAINT.set(rule)
    try:
        yield
    finally:
        _CONSTRAINT.reset(token)
