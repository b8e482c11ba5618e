"""Train-step builders: jit over the mesh (default) and pmap. Both run the same objective.

Mesh path: the model runs in the global view (GSPMD shards it by the parameter rules) and the
objective runs under shard_map over the batch axes. pmap path: everything per device, with
the objective's collectives on axis 'batch' and the gradients averaged by lax.pmean.
"""

from __future__ import annotations

from typing import Callable

import jax
from flax import nnx
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vlpjax.objectives.registry import StepContext
from vlpjax.parallel.sharded_objective import AxisShards, MeshShards
from vlpjax.train.state import TrainState, apply_gradients

PMAP_AXIS = "batch"


def step_key(seed: int, step: jax.Array) -> jax.Array:
    """Masking and negative sampling at `step`: the same on every process and after a resume
    (objectives fold in the global row index, so each row draws its own numbers)."""
    return jax.random.fold_in(jax.random.key(seed), step)


def _loss(graphdef, params, frozen, batch, objective, key, shards):
    model = nnx.merge(graphdef, params, jax.lax.stop_gradient(frozen))
    outputs = model(batch)
    return objective(outputs, batch, StepContext(model=model, key=key, shards=shards))


def build_mesh_step(graphdef, tx, objective: Callable, mesh: Mesh, state_shardings, donate: bool = True, seed: int = 0):
    shards = MeshShards(mesh)

    def step(state: TrainState, batch):
        def loss_fn(params):
            return _loss(graphdef, params, state.frozen, batch, objective, step_key(seed, state.step), shards)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return apply_gradients(state, grads, tx), metrics

    replicated = NamedSharding(mesh, P())
    return jax.jit(step, out_shardings=(state_shardings, replicated), donate_argnums=(0,) if donate else ())


def build_pmap_step(graphdef, tx, objective: Callable, donate: bool = True, seed: int = 0):
    shards = AxisShards(PMAP_AXIS)

    def step(state: TrainState, batch):
        def loss_fn(params):
            return _loss(graphdef, params, state.frozen, batch, objective, step_key(seed, state.step), shards)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = lax.pmean(grads, PMAP_AXIS)
        return apply_gradients(state, grads, tx), metrics

    return jax.pmap(step, axis_name=PMAP_AXIS, donate_argnums=(0,) if donate else ())


def split_for_pmap(batch, devices: int):
    """[B, ...] host arrays -> [devices, B/devices, ...]."""

    def split(x):
        if x.shape[0] % devices:
            raise ValueError(f"batch of {x.shape[0]} does not split over {devices} devices")
        return x.reshape(devices, x.shape[0] // devices, *x.shape[1:])

    return jax.tree.map(split, batch)
