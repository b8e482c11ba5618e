"""The one trainer: every recipe runs this loop; the config picks model, objectives and data.

`train` reads top to bottom: open the run (resuming if the workdir has a checkpoint), run the
steps, save the final checkpoint, evaluate. A non-finite loss, gradient norm or parameter norm
stops the run before it reaches a checkpoint, so the newest checkpoint on disk is always finite.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from vlpjax.data.builders import dataset_kind
from vlpjax.data.pipeline import train_iterator
from vlpjax.errors import UserError
from vlpjax.objectives.registry import make_objective
from vlpjax.train import checkpoints
from vlpjax.train.build import Data, Run, answers_path, create_run, load_data, pipeline_config, save_answers
from vlpjax.train.evaluation import Evaluations, final_report
from vlpjax.train.metrics_log import MetricsLog
from vlpjax.train.state import count_params
from vlpjax.train.steps import Stepper

logger = logging.getLogger(__name__)

# Step metrics that must stay finite; the first non-finite one stops the run.
GUARDED_METRICS = ("loss", "grad_norm", "param_norm")


class NonFiniteError(UserError, RuntimeError):
    """Training produced a non-finite loss, gradient norm or parameter norm."""


class StopFlag:
    """SIGTERM (preemption, scancel) asks the loop to save a checkpoint and exit cleanly.

    In a job of several processes the signal may reach one process, or each at another step, and
    a process that saved alone would wait in the save's collectives while its peers train on.
    There JAX's preemption service, which catches SIGTERM itself, spreads the notice and names
    one step (the furthest any process has reported, plus one) at which every process stops. Its
    counters start at 0 in each run, so it is told the steps of this run (1, 2, ...), not the
    global step: a notice during a resumed run's start-up then stops it after its first step.
    """

    def __init__(self, start: int = 0):
        from jax._src import distributed as jax_distributed

        self._received, self._start = False, start
        self._sync = jax.process_count() > 1 and jax_distributed.global_state.preemption_sync_manager is not None
        if jax.process_count() > 1 and not self._sync:
            logger.warning("jax_enable_preemption_service is off: SIGTERM stops this process alone")
        self._previous = None if self._sync else signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self._received = True

    def stop_after(self, step: int) -> bool:
        """Whether to save and stop once `step` is done. Called once per step, on every process."""
        if self._sync:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step - self._start)
        return self._received

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


@dataclasses.dataclass
class OpenRun:
    """What a training run holds between its start and its final evaluation."""

    config: ml_collections.ConfigDict
    workdir: str
    data: Data
    run: Run
    stepper: Stepper
    iterator: Any
    evals: Evaluations
    manager: Any  # orbax CheckpointManager
    log: MetricsLog
    state: Any  # device-side TrainState (replicated under pmap)
    start: int

    @property
    def is_main(self) -> bool:
        return jax.process_index() == 0

    def host_state(self):
        return self.stepper.to_host_state(self.state)

    def evaluate(self, step: int, names: list[str]) -> dict:
        return self.evals(self.host_state(), step, names)


def open_run(config: ml_collections.ConfigDict, workdir: str) -> OpenRun:
    """Data, model, step and iterator, restored from the latest checkpoint in `workdir` if any."""
    os.makedirs(workdir, exist_ok=True)
    process_index, process_count = jax.process_index(), jax.process_count()
    manager = checkpoints.checkpoint_manager(
        workdir, every=config.train.checkpoint_every, keep=config.train.keep_checkpoints
    )
    resuming = manager.latest_step() is not None
    # A resumed run keeps the vocabulary its answer head was trained on.
    data = load_data(config, answers_path(workdir) if resuming else None)
    run = create_run(config, data.tokenizer.vocab_size, data.num_answers, sep_id=data.tokenizer.sep_id)
    save_answers(workdir, data.answers)
    stepper = Stepper(config, run, make_objective(config.objectives.to_dict(), data.vocab))
    iterator = train_iterator(
        data.train_source,
        data.tokenizer,
        pipeline_config(config, process_count),
        process_index,
        process_count,
        filter_empty=dataset_kind(config.data.name).filter_empty,
        answers=data.answers,
    )
    host_state, start = run.state, 0
    if resuming:
        host_state, data_state, start = checkpoints.restore_newest_good(manager, run.state, set_aside=True)
        iterator.set_state(data_state)
        logger.info("resumed from %s/%d", manager.directory, start)
    logger.info(
        "parameters: %s trainable, %s frozen",
        f"{count_params(run.state.params):,}",
        f"{count_params(run.state.frozen):,}",
    )
    log = MetricsLog(workdir, enabled=process_index == 0)
    state = stepper.to_device_state(host_state)
    evals = Evaluations(config, run, data, workdir, log)
    return OpenRun(config, workdir, data, run, stepper, iterator, evals, manager, log, state, start)


def first_non_finite(metrics: dict) -> tuple[str, float] | None:
    """(name, value) of the first guarded metric that is NaN or infinite, else None."""
    for name in GUARDED_METRICS:
        if name in metrics:
            value = float(np.asarray(metrics[name]))
            if not math.isfinite(value):
                return name, value
    return None


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


class FiniteGuard:
    """Checks each step's metrics one step late, so the host never waits for the step it just
    dispatched; `settle` checks at once, before anything is saved or evaluated."""

    def __init__(self, manager):
        self.manager = manager
        self._pending: tuple[int, dict] | None = None

    def push(self, done: int, metrics: dict) -> None:
        self.settle()
        self._pending = (done, metrics)

    def settle(self) -> None:
        if self._pending is None:
            return
        done, metrics = self._pending
        self._pending = None
        bad = first_non_finite(metrics)
        if bad:
            raise NonFiniteError(f"training diverged at step {done}: train/{bad[0]} is {bad[1]}; {self.last_good()}")

    def last_good(self) -> str:
        latest = self.manager.latest_step()
        if latest is None:
            return "stopped before any checkpoint was written"
        return f"stopped; the last good checkpoint is {self.manager.directory}/{latest} (lower optim.lr and resume)"


class SaveWatcher:
    """The newest asynchronous save started; its failure is raised as soon as it is known."""

    def __init__(self, manager):
        self.manager = manager
        self.step: int | None = None

    def check(self, wait: bool = False) -> None:
        if self.step is not None:
            checkpoints.raise_failed_saves(self.manager, self.step, wait=wait)


def save_checkpoint(r: OpenRun, guard: FiniteGuard, saves: SaveWatcher, done: int, *, force: bool = False) -> None:
    """Write step `done` if it is due (or forced), only once its metrics and every parameter
    are known to be finite: a diverged run never pushes a good checkpoint out of rotation."""
    if not (force or r.manager.should_save(done)):
        return
    guard.settle()
    saves.check(wait=True)  # orbax waits for the previous save anyway; name it if it failed
    host_state = r.host_state()
    if not bool(_all_finite(host_state.params)):
        raise NonFiniteError(f"training diverged at step {done}: a parameter is not finite; {guard.last_good()}")
    checkpoints.save(r.manager, done, host_state, r.iterator.get_state(), force=force)
    saves.step = done


class ThroughputWindow:
    """Examples per second since the last log line."""

    def __init__(self):
        self.start, self.examples = time.perf_counter(), 0

    def add(self, examples: int) -> None:
        self.examples += examples

    def rate(self) -> float:
        now = time.perf_counter()
        rate = self.examples / max(now - self.start, 1e-9)
        self.start, self.examples = now, 0
        return rate


def log_train_metrics(r: OpenRun, done: int, metrics: dict, window: ThroughputWindow, bar: tqdm) -> None:
    values = {f"train/{k}": float(np.asarray(v)) for k, v in metrics.items()}
    values["train/examples_per_s"] = window.rate()
    r.log.write(done, values)
    bar.set_postfix(loss=f"{values['train/loss']:.3f}", ex_s=f"{values['train/examples_per_s']:.0f}")


def run_steps(r: OpenRun, stop: StopFlag) -> bool:
    """Train from `r.start` to `train.steps`; False when SIGTERM ended the run early."""
    cfg = r.config.train
    guard, saves, window = FiniteGuard(r.manager), SaveWatcher(r.manager), ThroughputWindow()
    # A context manager: the bar is closed before an error message is printed, not after it.
    with tqdm(total=cfg.steps, initial=r.start, disable=not r.is_main, desc="train", dynamic_ncols=True) as bar:
        for step in range(r.start, cfg.steps):
            r.state, metrics = r.stepper(r.state, r.stepper.batch(next(r.iterator)))
            window.add(cfg.batch_size)
            done = step + 1
            saves.check()
            guard.push(done, metrics)
            if done % cfg.log_every == 0 or done == cfg.steps:
                guard.settle()
                log_train_metrics(r, done, metrics, window, bar)
            bar.update(1)
            stopping = stop.stop_after(done)
            save_checkpoint(r, guard, saves, done, force=stopping)
            if stopping:  # before any evaluation: the grace period after SIGTERM is short
                saves.check(wait=True)
                logger.info("SIGTERM: saved step %d to %s; exiting", done, r.manager.directory)
                return False
            due = r.evals.due(done) if done != cfg.steps else []
            if due:
                guard.settle()
                r.evaluate(done, due)
        guard.settle()
        if r.manager.latest_step() != cfg.steps:
            save_checkpoint(r, guard, saves, cfg.steps, force=True)
        saves.check(wait=True)
        return True


def _close(r: OpenRun) -> None:
    """Close the checkpoint manager and the log; a save error here was already reported above."""
    try:
        r.manager.close()
    except Exception as err:  # noqa: BLE001 - do not hide the error that ended the run
        logger.warning("closing the checkpoint manager: %s: %s", type(err).__name__, err)
    r.log.close()


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train (resuming from the latest checkpoint in `workdir`), evaluate, return final metrics."""
    r = open_run(config, workdir)
    stop = StopFlag(r.start)
    try:
        if r.start == 0 and r.evals.at_start():  # the untrained baseline (Flamingo: closed gates)
            r.evaluate(0, r.evals.at_start())
        if not run_steps(r, stop):
            return {}
        metrics = r.evaluate(config.train.steps, r.evals.all())
    finally:
        stop.restore()
        _close(r)
    if r.is_main:
        logger.info("%s", final_report(metrics, r.log, r.evals.pngs()))
    return metrics
