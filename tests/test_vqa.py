"""VQA scoring and loss against their formulas: min(#matches/3, 1), exact match for one reference,
soft-target sigmoid cross-entropy, per-type accuracy."""

import jax.numpy as jnp
import numpy as np

from vlpjax.data.answers import answer_score, answer_vocabulary, target_scores
from vlpjax.evaluate.vqa import vqa_accuracy
from vlpjax.objectives.vqa import vqa_loss


def test_answer_score_follows_the_benchmark_formula():
    refs = ["two", "two", "three", "2", "two", "two", "Two.", "three", "two", "two"]
    assert answer_score("two", refs) == 1.0  # 7 matches (case and full stop normalised) -> capped at 1
    assert answer_score("three", refs) == 2 / 3
    assert answer_score("2", refs) == 1 / 3
    assert answer_score("four", refs) == 0.0
    assert answer_score("yes", ["yes"]) == 1.0 and answer_score("no", ["yes"]) == 0.0


def test_vocabulary_is_ranked_by_frequency_then_alphabetically():
    assert answer_vocabulary([["b", "a"], ["a"], ["c"], ["b"]]) == ["a", "b", "c"]
    assert answer_vocabulary([["b", "a"], ["a"], ["c"], ["b"]], max_answers=2) == ["a", "b"]


def test_targets_and_loss_match_the_formula():
    vocab = {"yes": 0, "no": 1, "two": 2}
    targets = np.stack([target_scores(["two", "two", "no"], vocab), target_scores(["yes"], vocab)])
    np.testing.assert_allclose(targets, [[0, 1 / 3, 2 / 3], [1, 0, 0]], rtol=1e-6)
    logits = np.array([[0.3, -1.2, 2.0], [1.5, 0.1, -0.4]], np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    expected = np.mean(np.sum(-(targets * np.log(p) + (1 - targets) * np.log(1 - p)), axis=-1))
    loss, metrics = vqa_loss(jnp.asarray(logits), jnp.asarray(targets))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["vqa/train_accuracy"]), (2 / 3 + 1) / 2, rtol=1e-6)


def test_accuracy_overall_and_per_question_type():
    metrics = vqa_accuracy(
        ["two", "red", "yes"],
        [["two", "two", "two"], ["blue"], ["yes"]],
        ["how many circles?", "what colour is it?", "is there a square?"],
    )
    assert metrics["vqa/accuracy"] == 2 / 3
    assert metrics["vqa/accuracy_how_many"] == 1.0 and metrics["vqa/accuracy_what_colour"] == 0.0
    assert metrics["vqa/questions"] == 3


def test_a_runs_saved_vocabulary_wins_over_a_rescan(tmp_path):
    import json

    import pytest

    from vlpjax.train.build import vqa_answers

    train = [{"questions": ["q1", "q2"], "answers": ["a", "b"]}, {"questions": ["q3"], "answers": ["b"]}]
    assert vqa_answers(train, None, None) == ["b", "a"]
    assert vqa_answers(train, None, str(tmp_path / "missing.json")) == ["b", "a"]
    saved = tmp_path / "answers.json"
    saved.write_text(json.dumps(["a", "b", "c"]))  # the order a checkpoint's head was trained with
    assert vqa_answers(train, 1, str(saved)) == ["a", "b", "c"]
    saved.write_text(json.dumps({"a": 0}))
    with pytest.raises(ValueError, match="answers.json must hold a JSON list"):
        vqa_answers(train, None, str(saved))
