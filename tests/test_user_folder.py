"""User data end to end: an image folder + JSONL manifest + a local HF tokenizer, no code changes."""

import json
import os

import numpy as np
from PIL import Image

from vlpjax.cli import main
from vlpjax.data import shapes
from vlpjax.data.builders import load_builder
from vlpjax.train.metrics_log import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _scenes(root, count, seed, suffix):
    """(index, scene, rng) for `count` shapes images written to root/img/<index><suffix>."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        scene = shapes.sample_scene(rng)
        image, _ = shapes.draw_scene(scene, 48, rng)
        Image.fromarray(image).save(root / "img" / f"{i}{suffix}", quality=95)
        yield i, scene, rng


def _make_folder(root, count=48):
    os.makedirs(root / "img")
    words = set()
    with open(root / "manifest.jsonl", "w") as f:
        for i, scene, rng in _scenes(root, count, 0, ".jpg"):
            captions = shapes.captions(scene, rng, 2)
            words.update(w for c in captions for w in c.replace(";", " ").replace(",", " ").split())
            f.write(json.dumps({"image": f"img/{i}.jpg", "captions": captions}) + "\n")
            if i % 6 == 0:
                f.write(
                    json.dumps(
                        {
                            "image": f"img/{i}.jpg",
                            "question": "how many objects?",
                            "answers": [shapes.COUNT_WORDS[len(scene)]] * 3,
                        }
                    )
                    + "\n"
                )
        f.write(json.dumps({"image": "img/none.jpg", "captions": ["missing"]}) + "\n")
    return words


def _make_hf_tokenizer(path, words):
    from transformers import BertTokenizerFast

    os.makedirs(path)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ";", ","] + sorted(words)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(str(path))
    os.remove(path / "tokenizer.json")  # force the vocab.txt route through transformers


def test_train_on_an_image_text_folder_with_a_local_hf_tokenizer(tmp_path):
    words = _make_folder(tmp_path / "photos")
    _make_hf_tokenizer(tmp_path / "tok", words)
    data_dir = str(tmp_path / "data")
    assert (
        main(
            [
                "data",
                "build",
                "image_text_folder",
                "--folder",
                str(tmp_path / "photos"),
                "--data_dir",
                data_dir,
                "--max_bad_fraction",
                "0.1",
            ]
        )
        == 0
    )
    workdir = str(tmp_path / "run")
    recipe = os.path.join(ROOT, "configs", "clip_shapes.py") + ":tiny"
    overrides = [
        "--config.data.name=image_text_folder",
        f"--config.data.folder={tmp_path / 'photos'}",
        f"--config.data.data_dir={data_dir}",
        f"--config.data.tokenizer={tmp_path / 'tok'}",
        "--config.data.flip=False",
        "--config.train.batch_size=8",
        "--config.train.steps=3",
        "--config.evals.retrieval.batch_size=4",
        "--config.evals.zero_shot.enabled=False",  # captioned photos, no class labels
    ]
    assert main(["train", "--config", recipe, "--workdir", workdir, *overrides]) == 0
    final = read_metrics(workdir)[-1]
    assert final["step"] == 3 and "retrieval/t2i_r1" in final and not any(k.startswith("zero_shot/") for k in final)


def _make_vqa_folder(root, count=120):
    """Only VQA rows, several reference answers each (a third of them with a disagreeing
    "maybe"), as annotators give them. Every question type of shapes, yes/no included: their
    answers depend on the question's type, which a short run from scratch learns."""
    os.makedirs(root / "img")
    words = set()
    with open(root / "manifest.jsonl", "w") as f:
        for i, scene, rng in _scenes(root, count, 1, ".png"):
            for j, (question, answer) in enumerate(shapes.questions(scene, rng)):
                answers = [answer] * 4 + (["maybe"] if (i + j) % 3 == 0 else [answer])
                words.update(question.rstrip("?").split())
                f.write(json.dumps({"image": f"img/{i}.png", "question": question, "answers": answers}) + "\n")
    return words | {"?"}


def _vqa_score(answer, references):
    """The VQA benchmark's credit, written out here: min(#matching references / 3, 1)."""
    return min(sum(r == answer for r in references) / 3, 1.0)


def _best_constant_answer_accuracy(data_dir, folder):
    """The accuracy of the best single answer given to every test question: a bar no model that
    ignores its input can clear. Read from the built test split, not through the evaluator."""
    test = load_builder("image_text_folder", data_dir, path=folder).as_data_source(split="test")
    references = [json.loads(a) for i in range(len(test)) for a in test[i]["answer_lists"]]
    candidates = {a for refs in references for a in refs}
    return len(references), max(np.mean([_vqa_score(a, refs) for refs in references]) for a in candidates)


def test_vqa_fine_tunes_and_evaluates_on_a_user_jsonl_folder(tmp_path):
    words = _make_vqa_folder(tmp_path / "vqa")
    _make_hf_tokenizer(tmp_path / "tok", words)
    data_dir = str(tmp_path / "data")
    assert main(["data", "build", "image_text_folder", "--folder", str(tmp_path / "vqa"), "--data_dir", data_dir]) == 0
    workdir = str(tmp_path / "run")
    recipe = os.path.join(ROOT, "configs", "vqa_shapes.py") + ":tiny"
    overrides = [
        "--config.data.name=image_text_folder",
        f"--config.data.folder={tmp_path / 'vqa'}",
        f"--config.data.data_dir={data_dir}",
        f"--config.data.tokenizer={tmp_path / 'tok'}",
        "--config.data.flip=False",
        "--config.init.checkpoint=",  # no pretrained checkpoint: train from scratch
        "--config.train.batch_size=8",
        "--config.train.steps=100",
        "--config.evals.vqa.batch_size=8",
    ]
    assert main(["train", "--config", recipe, "--workdir", workdir, *overrides]) == 0
    final = read_metrics(workdir)[-1]
    questions, baseline = _best_constant_answer_accuracy(data_dir, str(tmp_path / "vqa"))
    assert final["step"] == 100 and final["vqa/questions"] == questions
    # Trained, it answers by the question (a count for "how many", yes or no for "is there"):
    # 0.47 against 0.23 when this was written.
    assert final["vqa/accuracy"] > baseline
    answers = json.load(open(os.path.join(workdir, "answers.json")))
    assert "maybe" in answers  # the vocabulary comes from the training answers
