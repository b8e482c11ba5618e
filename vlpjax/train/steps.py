"""Train-step builders: jit over the mesh (default) and pmap. Both run the same objective.

Mesh path: the model runs in the global view (GSPMD shards it by the parameter rules) and the
objective runs under shard_map over the batch axes. pmap path: everything per device, with
the objective's collectives on axis 'batch' and the gradients averaged by lax.pmean.
"""

from __future__ import annotations

from typing import Callable

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vlpjax.errors import InvalidInput
from vlpjax.objectives.registry import StepContext
from vlpjax.parallel import host_local_to_global
from vlpjax.parallel.partitioning import activation_sharding
from vlpjax.parallel.sharded_objective import AxisShards, MeshShards
from vlpjax.train.build import Run
from vlpjax.train.state import TrainState, apply_gradients

PMAP_AXIS = "batch"
# The batch entries a step reads; other pipeline outputs (labels, raw texts) stay on the host.
DATA_KEYS = (
    "image",
    "text_ids",
    "text_mask",
    "image_id",
    "regions",
    "boxes",
    "region_mask",
    "question_ids",
    "question_mask",
    "answer_scores",
    "media",
)


def step_key(seed: int, step: jax.Array) -> jax.Array:
    """Masking and negative sampling at `step`: the same on every process and after a resume
    (objectives fold in the global row index, so each row draws its own numbers)."""
    return jax.random.fold_in(jax.random.key(seed), step)


def _loss(graphdef, params, frozen, batch, objective, key, shards):
    model = nnx.merge(graphdef, params, jax.lax.stop_gradient(frozen))
    outputs = model(batch)
    return objective(outputs, batch, StepContext(model=model, key=key, shards=shards))


def _with_norms(metrics: dict, grads, state: TrainState) -> dict:
    """The global norms the loop logs and checks: a non-finite one stops the run."""
    return {**metrics, "grad_norm": optax.global_norm(grads), "param_norm": optax.global_norm(state.params)}


def build_mesh_step(graphdef, tx, objective: Callable, mesh: Mesh, state_shardings, donate: bool = True, seed: int = 0):
    shards = MeshShards(mesh)

    def step(state: TrainState, batch):
        def loss_fn(params):
            return _loss(graphdef, params, state.frozen, batch, objective, step_key(seed, state.step), shards)

        with activation_sharding(mesh):  # active while jit traces the model
            (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        state = apply_gradients(state, grads, tx)
        return state, _with_norms(metrics, grads, state)

    replicated = NamedSharding(mesh, P())
    return jax.jit(step, out_shardings=(state_shardings, replicated), donate_argnums=(0,) if donate else ())


def build_pmap_step(graphdef, tx, objective: Callable, donate: bool = True, seed: int = 0):
    shards = AxisShards(PMAP_AXIS)

    def step(state: TrainState, batch):
        def loss_fn(params):
            return _loss(graphdef, params, state.frozen, batch, objective, step_key(seed, state.step), shards)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = lax.pmean(grads, PMAP_AXIS)
        state = apply_gradients(state, grads, tx)
        return state, _with_norms(metrics, grads, state)

    return jax.pmap(step, axis_name=PMAP_AXIS, donate_argnums=(0,) if donate else ())


def split_for_pmap(batch, devices: int):
    """[B, ...] host arrays -> [devices, B/devices, ...]."""

    def split(x):
        if x.shape[0] % devices:
            raise InvalidInput(f"batch of {x.shape[0]} does not split over {devices} devices")
        return x.reshape(devices, x.shape[0] // devices, *x.shape[1:])

    return jax.tree.map(split, batch)


def _unreplicate(tree):
    return jax.tree.map(lambda x: x[0], tree)


class Stepper:
    """Hides the difference between the mesh-jit and the pmap step from the loop."""

    def __init__(self, config: ml_collections.ConfigDict, run: Run, objective):
        self.pmap = config.train.parallelism == "pmap"
        self.run = run
        if self.pmap:
            self.devices = jax.local_devices()
            self.fn = build_pmap_step(run.graphdef, run.tx, objective, seed=config.seed)
        else:
            self.fn = build_mesh_step(run.graphdef, run.tx, objective, run.mesh, run.shardings, seed=config.seed)

    def to_device_state(self, state):
        if not self.pmap:
            return state
        copies = len(self.devices)  # pmap takes one copy per local device along a new leading axis
        return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (copies, *np.shape(x))), state)

    def to_host_state(self, state):
        """The form checkpoints hold, the same for both modes."""
        return _unreplicate(state) if self.pmap else state

    def batch(self, host_batch):
        host_batch = {k: v for k, v in host_batch.items() if k in DATA_KEYS}
        if self.pmap:
            return split_for_pmap(host_batch, len(self.devices))
        return host_local_to_global(host_batch, self.run.mesh)

    def __call__(self, state, batch):
        state, metrics = self.fn(state, batch)
        return state, (_unreplicate(metrics) if self.pmap else metrics)
