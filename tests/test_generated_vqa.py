"""Generated VQA: "[CLS] question [SEP] answer [SEP]" rows whose answer alone is scored, the
question as PrefixLM's prefix, answers ranked by likelihood (BLIP's rank mode) as a direct
computation ranks them, answers generated in a batch as each question alone, and the recipe."""

import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from tests.test_blip_decoder import _model as blip_model
from tests.test_recipes import ROOT, _config
from tests.tiny_models import TINY_VIT
from tests.train_helpers import objective_on_one_and_eight_devices
from vlpjax import cli
from vlpjax.data.builders import dataset_dir, load_dataset
from vlpjax.data.images import normalize, resize
from vlpjax.data.pipeline import ANSWERED, NonEmptySubset, PipelineConfig, TrainTransform, train_dataset
from vlpjax.data.question_answer import question_answer_ids
from vlpjax.data.tokenizer import TOKENIZER_FILE, TextTokenizer, train_wordpiece
from vlpjax.errors import InvalidInput
from vlpjax.evaluate.captioner import Captioner
from vlpjax.evaluate.decoded_vqa import AnswerRanker, generated_answers
from vlpjax.models.coca import build_coca
from vlpjax.models.prefix_lm import build_prefix_lm
from vlpjax.models.vlp import build_image_encoder, build_text_encoder
from vlpjax.objectives.registry import StepContext, TextVocab, make_objective
from vlpjax.parallel import AxisShards
from vlpjax.train.loop import _close, open_run, train
from vlpjax.train.restore import trained_model
from vlpjax.train.steps import DATA_KEYS

QUESTIONS = ["what colour is the circle ?", "how many squares are there ?", "is there a red star ?"]
ANSWERS = ["red", "blue", "two", "three", "yes", "no", "dark green"]
LENGTH = 16


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tok") / "tokenizer.json")
    train_wordpiece(QUESTIONS + ANSWERS, path=path, vocab_size=80)
    return TextTokenizer(path)


def test_a_row_is_the_question_then_the_answer_and_the_question_gives_way(tokenizer):
    ids, mask, prefix = question_answer_ids(tokenizer, QUESTIONS[0], "dark green", LENGTH)
    question, answer = tokenizer.encode(QUESTIONS[0]), tokenizer.encode_plain("dark green")
    assert prefix == len(question) and question[0] == tokenizer.cls_id and question[-1] == tokenizer.sep_id
    assert list(ids[mask]) == question + answer + [tokenizer.sep_id]
    assert not mask[len(question) + len(answer) + 1 :].any()
    short, short_mask, short_prefix = question_answer_ids(tokenizer, QUESTIONS[0], "dark green", 3 + len(answer) + 1)
    assert list(short[short_mask]) == [tokenizer.cls_id, question[1], tokenizer.sep_id, *answer, tokenizer.sep_id]
    assert short_prefix == 3
    # Shorter still, the answer is cut too (it keeps its [SEP]); too short for both, an error.
    cut, cut_mask, _ = question_answer_ids(tokenizer, QUESTIONS[0], "dark green", 5)
    assert list(cut[cut_mask]) == [tokenizer.cls_id, question[1], tokenizer.sep_id, answer[0], tokenizer.sep_id]
    with pytest.raises(InvalidInput, match="too short for a question and an answer"):
        question_answer_ids(tokenizer, QUESTIONS[0], "dark green", 4)


def test_the_pipeline_makes_question_answer_rows(tiny_shapes_dir):
    config = _config("vqa_gen_shapes", tiny_shapes_dir)
    builder = load_dataset(config.data)
    tokenizer = TextTokenizer(os.path.join(dataset_dir(builder), TOKENIZER_FILE))
    pipeline = PipelineConfig(batch_size=8, image_size=32, text_len=16, task="question_answer")
    batch = train_dataset(builder.as_data_source()["train"], tokenizer, pipeline)[0]
    assert set(batch) >= {"image", "text_ids", "text_mask", "prefix_len"} and "question_ids" not in batch
    for ids, mask, prefix in zip(batch["text_ids"], batch["text_mask"], batch["prefix_len"], strict=True):
        real = list(ids[mask])
        assert real[prefix - 1] == tokenizer.sep_id and real[-1] == tokenizer.sep_id and len(real) > prefix + 1
        question, answer = tokenizer.decode(real[:prefix]), tokenizer.decode(real[prefix:-1])
        assert question.endswith("?") and answer


def _folder_example(index, answer_lists):
    """An image_text_folder row: JSON answer lists, some possibly empty."""
    png = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 50, np.uint8)).save(png, format="PNG")
    return {
        "image": png.getvalue(),
        "id": index,
        "questions": [f"question {i} ?".encode() for i in range(len(answer_lists))],
        "answer_lists": [json.dumps(a).encode() for a in answer_lists],
    }


def test_questions_without_answers_are_never_drawn(tokenizer):
    config = PipelineConfig(batch_size=2, image_size=8, text_len=LENGTH, task="question_answer")
    transform = TrainTransform(config, tokenizer, ANSWERS)
    example = _folder_example(0, [[], ["red"], []])
    for seed in range(8):
        row = transform(example, np.random.default_rng(seed))
        real = list(row["text_ids"][row["text_mask"]])
        assert tokenizer.decode(real[row["prefix_len"] : -1]) == "red"
    source = [_folder_example(0, [[]]), _folder_example(1, [["no"], []]), _folder_example(2, [])]
    assert NonEmptySubset(source, ANSWERED).indices == [1]


def test_the_trainer_scores_the_answer_tokens_of_each_batch(tiny_shapes_dir, tmp_path):
    """Through the Stepper (what a run does): lm/tokens counts each row's answer and its [SEP]."""
    config = _config("vqa_gen_shapes", tiny_shapes_dir, "--config.init.checkpoint=")
    run = open_run(config, str(tmp_path / "run"))
    try:
        host = next(run.iterator)
        assert set(host) <= set(DATA_KEYS)  # nothing the step needs is left on the host
        _, metrics = run.stepper(run.state, run.stepper.batch(host))
    finally:
        _close(run)
    answers = np.sum(host["text_mask"], axis=1) - host["prefix_len"]
    assert float(metrics["lm/tokens"]) == float(np.sum(answers)) < float(np.sum(host["text_mask"]) - len(answers))


def _qa_batch(tokenizer, rows=8, seed=0):
    rng = np.random.default_rng(seed)
    encoded = [
        question_answer_ids(tokenizer, QUESTIONS[i % 3], ANSWERS[int(rng.integers(len(ANSWERS)))], LENGTH)
        for i in range(rows)
    ]
    return {
        "image": jnp.asarray(rng.normal(size=(rows, 8, 8, 3)), jnp.float32),
        "image_id": jnp.arange(rows, dtype=jnp.int32),
        "text_ids": jnp.asarray(np.stack([e[0] for e in encoded])),
        "text_mask": jnp.asarray(np.stack([e[1] for e in encoded])),
        "prefix_len": jnp.asarray([e[2] for e in encoded], jnp.int32),
    }


def _answer_loss_by_hand(logits, batch):
    """Mean cross-entropy of the answer tokens and their [SEP] (positions >= prefix_len)."""
    logprobs = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
    total, count = 0.0, 0
    for row in range(len(batch["text_ids"])):
        ids, real = np.asarray(batch["text_ids"][row]), int(np.sum(batch["text_mask"][row]))
        for t in range(int(batch["prefix_len"][row]), real):
            total -= float(logprobs[row, t - 1, ids[t]])
            count += 1
    return total / count, count


def _tokenizer_vocab(tokenizer):
    return TextVocab(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id, special_ids=tokenizer.special_ids)


def test_the_lm_loss_on_question_answer_rows_scores_the_answer_only_on_1_and_8_devices(tokenizer):
    model, batch = blip_model(vocab=tokenizer.vocab_size, length=LENGTH), _qa_batch(tokenizer, rows=16)
    m1, m8 = objective_on_one_and_eight_devices(model, batch, {"lm": {}}, _tokenizer_vocab(tokenizer))
    loss, count = _answer_loss_by_hand(model.text_logits(batch), batch)
    assert float(m1["lm/tokens"]) == count
    np.testing.assert_allclose(float(m1["lm/loss"]), loss, rtol=1e-5)
    np.testing.assert_allclose(float(m8["lm/loss"]), loss, rtol=1e-5)


def _prefix_lm(vocab_size):
    rngs = nnx.Rngs(0)
    spec = {"prefix_lm": {"width": 16, "depth": 2, "num_heads": 2, "mlp_dim": 32, "max_len": LENGTH}}
    return build_prefix_lm(
        spec, image_encoder=build_image_encoder(TINY_VIT, rngs=rngs), vocab_size=vocab_size, rngs=rngs
    )


def test_prefix_lm_takes_the_question_as_its_prefix(tokenizer):
    model, batch = _prefix_lm(tokenizer.vocab_size), _qa_batch(tokenizer)
    objective = make_objective({"prefix_lm": {}})
    losses = [
        float(objective({}, batch, StepContext(model=model, key=jax.random.key(k), shards=AxisShards(None)))[0])
        for k in (0, 1)
    ]
    expected, _ = _answer_loss_by_hand(model.text_logits(batch, batch["prefix_len"]), batch)
    np.testing.assert_allclose(losses, [expected, expected], rtol=1e-5)


def _log_likelihoods_by_hand(model, tokenizer, image, question):
    """Each answer's summed log-probability after the question, one row at a time."""
    scores = []
    for answer in ANSWERS:
        ids, mask, prefix = question_answer_ids(tokenizer, question, answer, LENGTH)
        batch = {"image": image[None], "text_ids": jnp.asarray(ids[None]), "text_mask": jnp.asarray(mask[None])}
        logprobs = np.asarray(jax.nn.log_softmax(model.text_logits(batch, jnp.asarray([prefix]))[0], axis=-1))
        scores.append(sum(float(logprobs[t - 1, ids[t]]) for t in range(prefix, int(mask.sum()))))
    return np.array(scores)


def _first_token_logprobs_by_hand(model, tokenizer, image, question):
    prompt = tokenizer.encode(question)
    ids = jnp.asarray([prompt + [0] * (LENGTH - len(prompt))], jnp.int32)
    mask = jnp.arange(LENGTH)[None] < len(prompt)
    logits = model.text_logits({"image": image[None], "text_ids": ids, "text_mask": mask}, jnp.asarray([len(prompt)]))
    logprobs = np.asarray(jax.nn.log_softmax(logits[0, len(prompt) - 1]))
    return np.array([logprobs[[*tokenizer.encode_plain(a), tokenizer.sep_id][0]] for a in ANSWERS])


def _coca(vocab_size):
    rngs = nnx.Rngs(0)
    text = {"kind": "causal", "vocab_size": vocab_size, "width": 16, "depth": 1, "num_heads": 2, "mlp_dim": 32}
    image, text = build_image_encoder(TINY_VIT, rngs=rngs), build_text_encoder({**text, "max_len": LENGTH}, rngs=rngs)
    spec = {"coca": {"decoder_depth": 1, "decoder_queries": 3, "pool_heads": 2}, "embed_dim": 8}
    return build_coca(spec, image_encoder=image, text_encoder=text, vocab_size=vocab_size, rngs=rngs)


@pytest.mark.parametrize("family", ["prefix_lm", "fusion", "coca"])
def test_rank_mode_picks_the_likeliest_answer_of_the_first_token_shortlist(tokenizer, family):
    builders = {
        "prefix_lm": lambda: _prefix_lm(tokenizer.vocab_size),
        "fusion": lambda: blip_model(vocab=tokenizer.vocab_size, length=LENGTH),
        "coca": lambda: _coca(tokenizer.vocab_size),
    }
    model = builders[family]()
    images = {"image": np.random.default_rng(1).normal(size=(3, 8, 8, 3)).astype(np.float32)}
    by_hand = [_log_likelihoods_by_hand(model, tokenizer, images["image"][i], q) for i, q in enumerate(QUESTIONS)]
    every = AnswerRanker(model, tokenizer, ANSWERS, LENGTH, candidates=len(ANSWERS), chunk=4)(images, QUESTIONS)
    assert every == [ANSWERS[int(np.argmax(s))] for s in by_hand]
    # With a shortlist of 2: the two likeliest first tokens, then the likeliest whole answer.
    first = [_first_token_logprobs_by_hand(model, tokenizer, images["image"][i], q) for i, q in enumerate(QUESTIONS)]
    shortlists = [np.argsort(-f, kind="stable")[:2] for f in first]
    expected = [ANSWERS[int(s[np.argmax(scores[s])])] for s, scores in zip(shortlists, by_hand, strict=True)]
    assert AnswerRanker(model, tokenizer, ANSWERS, LENGTH, candidates=2, chunk=5)(images, QUESTIONS) == expected


def test_rank_mode_never_picks_a_non_finite_likelihood(tokenizer):
    model = _prefix_lm(tokenizer.vocab_size)
    images = {"image": np.zeros((3, 8, 8, 3), np.float32)}
    # One answer's first token embeds to NaN: its likelihood is NaN, the others' stay finite.
    poisoned = [*tokenizer.encode_plain("blue"), tokenizer.sep_id][0]
    table = model.token_embed.embedding
    table[...] = table[...].at[poisoned].set(jnp.nan)
    picked = AnswerRanker(model, tokenizer, ANSWERS, LENGTH, candidates=len(ANSWERS), chunk=4)(images, QUESTIONS)
    assert all(answer in ANSWERS and answer != "blue" for answer in picked), picked
    # None finite: no answer at all (it scores 0).
    model.lm_head.kernel[...] = jnp.full(model.lm_head.kernel.shape, jnp.nan)
    assert AnswerRanker(model, tokenizer, ANSWERS, LENGTH, candidates=3, chunk=4)(images, QUESTIONS) == [""] * 3


def test_generated_answers_in_a_batch_equal_each_question_alone(tokenizer):
    model = _prefix_lm(tokenizer.vocab_size)
    captioner = Captioner(model, tokenizer)
    images = {"image": np.random.default_rng(2).normal(size=(3, 8, 8, 3)).astype(np.float32)}
    together = generated_answers(captioner, images, QUESTIONS, 3)
    alone = [
        generated_answers(captioner, {"image": images["image"][i : i + 1]}, [q], 3)[0] for i, q in enumerate(QUESTIONS)
    ]
    assert together == alone
    ids = captioner.generate_ids({"image": images["image"][:1]}, 3, [tokenizer.encode(QUESTIONS[0])])[0]
    assert together[0] == captioner.text(ids)


def test_vqa_gen_recipe_trains_from_blip_and_reports_both_modes(tiny_shapes_dir, tmp_path, capsys):
    train(_config("blip_shapes", tiny_shapes_dir, "--config.train.steps=2"), str(tmp_path / "blip"))
    config = _config("vqa_gen_shapes", tiny_shapes_dir, f"--config.init.checkpoint={tmp_path / 'blip'}")
    metrics = train(config, str(tmp_path / "vqa"))
    assert metrics["vqa/questions"] == metrics["vqa_rank/questions"] > 0
    assert {"vqa/accuracy", "vqa_rank/accuracy", "vqa_rank/accuracy_what_colour"} <= set(metrics)

    # `vlpjax generate --question` answers about each image file as the evaluator's generator does.
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(tmp_path / "a.png")
    args = ["generate", "--config", f"{ROOT}/configs/vqa_gen_shapes.py:tiny", "--workdir", str(tmp_path / "vqa")]
    args += [f"--config.data.data_dir={tiny_shapes_dir}", "--image", str(tmp_path / "a.png")]
    capsys.readouterr()
    assert cli.main([*args, "--question", "what shape is there?", "--max_new_tokens", "3"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    model, data = trained_model(config, str(tmp_path / "vqa"))
    pixels = normalize(resize(np.full((40, 40, 3), 90, np.uint8), config.data.image_size))[None]
    answer = generated_answers(Captioner(model, data.tokenizer), {"image": pixels}, ["what shape is there?"], 3)[0]
    assert line == f"{tmp_path / 'a.png'}: {answer}".strip()
    assert cli.main([*args, "--question", "what?", "--prompt", "a"]) == 2
    assert "not both" in capsys.readouterr().err
