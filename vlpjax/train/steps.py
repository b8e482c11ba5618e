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
from vlpjax.taxonomy import EMBEDDING_OBJECTIVES
from vlpjax.train.accumulation import EMBEDDING_OUTPUTS, averaged_gradients, exact_embedding_gradients
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
    "prefix_len",
    "media",
    "gt_boxes",
    "gt_mask",
    "gt_labels",
)


def step_key(seed: int, step: jax.Array) -> jax.Array:
    """Masking and negative sampling at `step`: the same on every process and after a resume
    (objectives fold in the global row index, so each row draws its own numbers)."""
    return jax.random.fold_in(jax.random.key(seed), step)


def _model(graphdef, params, frozen):
    return nnx.merge(graphdef, params, jax.lax.stop_gradient(frozen))


def make_gradient_fn(graphdef, objective: Callable, shards, *, accum: int = 1, exact_embeddings: bool = False):
    """(params, frozen, batch, key) -> (metrics, gradient) of one optimizer step.

    accum > 1: the batch runs as `accum` micro-batches (train/accumulation.py), exactly
    (GradCache) when `exact_embeddings` says every objective reads only embeddings."""

    def loss_fn(params, frozen, batch, key):
        model = _model(graphdef, params, frozen)
        return objective(model(batch), batch, StepContext(model=model, key=key, shards=shards))

    def whole_batch(params, frozen, batch, key):
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, frozen, batch, key)
        return metrics, grads

    def averaged(params, frozen, batch, key):
        return averaged_gradients(lambda p, b, k: loss_fn(p, frozen, b, k), params, batch, key, accum)

    def exact(params, frozen, batch, key):
        def forward(p, micro):
            return {k: v for k, v in _model(graphdef, p, frozen)(micro).items() if k in EMBEDDING_OUTPUTS}

        def loss_on_outputs(outputs, full_batch):
            ctx = StepContext(model=_model(graphdef, params, frozen), key=key, shards=shards)
            return objective(outputs, full_batch, ctx)

        return exact_embedding_gradients(forward, loss_on_outputs, params, batch, accum)

    if accum == 1:
        return whole_batch
    return exact if exact_embeddings else averaged


def _with_norms(metrics: dict, grads, state: TrainState) -> dict:
    """The global norms the loop logs and checks: a non-finite one stops the run."""
    return {**metrics, "grad_norm": optax.global_norm(grads), "param_norm": optax.global_norm(state.params)}


def build_mesh_step(
    graphdef, tx, objective: Callable, mesh: Mesh, state_shardings, donate: bool = True, seed: int = 0, **accumulation
):
    gradients = make_gradient_fn(graphdef, objective, MeshShards(mesh), **accumulation)

    def step(state: TrainState, batch):
        with activation_sharding(mesh):  # active while jit traces the model
            metrics, grads = gradients(state.params, state.frozen, batch, step_key(seed, state.step))
        state = apply_gradients(state, grads, tx)
        return state, _with_norms(metrics, grads, state)

    replicated = NamedSharding(mesh, P())
    return jax.jit(step, out_shardings=(state_shardings, replicated), donate_argnums=(0,) if donate else ())


def build_pmap_step(graphdef, tx, objective: Callable, donate: bool = True, seed: int = 0, **accumulation):
    gradients = make_gradient_fn(graphdef, objective, AxisShards(PMAP_AXIS), **accumulation)

    def step(state: TrainState, batch):
        metrics, grads = gradients(state.params, state.frozen, batch, step_key(seed, state.step))
        grads = lax.pmean(grads, PMAP_AXIS)
        state = apply_gradients(state, grads, tx)
        return state, _with_norms(metrics, grads, state)

    return jax.pmap(step, axis_name=PMAP_AXIS, donate_argnums=(0,) if donate else ())


def accumulation_settings(config: ml_collections.ConfigDict) -> dict:
    """train.grad_accum, and whether it can be exact: every objective reads embeddings only."""
    return dict(
        accum=int(config.train.get("grad_accum", 1)),
        exact_embeddings=set(config.objectives) <= set(EMBEDDING_OBJECTIVES),
    )


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
            self.fn = build_pmap_step(
                run.graphdef, run.tx, objective, seed=config.seed, **accumulation_settings(config)
            )
        else:
            self.fn = build_mesh_step(
                run.graphdef, run.tx, objective, run.mesh, run.shardings, seed=config.seed,
                **accumulation_settings(config),
            )  # fmt: skip

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
