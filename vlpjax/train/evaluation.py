"""Evaluation inside a run: the test data a recipe is scored on, its metrics, the final report."""

from __future__ import annotations

import os

import jax
import ml_collections
from flax import nnx

from vlpjax.data.builders import dataset_kind
from vlpjax.data.interleaved import DocumentTransform
from vlpjax.data.pipeline import eval_arrays, vqa_eval_arrays
from vlpjax.evaluate.generation import evaluate_flamingo
from vlpjax.evaluate.perplexity import evaluate_documents, evaluate_lm
from vlpjax.evaluate.report import metrics_table
from vlpjax.evaluate.runner import Inference, evaluate, evaluate_vqa, png_path
from vlpjax.taxonomy import TASKS
from vlpjax.train.build import Data, pipeline_config
from vlpjax.train.metrics_log import MetricsLog


def eval_data_for(config: ml_collections.ConfigDict, data: Data) -> dict | None:
    """The in-memory test arrays; generative tasks read their test examples as they go."""
    if TASKS[config.data.task].generative:
        return None
    pipeline = pipeline_config(config, jax.process_count())
    if config.data.task == "vqa":
        return vqa_eval_arrays(data.test_source, data.tokenizer, pipeline)
    return eval_arrays(data.test_source, data.tokenizer, pipeline)


def generative_metrics(config, run, state, data) -> dict:
    model = nnx.merge(run.graphdef, state.params, state.frozen)
    if config.data.task == "text":
        return evaluate_lm(model, data.tokenizer, data.test_source, config.data.text_len, config.eval.batch_size)
    kind = dataset_kind(config.data.name)
    if kind.documents:  # no captions or questions to generate for
        pipeline = pipeline_config(config, jax.process_count())
        transform = DocumentTransform(
            data.tokenizer, pipeline.image_size, pipeline.text_len, pipeline.chunks, pipeline.lm_vocab_size
        )
        return evaluate_documents(model, transform, data.test_source, config.eval.batch_size)
    return evaluate_flamingo(
        model,
        data.tokenizer,
        data.train_source,
        data.test_source,
        config.eval,
        config.data.image_size,
        kind.shapes_labels,
    )


def eval_and_log(config, run, state, data, eval_data, workdir, log, step) -> dict:
    if TASKS[config.data.task].generative:
        metrics = generative_metrics(config, run, state, data)
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
            zero_shot=config.eval.zero_shot and dataset_kind(config.data.name).shapes_labels,
            itm_top_k=config.eval.itm_top_k if config.model.family == "fusion" else 0,
            png_path=png_path(workdir) if jax.process_index() == 0 and log.writable else None,  # not on a read-only run
            png_queries=config.eval.png_queries,
        )
    log.write(step, metrics)
    return metrics


def final_report(metrics: dict, workdir: str, log: MetricsLog) -> str:
    lines = ["", metrics_table(metrics), ""]
    if os.path.isfile(png_path(workdir)):
        lines.append(f"top-5 retrievals: {png_path(workdir)}")
    if not log.writable:
        lines.append("metrics:          logged above (the workdir cannot be written)")
        return "\n".join(lines)
    lines.append(f"metrics:          {log.path}")
    lines.append(f"tensorboard:      {log.tensorboard_dir}  (tensorboard --logdir {log.tensorboard_dir})")
    return "\n".join(lines)
