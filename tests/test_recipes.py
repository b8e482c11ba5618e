"""The shapes recipes run through the one trainer: siglip (chunked sigmoid), LiT (frozen tower), the
fusion family (ALBEF, METER, ViLT, UNITER on regions) and VQA fine-tuning from a checkpoint."""

import json
import os
from collections import Counter

import jax
import numpy as np
import pytest

from tests.shapes_fixture import TINY_DATA
from vlpjax.config import load_config
from vlpjax.data.builders import load_builder
from vlpjax.train import checkpoints
from vlpjax.train.loop import train
from vlpjax.train.metrics_log import read_metrics
from vlpjax.train.restore import evaluate_workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(recipe, data_dir, *overrides):
    path = os.path.join(ROOT, "configs", f"{recipe}.py") + ":tiny"
    return load_config(
        path,
        [f"--config.data.data_dir={data_dir}", "--config.train.steps=4", *overrides],
    )


def _test_split(data_dir):
    return load_builder("synthetic_shapes", data_dir, **TINY_DATA).as_data_source(split="test")


def _texts(values):
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_siglip_recipe_trains(tiny_shapes_dir, tmp_path):
    metrics = train(_config("siglip_shapes", tiny_shapes_dir), str(tmp_path / "siglip"))
    assert "retrieval/t2i_r1" in metrics
    losses = [m["train/loss"] for m in read_metrics(str(tmp_path / "siglip")) if "train/loss" in m]
    assert len(losses) >= 2 and np.isfinite(losses).all()
    # It learned: 9.8 -> 5.0 when this was written; with lr 1e-12, batch noise alone, 9.8 -> 9.4.
    assert losses[-1] < 0.8 * losses[0]


def test_lit_recipe_freezes_the_loaded_image_tower(tiny_shapes_dir, tmp_path):
    clip_dir = str(tmp_path / "clip")
    train(_config("clip_shapes", tiny_shapes_dir), clip_dir)
    clip, _ = checkpoints.restore_params(clip_dir)
    clip_img = {k: v for k, v in _flat(clip["params"]).items() if k.startswith("['img']")}
    assert clip_img

    lit_dir = str(tmp_path / "lit")
    train(_config("lit_shapes", tiny_shapes_dir, f"--config.init.checkpoint={clip_dir}"), lit_dir)
    lit, _ = checkpoints.restore_params(lit_dir)
    frozen, trainable = _flat(lit["frozen"]), _flat(lit["params"])
    # The whole image tower is frozen, holds the clip run's values bit for bit, and trains no more.
    assert set(frozen) == set(clip_img)
    for key, value in clip_img.items():
        np.testing.assert_array_equal(frozen[key], value)
    assert not any(k.startswith("['img']") for k in trainable)
    # Adam moments exist for the trainable leaves only: two per trainable leaf, none for frozen.
    opt_leaves = [np.asarray(x) for x in jax.tree.leaves(lit["opt_state"])]
    moment_leaves = [x for x in opt_leaves if x.ndim > 0 or x.dtype != np.int32]
    trainable_sizes = sorted(int(v.size) for v in trainable.values())
    assert len(moment_leaves) == 2 * len(trainable)
    assert sorted(int(x.size) for x in moment_leaves) == sorted(trainable_sizes * 2)


FUSION_METRICS = ("retrieval/t2i_r1", "retrieval/itm_t2i_r1", "retrieval/itm_i2t_r1")
FUSION_TRAIN_METRICS = (
    "train/itc/loss",
    "train/itm/loss",
    "train/itm/accuracy",
    "train/mlm/loss",
    "train/mlm/masked_tokens",
)


def _train_metrics(workdir):
    logged = [m for m in read_metrics(workdir) if "train/loss" in m]
    assert logged
    return logged[-1]


@pytest.mark.parametrize("recipe", ["meter_shapes", "vilt_shapes", "uniter_regions"])
def test_fusion_recipes_train_and_rerank(tiny_shapes_dir, tmp_path, recipe):
    workdir = str(tmp_path / recipe)
    metrics = train(_config(recipe, tiny_shapes_dir), workdir)
    assert all(k in metrics for k in FUSION_METRICS)
    last = _train_metrics(workdir)
    assert all(np.isfinite(last[k]) for k in FUSION_TRAIN_METRICS) and last["train/mlm/masked_tokens"] > 0


def test_albef_pretrains_then_vqa_fine_tunes_from_its_checkpoint(tiny_shapes_dir, tmp_path):
    albef_dir = str(tmp_path / "albef")
    metrics = train(_config("albef_shapes", tiny_shapes_dir), albef_dir)
    assert all(k in metrics for k in FUSION_METRICS)
    albef, _ = checkpoints.restore_params(albef_dir)

    vqa_dir = str(tmp_path / "vqa")
    # 40 steps: after 4 the new answer head is still random (0.02, below any constant answer).
    vqa_config = _config(
        "vqa_shapes", tiny_shapes_dir, f"--config.init.checkpoint={albef_dir}", "--config.train.steps=40"
    )
    metrics = train(vqa_config, vqa_dir)
    test = _test_split(tiny_shapes_dir)
    answers = [a for i in range(len(test)) for a in _texts(test[i]["answers"])]
    assert metrics["vqa/questions"] == len(answers) > 64  # several questions per test image
    # Fine-tuned, it beats answering every test question with the test split's most common
    # answer (0.30 against 0.17 when this was written).
    majority = Counter(answers).most_common(1)[0][1] / len(answers)
    assert metrics["vqa/accuracy"] > majority
    assert evaluate_workdir(vqa_config, vqa_dir) == metrics  # `vlpjax eval` rebuilds the same answer head and data
    answers = json.load(open(os.path.join(vqa_dir, "answers.json")))
    assert {"yes", "no", "one", "red", "circle"} <= set(answers)
    vqa, _ = checkpoints.restore_params(vqa_dir)
    # The answer head is new (sized by the answer vocabulary); the unused heads were loaded and stayed frozen.
    head = _flat(vqa["params"])["['vqa_head']['out']['kernel']['value']"]
    assert head.shape[-1] == len(answers)
    loaded_frozen = {k: v for k, v in _flat(vqa["frozen"]).items() if k.startswith("['itm_head']")}
    assert loaded_frozen
    for key, value in loaded_frozen.items():
        np.testing.assert_array_equal(value, _flat(albef["params"])[key])
