"""AdamW with warmup + cosine, global-norm clipping, per-parameter lr multipliers and decay mask."""

from __future__ import annotations

import jax
import optax

from vlpjax.train import rules as rule_lib


def learning_rate_schedule(optim, total_steps: int) -> optax.Schedule:
    warmup = min(int(optim.warmup_steps), max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=float(optim.lr),
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=float(optim.lr) * float(optim.min_lr_ratio),
    )


def scale_by_tree(multipliers) -> optax.GradientTransformation:
    """Multiply each update by a fixed per-leaf factor (the lr multiplier rules)."""

    def update(updates, state, params=None):
        return jax.tree.map(lambda u, m: u * m, updates, multipliers), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(optim, rules, params, total_steps: int) -> optax.GradientTransformation:
    """`params` is the trainable state only, so frozen parameters get no optimizer state."""
    paths = rule_lib.leaf_paths(params)
    rule_lib.check_patterns([p for p, _ in rules.lr_mult], paths, "lr_mult")
    parts = [optax.clip_by_global_norm(float(optim.clip_norm))] if optim.clip_norm else []
    parts += [
        optax.scale_by_adam(b1=float(optim.b1), b2=float(optim.b2)),
        optax.add_decayed_weights(float(optim.weight_decay), mask=rule_lib.decay_mask(params, rules.no_decay)),
        scale_by_tree(rule_lib.lr_multipliers(params, rules.lr_mult)),
        optax.scale_by_learning_rate(learning_rate_schedule(optim, total_steps)),
    ]
    return optax.chain(*parts)
