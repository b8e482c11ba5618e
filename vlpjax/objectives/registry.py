"""The objective set a config names, combined into one weighted loss.

Each objective is `fn(outputs, batch, axis_name, **options) -> (loss, metrics)`; the total is
the weighted sum, and every objective's metrics are reported next to it.
"""
from __future__ import annotations

from typing import Callable, Mapping

from vlpjax.objectives.contrastive import sigmoid_loss, softmax_loss


def itc(outputs, batch, axis_name, *, chunked: bool = False):
    """Image-text contrastive: sigmoid when the model has a logit bias (SigLIP), else softmax."""
    if "logit_bias" in outputs:
        return sigmoid_loss(outputs["img_emb"], outputs["txt_emb"], outputs["logit_scale"], outputs["logit_bias"], axis_name=axis_name, chunked=chunked)
    if chunked:
        raise ValueError("objectives.itc.chunked applies to the sigmoid loss only (model.contrastive='sigmoid')")
    return softmax_loss(outputs["img_emb"], outputs["txt_emb"], outputs["logit_scale"], axis_name=axis_name)


OBJECTIVES: dict[str, Callable] = {"itc": itc}


def make_objective(spec: Mapping[str, Mapping]) -> Callable:
    """{'itc': {'weight': 1.0, ...options}} -> objective(outputs, batch, axis_name)."""
    parts = []
    for name, options in spec.items():
        if name not in OBJECTIVES:
            raise ValueError(f"unknown objective {name!r}; available: {sorted(OBJECTIVES)}")
        options = dict(options)
        weight = float(options.pop("weight", 1.0))
        parts.append((name, weight, OBJECTIVES[name], options))

    def objective(outputs, batch, axis_name):
        total, metrics = 0.0, {}
        for name, weight, fn, options in parts:
            loss, m = fn(outputs, batch, axis_name, **options)
            total = total + weight * loss
            metrics.update(m)
            metrics[f"{name}/loss"] = loss
        metrics["loss"] = total
        return total, metrics

    return objective
