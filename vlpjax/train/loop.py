"""The one trainer: every recipe runs this loop; the config picks model, objectives and data."""

from __future__ import annotations

import json
import os
import signal
import time

import jax
import ml_collections
import numpy as np
from flax import nnx
from tqdm import tqdm

from vlpjax.data.interleaved import DocumentTransform
from vlpjax.data.pipeline import eval_arrays, train_iterator, vqa_eval_arrays
from vlpjax.evaluate.generation import evaluate_flamingo
from vlpjax.evaluate.perplexity import evaluate_documents, evaluate_lm
from vlpjax.evaluate.report import metrics_table
from vlpjax.evaluate.runner import Inference, evaluate, evaluate_vqa, png_path
from vlpjax.objectives.registry import make_objective
from vlpjax.parallel import host_local_to_global
from vlpjax.train import checkpoints
from vlpjax.train.build import Data, Run, create_run, load_data, pipeline_config
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
ANSWERS_FILE = "answers.json"
GENERATIVE_TASKS = ("text", "interleaved")  # evaluated by generating / scoring text, not by embeddings


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


def _eval_data(config: ml_collections.ConfigDict, data: Data) -> dict | None:
    """The in-memory test arrays; generative tasks read their test examples as they go."""
    if config.data.task in GENERATIVE_TASKS:
        return None
    pipeline = pipeline_config(config, jax.process_count())
    if config.data.task == "vqa":
        return vqa_eval_arrays(data.test_source, data.tokenizer, pipeline)
    return eval_arrays(data.test_source, data.tokenizer, pipeline)


def _generative_metrics(config, run, state, data) -> dict:
    model = nnx.merge(run.graphdef, state.params, state.frozen)
    if config.data.task == "text":
        return evaluate_lm(model, data.tokenizer, data.test_source, config.data.text_len, config.eval.batch_size)
    if config.data.name == "interleaved_folder":  # documents: no captions or questions to generate for
        pipeline = pipeline_config(config, jax.process_count())
        transform = DocumentTransform(
            data.tokenizer, pipeline.image_size, pipeline.text_len, pipeline.chunks, pipeline.lm_vocab_size
        )
        return evaluate_documents(model, transform, data.test_source, config.eval.batch_size)
    shapes = config.data.name == "synthetic_shapes"
    return evaluate_flamingo(
        model, data.tokenizer, data.train_source, data.test_source, config.eval, config.data.image_size, shapes
    )


def _eval_and_log(config, run, state, data, eval_data, workdir, log, step) -> dict:
    if config.data.task in GENERATIVE_TASKS:
        metrics = _generative_metrics(config, run, state, data)
        log.write(step, metrics)
        return metrics
    inference = Inference(run.graphdef, state.params, state.frozen, run.mesh, config.eval.batch_size)
    if config.data.task == "vqa":
        metrics = evaluate_vqa(inference, eval_data, data.answers)
    else:
        metrics = evaluate(
            inference,
            eval_data,
            data.tokenizer,
            config.data.text_len,
            zero_shot=config.eval.zero_shot and config.data.name == "synthetic_shapes",
            itm_top_k=config.eval.itm_top_k if config.model.family == "fusion" else 0,
            png_path=png_path(workdir) if jax.process_index() == 0 else None,
            png_queries=config.eval.png_queries,
        )
    log.write(step, metrics)
    return metrics


def _answers_path(workdir: str) -> str:
    return os.path.join(workdir, ANSWERS_FILE)


def _save_answers(workdir: str, answers: list[str]) -> None:
    """The answer vocabulary, index = VQA head output: what a user of the checkpoint needs."""
    if answers and jax.process_index() == 0:
        with open(_answers_path(workdir), "w") as f:
            json.dump(answers, f, indent=0)


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
    data = load_data(config, _answers_path(workdir) if resuming else None)
    run = create_run(config, data.tokenizer.vocab_size, len(data.answers))
    _save_answers(workdir, data.answers)
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
    eval_data = _eval_data(config, data)

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
        _eval_and_log(config, run, host_state, data, eval_data, workdir, log, 0)
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
                _eval_and_log(config, run, stepper.to_host_state(state), data, eval_data, workdir, log, done)
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
        metrics = _eval_and_log(config, run, final_state, data, eval_data, workdir, log, steps)
    finally:
        stop.restore()
        manager.close()
        log.close()
    if is_main:
        print(final_report(metrics, workdir, log))
    return metrics


def final_report(metrics: dict, workdir: str, log: MetricsLog) -> str:
    lines = ["", metrics_table(metrics), ""]
    if os.path.exists(png_path(workdir)):
        lines.append(f"top-5 retrievals: {png_path(workdir)}")
    lines.append(f"metrics:          {log.path}")
    lines.append(f"tensorboard:      {log.tensorboard_dir}  (tensorboard --logdir {log.tensorboard_dir})")
    return "\n".join(lines)


def restore_run(config: ml_collections.ConfigDict, workdir: str):
    """(data, run, state, step) of the latest checkpoint in `workdir`."""
    data = load_data(config, _answers_path(workdir))
    run = create_run(config, data.tokenizer.vocab_size, len(data.answers))
    manager = checkpoints.checkpoint_manager(workdir, every=1, keep=config.train.keep_checkpoints, async_save=False)
    try:
        if manager.latest_step() is None:
            raise FileNotFoundError(f"no checkpoint in {workdir!r}: train the recipe first")
        state, _, step = checkpoints.restore(manager, run.state, with_data=False)
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
    eval_data = _eval_data(config, data)
    log = MetricsLog(workdir, enabled=jax.process_index() == 0)
    metrics = _eval_and_log(config, run, state, data, eval_data, workdir, log, step)
    log.close()
    if jax.process_index() == 0:
        print(final_report(metrics, workdir, log))
    return metrics
