"""Evaluators named in the recipe (`config.evals`): the loop runs exactly those, at their steps,
logged as <name>/<metric>; bad evaluator configs stop before anything is built."""

import os

import numpy as np
import pytest

from tests.test_recipes import _config
from vlpjax import taxonomy
from vlpjax.cli import GENERATE_BY_FAMILY
from vlpjax.config import ConfigError, validate
from vlpjax.errors import InvalidInput
from vlpjax.evaluate.evaluators import CAPTIONS_BY_FAMILY, EVALUATORS
from vlpjax.evaluate.retrieval import reranked_retrieval_metrics
from vlpjax.train.loop import train
from vlpjax.train.metrics_log import read_metrics


def test_every_evaluator_kind_has_an_implementation():
    assert set(EVALUATORS) == set(taxonomy.EVAL_KINDS)
    # Each family a captioning evaluator accepts can make captions, and from the command line.
    assert set(CAPTIONS_BY_FAMILY) == set(taxonomy.EVAL_KINDS["captioning"].families)
    assert set(CAPTIONS_BY_FAMILY) <= set(GENERATE_BY_FAMILY)
    for kind in taxonomy.EVAL_KINDS.values():
        assert set(kind.families) <= set(taxonomy.FAMILIES)
        assert not set(kind.options) & set(taxonomy.EVAL_OPTIONS)


def test_the_loop_runs_what_the_config_names_at_its_steps(tiny_shapes_dir, tmp_path):
    config = _config(
        "clip_shapes",
        tiny_shapes_dir,
        "--config.train.steps=6",
        "--config.evals.retrieval.every=2",
        "--config.evals.retrieval.png_queries=2",
        "--config.evals.zero_shot.enabled=False",
    )
    final = train(config, str(tmp_path / "run"))
    logged = [m for m in read_metrics(str(tmp_path / "run")) if any(k.startswith("retrieval/") for k in m)]
    assert [m["step"] for m in logged] == [2, 4, 6]
    assert not any(k.startswith("zero_shot/") for m in read_metrics(str(tmp_path / "run")) for k in m)
    assert {"retrieval/t2i_r1", "retrieval/i2t_r10"} <= set(final)
    assert (tmp_path / "run" / "retrieval_top5.png").is_file()


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.evals.retrieval.kind='bleu'", "must name a kind among"),
        ("--config.evals.retrieval.every=-2", "evals.retrieval.every must be a whole number"),
        ("--config.evals.retrieval.itm_top_k=4", "fusion only"),
        ("--config.evals.zero_shot.data={'nam': 'x'}", "['nam'] is not one of them"),
        ("--config.evals.zero_shot.templates=3", "evals.zero_shot.templates must be a list of strings"),
        ("--config.evals.retrieval.enabled=1", "evals.retrieval.enabled must be a bool"),
    ],
)
def test_bad_evaluators_are_named_before_anything_is_built(tiny_shapes_dir, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        _config("clip_shapes", tiny_shapes_dir, override, "--config.data.folder=F")


def test_an_evaluator_whose_data_cannot_serve_it_stops_the_run_before_its_first_step(tiny_shapes_dir, tmp_path):
    no_labels = "--config.evals.zero_shot.data={'name': 'interleaved_folder', 'folder': 'F'}"
    with pytest.raises(InvalidInput, match=r"evals.zero_shot \(zero_shot\): needs class labels"):
        train(_config("clip_shapes", tiny_shapes_dir, no_labels), str(tmp_path / "a"))
    no_split = "--config.evals.retrieval.split='val'"
    with pytest.raises(InvalidInput, match=r"evals.retrieval \(retrieval\): .* not 'val'"):
        train(_config("clip_shapes", tiny_shapes_dir, no_split), str(tmp_path / "b"))
    assert not os.path.exists(tmp_path / "a" / "checkpoints" / "1") and not (tmp_path / "b" / "metrics.jsonl").exists()


def test_a_recipe_with_the_old_eval_section_is_told_what_replaced_it(tiny_shapes_dir):
    config = _config("clip_shapes", tiny_shapes_dir)
    with config.unlocked():
        config.eval = {"batch_size": 8, "zero_shot": True}
    with pytest.raises(ConfigError, match="replaced by named evaluators: config.evals"):
        validate(config)


def test_an_evaluator_must_fit_the_model_family(tiny_shapes_dir):
    with pytest.raises(ConfigError, match=r"evals.caption \(few_shot\) scores the families \('flamingo',\)"):
        _config("coca_shapes", tiny_shapes_dir, "--config.evals.caption.kind='few_shot'")
    with pytest.raises(ConfigError, match=r"evals.vqa \(vqa, mode rank\) generates text: a fusion model needs"):
        _config("vqa_shapes", tiny_shapes_dir, "--config.evals.vqa.mode='rank'")
    with pytest.raises(ConfigError, match=r"evals.lm \(retrieval\) has no option 'limit'"):
        _config("lm_shapes", tiny_shapes_dir, "--config.evals.lm.kind='retrieval'")


def test_itm_reranking_counts_any_caption_of_an_image():
    """3 images x 2 captions (caption t describes image t // 2). ITC ranks every image's
    captions wrongly; an ITM that knows the pairs puts a right one first once the top k holds one."""
    owner = np.array([0, 0, 1, 1, 2, 2])
    img = np.eye(3)
    txt = np.roll(np.eye(3), 1, axis=1)[owner]  # caption of image i points at image i+1

    def oracle(t, i):
        return (owner[t] == i).astype(float)

    reranked = reranked_retrieval_metrics(img, txt, oracle, top_k=5, caption_image=owner)
    assert reranked["retrieval/itm_t2i_r1"] == 1.0 and reranked["retrieval/itm_i2t_r1"] == 1.0
    # With top_k=1 the ITM sees only ITC's wrong first choice: nothing moves.
    kept = reranked_retrieval_metrics(img, txt, oracle, top_k=1, caption_image=owner)
    assert kept["retrieval/itm_t2i_r1"] == 0.0 and kept["retrieval/itm_i2t_r1"] == 0.0
