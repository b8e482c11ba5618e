"""The one trainer: every recipe runs this loop; the config picks model, objectives and data."""

from __future__ import annotations

import os
import signal
import time

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from vlpjax.data.pipeline import train_iterator
from vlpjax.objectives.registry import make_objective
from vlpjax.parallel import host_local_to_global
from vlpjax.train import checkpoints
from vlpjax.train.build import Run, answers_path, create_run, load_data, pipeline_config, save_answers
from vlpjax.train.evaluation import eval_and_log, eval_data_for, final_report
from vlpjax.train.metrics_log import MetricsLog
from vlpjax.train.state import count_params
from vlpjax.train.steps import build_mesh_step, build_pmap_step, split_for_pmap

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


class StopFlag:
    """Set by SIGTERM (preemption, scancel): the loop saves a checkpoint and exits cleanly."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


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


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train (resuming from the latest checkpoint in `workdir`), evaluate, return final metrics."""
    os.makedirs(workdir, exist_ok=True)
    process_index, process_count = jax.process_index(), jax.process_count()
    is_main = process_index == 0
    manager = checkpoints.checkpoint_manager(
        workdir, every=config.train.checkpoint_every, keep=config.train.keep_checkpoints
    )
    resuming = manager.latest_step() is not None
    # A resumed run keeps the vocabulary its answer head was trained on.
    data = load_data(config, answers_path(workdir) if resuming else None)
    run = create_run(config, data.tokenizer.vocab_size, len(data.answers))
    save_answers(workdir, data.answers)
    stepper = Stepper(config, run, make_objective(config.objectives.to_dict(), data.vocab))
    iterator = train_iterator(
        data.train_source,
        data.tokenizer,
        pipeline_config(config, process_count),
        process_index,
        process_count,
        filter_empty=config.data.name == "image_text_folder",
        answers=data.answers,
    )
    eval_data = eval_data_for(config, data)

    host_state, start = run.state, 0
    if resuming:
        host_state, data_state, start = checkpoints.restore(manager, run.state)
        iterator.set_state(data_state)
        if is_main:
            print(f"resumed from {manager.directory}/{start}")
    state = stepper.to_device_state(host_state)
    if is_main:
        print(f"parameters: {count_params(run.state.params):,} trainable, {count_params(run.state.frozen):,} frozen")

    log = MetricsLog(workdir, enabled=is_main)
    if start == 0 and config.eval.get("at_start", False):  # the untrained baseline (Flamingo: closed gates)
        eval_and_log(config, run, host_state, data, eval_data, workdir, log, 0)
    stop = StopFlag()
    steps = config.train.steps
    bar = tqdm(total=steps, initial=start, disable=not is_main, desc="train", dynamic_ncols=True)
    window_start, window_examples = time.perf_counter(), 0
    try:
        for step in range(start, steps):
            state, metrics = stepper(state, stepper.batch(next(iterator)))
            window_examples += config.train.batch_size
            done = step + 1
            if done % config.train.log_every == 0 or done == steps:
                values = {f"train/{k}": float(np.asarray(v)) for k, v in metrics.items()}
                elapsed = time.perf_counter() - window_start
                values["train/examples_per_s"] = window_examples / max(elapsed, 1e-9)
                window_start, window_examples = time.perf_counter(), 0
                log.write(done, values)
                bar.set_postfix(loss=f"{values['train/loss']:.3f}", ex_s=f"{values['train/examples_per_s']:.0f}")
            bar.update(1)
            checkpoints.save(manager, done, stepper.to_host_state(state), iterator.get_state(), force=stop.requested)
            if config.train.eval_every and done % config.train.eval_every == 0 and done != steps:
                eval_and_log(config, run, stepper.to_host_state(state), data, eval_data, workdir, log, done)
            if stop.requested:
                manager.wait_until_finished()
                if is_main:
                    print(f"\nSIGTERM: saved step {done} to {manager.directory}; exiting")
                return {}
        final_state = stepper.to_host_state(state)
        if manager.latest_step() != steps:
            checkpoints.save(manager, steps, final_state, iterator.get_state(), force=True)
        manager.wait_until_finished()
        bar.close()
        metrics = eval_and_log(config, run, final_state, data, eval_data, workdir, log, steps)
    finally:
        stop.restore()
        manager.close()
        log.close()
    if is_main:
        print(final_report(metrics, workdir, log))
    return metrics
