"""A broken model (NaN or constant outputs) must score no better than chance on VQA and captions."""

import jax.numpy as jnp
import numpy as np
import pytest

from vlpjax.data import shapes
from vlpjax.data.tokenizer import TextTokenizer, train_wordpiece
from vlpjax.evaluate.captions import caption_metrics
from vlpjax.evaluate.vqa import accuracy_metrics, answer_credits

ANSWERS = ["yes", "no", "two"]  # the vocabulary's order: most frequent training answer first
QUESTIONS = ["is there a circle?", "is there a square?", "how many objects?", "is it red?"]
REFERENCES = [["yes"], ["yes"], ["two", "two", "two"], ["no"]]


def _vqa(logits, rows=slice(None)):
    """What the vqa evaluator reports for these answer logits, one row a question."""
    credits = answer_credits(np.asarray(logits, np.float32), ANSWERS, REFERENCES[rows])
    return accuracy_metrics(credits, QUESTIONS[rows])


def test_nan_answer_logits_score_zero():
    # argmax of a NaN row is answer 0, "yes": right on half of these questions.
    metrics = _vqa(np.full((4, 3), np.nan))
    assert metrics["vqa/accuracy"] == 0.0 and metrics["vqa/questions"] == 4
    assert all(v == 0.0 for k, v in metrics.items() if k.startswith("vqa/accuracy"))


def test_constant_answer_logits_score_the_mean_credit_of_the_vocabulary():
    # Every answer tied: each question earns the mean credit of the three answers, 1/3 here.
    assert _vqa(np.zeros((4, 3)))["vqa/accuracy"] == pytest.approx(1 / 3)


def test_a_nan_logit_ranks_last_and_a_trained_classifier_is_scored_as_before():
    logits = np.array([[np.nan, 0.0, -1.0], [5.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, 1.0, np.nan]])
    metrics = _vqa(logits)
    assert metrics["vqa/accuracy"] == pytest.approx(3 / 4)  # row 0 answers "no", not the NaN "yes"
    assert metrics["vqa/accuracy_is_there"] == 0.5 and metrics["vqa/accuracy_how_many"] == 1.0
    assert _vqa(logits[1:3], slice(1, 3))["vqa/accuracy"] == 1.0


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    rng = np.random.default_rng(0)
    texts = [c for _ in range(50) for c in shapes.captions(shapes.sample_scene(rng), rng, 2)]
    path = str(tmp_path_factory.mktemp("tok") / "tokenizer.json")
    train_wordpiece(texts, path=path, vocab_size=120)
    return TextTokenizer(path)


def test_captions_generated_from_nan_logits_score_zero(tokenizer):
    # Greedy decoding takes the argmax of each step's logits: of NaN logits, token 0 every step.
    tokens = np.asarray(jnp.argmax(jnp.full((3, 6, tokenizer.vocab_size), jnp.nan), axis=-1))
    assert not tokens.any()
    predicted = [tokenizer.decode(row) for row in tokens]
    references = [["a small red circle at the top left"], ["two objects; a big blue square"], ["a green triangle"]]
    metrics = caption_metrics(predicted, references, shapes=True)
    assert metrics["caption/images"] == 3
    assert metrics["caption/token_f1"] == metrics["caption/exact"] == metrics["caption/object_f1"] == 0.0
    assert metrics["caption/cider_d"] == 0.0 and metrics["caption/bleu4"] < 1e-6  # BLEU's smoothing: not exactly 0


def test_an_empty_caption_never_matches_exactly():
    # A NaN model decodes to "" (argmax picks [PAD], which decoding drops): even an empty or
    # unparsable reference must not count it as exact.
    metrics = caption_metrics(["", ""], [[""], ["..."]], shapes=True)
    assert metrics["caption/exact"] == 0.0 and metrics["caption/object_f1"] == 0.0


def test_training_accuracies_give_nan_logits_no_hits():
    """argmax of a NaN row is the NaN's index (or 0): it must not count as a correct prediction
    in any objective's accuracy (token 0 is a real token of GPT-2; label 0 is ITC's first row)."""
    from vlpjax.objectives.contrastive import softmax_loss
    from vlpjax.objectives.token_loss import token_cross_entropy
    from vlpjax.objectives.vqa import vqa_loss

    logits = jnp.full((2, 3, 5), jnp.nan).at[:, :, 1].set(1.0)  # NaN everywhere but a finite top
    targets = jnp.zeros((2, 3), jnp.int32)
    _, accuracy, _ = token_cross_entropy(logits.at[:, :, 1].set(jnp.nan), targets, jnp.ones((2, 3)))
    assert float(accuracy) == 0.0
    emb = jnp.full((4, 8), jnp.nan)
    _, metrics = softmax_loss(emb, emb, jnp.float32(1.0))
    assert all(float(v) == 0.0 for k, v in metrics.items() if "acc" in k), metrics
    _, metrics = vqa_loss(jnp.full((2, 3), jnp.nan), jnp.asarray([[1.0, 0, 0], [1.0, 0, 0]]))
    assert float(metrics["vqa/train_accuracy"]) == 0.0
