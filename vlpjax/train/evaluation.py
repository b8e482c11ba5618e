"""Evaluation inside a run: the evaluators its config names (`config.evals`), at their steps,
logged as `<evaluator name>/<metric>`, and the final report."""

from __future__ import annotations

import os

import jax
import ml_collections

from vlpjax.evaluate.context import EvalContext
from vlpjax.evaluate.evaluators import png_path, run_evaluator
from vlpjax.evaluate.preflight import check_evaluators
from vlpjax.evaluate.report import metrics_table
from vlpjax.train.build import Data, Run, pipeline_config
from vlpjax.train.metrics_log import MetricsLog


class Evaluations:
    """The enabled evaluators of a run: which are due at a step, and running them. Their data
    is opened and checked here, before the run's first step."""

    def __init__(self, config: ml_collections.ConfigDict, run: Run, data: Data, workdir: str, log: MetricsLog):
        self.log, self.workdir = log, workdir
        self.specs = {name: spec for name, spec in (config.get("evals") or {}).items() if spec.enabled}
        write_pngs = jax.process_index() == 0 and log.writable  # not on a read-only `vlpjax eval`
        pipeline = pipeline_config(config, jax.process_count())
        self.ctx = EvalContext(config, run.graphdef, run.mesh, data, pipeline, workdir, write_pngs)
        check_evaluators(self.ctx, self.specs)

    def at_start(self) -> list[str]:
        """Evaluators that also score the untrained model (Flamingo: closed gates)."""
        return [name for name, spec in self.specs.items() if spec.at_start]

    def due(self, step: int) -> list[str]:
        """Evaluators whose `every` divides `step` (the final evaluation runs them all anyway)."""
        return [name for name, spec in self.specs.items() if spec.every and step % spec.every == 0]

    def all(self) -> list[str]:
        return list(self.specs)

    def __call__(self, state, step: int, names: list[str]) -> dict:
        """Run `names` on the state's weights and log their metrics at `step`."""
        self.ctx.set_weights(state.params, state.frozen)
        metrics = {}
        try:
            for name in names:
                metrics.update(run_evaluator(self.ctx, name, self.specs[name]))
        finally:
            self.ctx.release()
        if metrics:
            self.log.write(step, metrics)
        return metrics

    def pngs(self) -> list[str]:
        """The top-5 retrieval pictures this run's evaluators wrote."""
        paths = [png_path(self.workdir, name) for name, spec in self.specs.items() if spec.get("png_queries")]
        return [p for p in paths if os.path.isfile(p)]


def final_report(metrics: dict, log: MetricsLog, pngs: list[str]) -> str:
    lines = ["", metrics_table(metrics) if metrics else "(no evaluators enabled: config.evals)", ""]
    for path in pngs:
        lines.append(f"top-5 retrievals: {path}")
    if not log.writable:
        lines.append("metrics:          logged above (the workdir cannot be written)")
        return "\n".join(lines)
    lines.append(f"metrics:          {log.path}")
    lines.append(f"tensorboard:      {log.tensorboard_dir}  (tensorboard --logdir {log.tensorboard_dir})")
    return "\n".join(lines)
