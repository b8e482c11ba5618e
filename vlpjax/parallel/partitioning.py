"""Logical axis names on parameters -> mesh axes, through one rule table.

Every parameter made by `vlpjax.models` carries `logical_axes` metadata such as
('embed', 'mlp'). A rule maps each logical name to a mesh axis (or None: replicated). A
dimension whose size the mesh axis does not divide stays replicated rather than failing, so
tiny test models and odd vocabularies still run on any mesh.
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

# FSDP splits the model dimension; tensor parallelism splits heads and the MLP hidden layer.
# The batch is no parameter axis: batches are placed over mesh.BATCH_AXES (parallel/batches.py).
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("conv_in", None),
    ("conv_out", "tensor"),
    ("norm", None),
)


def _mesh_size(mesh: Mesh, axes) -> int:
    axes = (axes,) if isinstance(axes, str) else axes
    size = 1
    for a in axes:
        size *= mesh.shape[a]
    return size


def logical_to_spec(
    logical_axes: Sequence[str | None] | None,
    shape: Sequence[int],
    mesh: Mesh,
    rules: Sequence[tuple[str, object]] = DEFAULT_RULES,
) -> P:
    """PartitionSpec for one array; each mesh axis is used at most once."""
    if not logical_axes:
        return P()
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match a parameter of shape {tuple(shape)}")
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, dim in zip(logical_axes, shape, strict=False):
        target = table.get(name) if name is not None else None
        names = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        if not names or used & set(names) or dim % _mesh_size(mesh, names):
            spec.append(None)
            continue
        used |= set(names)
        spec.append(names[0] if len(names) == 1 else names)
    return P(*spec)


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def state_specs(state, mesh: Mesh, rules=DEFAULT_RULES):
    """A pytree of PartitionSpecs matching an nnx.State, read from each leaf's logical_axes."""

    def spec(leaf):
        if _is_variable(leaf):
            axes = leaf.get_metadata().get("logical_axes")
            return logical_to_spec(axes, leaf.shape, mesh, rules)
        return P()

    return jax.tree.map(spec, state, is_leaf=_is_variable)


def state_shardings(state, mesh: Mesh, rules=DEFAULT_RULES):
    return jax.tree.map(
        lambda s: NamedSharding(mesh, s), state_specs(state, mesh, rules), is_leaf=lambda x: isinstance(x, P)
    )


def shard_state(state, mesh: Mesh, rules=DEFAULT_RULES):
    """Place every array of an nnx.State on the mesh according to the rule table."""
    return jax.device_put(state, state_shardings(state, mesh, rules))


def shard_model(model: nnx.Module, mesh: Mesh, rules=DEFAULT_RULES) -> nnx.Module:
    """Shard a model's state in place by the rule table and return it."""
    state = nnx.state(model)
    nnx.update(model, shard_state(state, mesh, rules))
    return model


# Activations: the batch over the batch axes, the MLP hidden layer over the tensor axis; the
# model dimension stays whole (fsdp splits parameters, not activations).
ACTIVATION_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", None),
    ("mlp", "tensor"),
    ("heads", "tensor"),
)


def activation_sharding(mesh: Mesh, rules=ACTIVATION_RULES):
    """A context in which the models' `constrain(x, names)` pins activations to the mesh."""
    from vlpjax.models import logical

    def rule(x, names):
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(names, x.shape, mesh, rules)))

    return logical.installed(rule)
