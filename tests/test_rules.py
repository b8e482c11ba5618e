"""Regex rules over parameter paths: frozen split, lr multipliers, weight-decay mask."""

import jax
import numpy as np
import pytest
from flax import nnx

from tests.tiny_models import tiny_dual_encoder
from vlpjax.train import rules
from vlpjax.train.state import split_model


def test_paths_read_like_module_attributes():
    paths = rules.leaf_paths(nnx.state(tiny_dual_encoder(), nnx.Param))
    assert "img/blocks/0/attn/query/kernel" in paths and "logit_scale" in paths


def test_frozen_rules_split_the_model():
    graphdef, trainable, frozen = split_model(tiny_dual_encoder(), (r"img/.*",))
    assert all(p.startswith("img/") for p in rules.leaf_paths(frozen))
    assert not any(p.startswith("img/") for p in rules.leaf_paths(trainable))
    with pytest.raises(ValueError, match="matches no parameter"):
        split_model(tiny_dual_encoder(), (r"image_tower/.*",))
    with pytest.raises(ValueError, match="every parameter is frozen"):
        split_model(tiny_dual_encoder(), (r".*",))


def test_lr_multipliers_and_decay_mask():
    state = nnx.state(tiny_dual_encoder(), nnx.Param)
    mults = dict(
        zip(
            rules.leaf_paths(state),
            jax.tree.leaves(rules.lr_multipliers(state, [(r"txt/.*", 0.1), (r".*", 2.0)])),
            strict=False,
        )
    )
    assert mults["txt/blocks/0/mlp/fc1/kernel"] == 0.1 and mults["img/patch_embed/kernel"] == 2.0
    mask = dict(zip(rules.leaf_paths(state), jax.tree.leaves(rules.decay_mask(state, (r".*bias$",))), strict=False))
    assert mask["img/patch_embed/kernel"] and not mask["img/patch_embed/bias"]


def test_zero_lr_multiplier_keeps_parameters_fixed():
    from ml_collections import ConfigDict

    from vlpjax.train.optimizer import make_optimizer

    state = nnx.state(tiny_dual_encoder(), nnx.Param)
    optim = ConfigDict(
        dict(lr=0.1, warmup_steps=0, min_lr_ratio=0.0, weight_decay=0.1, b1=0.9, b2=0.999, clip_norm=1.0)
    )
    rule_cfg = ConfigDict(dict(lr_mult=((r"txt/.*", 0.0),), no_decay=()))
    tx = make_optimizer(optim, rule_cfg, state, total_steps=10)
    grads = jax.tree.map(np.ones_like, state)
    updates, _ = tx.update(grads, tx.init(state), state)
    upd = dict(zip(rules.leaf_paths(state), jax.tree.leaves(updates), strict=False))
    assert np.all(upd["txt/blocks/0/mlp/fc1/kernel"] == 0)
    assert np.any(upd["img/patch_embed/kernel"] != 0)
