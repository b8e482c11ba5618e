"""A finished (or interrupted) run read back: its latest checkpoint, for `vlpjax eval`, export
and generation."""

from __future__ import annotations

import logging

import jax
import ml_collections
from flax import nnx

from vlpjax.train import checkpoints
from vlpjax.train.build import answers_path, create_run, load_data
from vlpjax.train.evaluation import Evaluations, final_report
from vlpjax.train.metrics_log import MetricsLog

logger = logging.getLogger(__name__)


def restore_run(config: ml_collections.ConfigDict, workdir: str):
    """(data, run, state, step) of the latest checkpoint in `workdir`."""
    data = load_data(config, answers_path(workdir))
    run = create_run(config, data.tokenizer.vocab_size, data.num_answers, load_init=False)
    manager = checkpoints.checkpoint_manager(
        workdir, every=1, keep=config.train.keep_checkpoints, async_save=False, read_only=True
    )
    try:
        if manager.latest_step() is None:
            raise FileNotFoundError(f"no checkpoint in {workdir!r}: train the recipe first")
        state, _, step = checkpoints.restore_newest_good(manager, run.state, with_data=False)
    finally:
        manager.close()
    return data, run, state, step


def trained_model(config: ml_collections.ConfigDict, workdir: str):
    """(model with the latest checkpoint's weights, data) for export and generation."""
    data, run, state, _ = restore_run(config, workdir)
    return nnx.merge(run.graphdef, state.params, state.frozen), data


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """`vlpjax eval`: the latest checkpoint in `workdir`, evaluated and logged at its step."""
    data, run, state, step = restore_run(config, workdir)
    log = MetricsLog(workdir, enabled=jax.process_index() == 0)
    evals = Evaluations(config, run, data, workdir, log)
    metrics = evals(state, step, evals.all())
    log.close()
    if jax.process_index() == 0:
        logger.info("%s", final_report(metrics, log, evals.pngs()))
    return metrics
