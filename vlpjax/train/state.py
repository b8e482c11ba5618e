"""The train state: trainable and frozen parameters, optimizer state over trainable ones only."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import optax
from flax import nnx

from vlpjax.errors import InvalidInput
from vlpjax.train import rules as rule_lib


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any  # nnx.State of trainable parameters
    frozen: Any  # nnx.State of everything else the model holds (frozen params, buffers)
    opt_state: Any


def split_model(model: nnx.Module, frozen_patterns):
    """(graphdef, trainable, frozen), checking that every freeze rule matches something."""
    all_paths = rule_lib.leaf_paths(nnx.state(model, nnx.Param))
    rule_lib.check_patterns(frozen_patterns, all_paths, "frozen")
    graphdef, trainable, frozen = nnx.split(model, rule_lib.trainable_filter(frozen_patterns), ...)
    if not jax.tree.leaves(trainable):
        raise InvalidInput("every parameter is frozen: nothing to train")
    return graphdef, trainable, frozen


def count_params(tree) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(tree))


def apply_gradients(state: TrainState, grads, tx: optax.GradientTransformation) -> TrainState:
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state)
