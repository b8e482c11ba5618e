"""Zero-shot classification on the user's classes: an image_class_folder of the shapes test
images, one sub-folder per class, gives the accuracy the shapes zero-shot gives for the same
model and templates; top-5 and the mean per-class accuracy come with it."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.shapes_fixture import TINY_DATA
from tests.test_recipes import _config
from vlpjax import cli
from vlpjax.data import builders
from vlpjax.data.images import decode_image
from vlpjax.data.pipeline import eval_arrays
from vlpjax.data.shapes import CLASS_NAMES
from vlpjax.evaluate.runner import Inference, evaluate, evaluate_zero_shot_folder
from vlpjax.evaluate.zero_shot import DEFAULT_TEMPLATES, load_templates, zero_shot_metrics
from vlpjax.train.build import create_run, load_data, pipeline_config


def _class_folder(root, source):
    """root/test/<class name>/<i>.png for every test image, with a folder for every class."""
    for name in CLASS_NAMES:
        os.makedirs(root / "test" / name, exist_ok=True)
    for i in range(len(source)):
        example = source[i]
        name = CLASS_NAMES[int(example["label"])]
        Image.fromarray(decode_image(example["image"])).save(root / "test" / name / f"{i:03d}.png")
    (root / "test" / CLASS_NAMES[0] / "broken.png").write_bytes(b"not an image")


def test_class_folder_zero_shot_equals_the_shapes_zero_shot(tiny_shapes_dir, tmp_path, capsys):
    config = _config("clip_shapes", tiny_shapes_dir)
    data = load_data(config)
    run = create_run(config, data.tokenizer.vocab_size)
    inference = Inference(run.graphdef, run.state.params, run.state.frozen, run.mesh, 32)
    arrays = eval_arrays(data.test_source, data.tokenizer, pipeline_config(config, 1))
    shapes = evaluate(inference, arrays, data.tokenizer, config.data.text_len, zero_shot=True, png_queries=0)

    _class_folder(tmp_path / "classes", data.test_source)
    args = [
        "data",
        "build",
        "image_class_folder",
        "--folder",
        str(tmp_path / "classes"),
        "--data_dir",
        str(tmp_path / "d"),
    ]
    assert cli.main(args) == 0 and "1 bad rows skipped" in capsys.readouterr().out
    builder = builders.load_builder("image_class_folder", str(tmp_path / "d"), path=str(tmp_path / "classes"))
    assert list(builder.info.splits) == ["test"] and builder.info.splits["test"].num_examples == TINY_DATA["test_size"]
    classes = builders.dataset_classes(builder)
    assert sorted(classes) == sorted(CLASS_NAMES)
    metrics = evaluate_zero_shot_folder(
        inference,
        data.tokenizer,
        config.data.text_len,
        builder.as_data_source()["test"],
        classes,
        DEFAULT_TEMPLATES,
        config.data.image_size,
    )
    assert metrics["zero_shot/top1"] == pytest.approx(shapes["zero_shot/accuracy"], abs=1e-9)
    assert metrics["zero_shot/top1"] <= metrics["zero_shot/top5"] <= 1.0


def test_top5_and_mean_per_class_by_hand():
    """4 images of classes 0, 0, 0, 1 among 6 classes; class embeddings are the unit axes."""
    img = np.array([[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0.5, 0, 0, 0, 0, 0.9], [0, 1, 0, 0, 0, 0]], float)
    metrics = zero_shot_metrics(img, np.eye(6), np.array([0, 0, 0, 1]))
    # top-1: rows 0 (class 0) and 3 (class 1) are right; row 1 picks class 1, row 2 class 5.
    assert metrics["zero_shot/top1"] == 0.5
    # mean per class: class 0 is right 1 time in 3, class 1 always.
    assert metrics["zero_shot/mean_per_class"] == pytest.approx((1 / 3 + 1) / 2)
    # top-5: row 1 scores class 0 at 0 and ties with 4 others behind class 1: 4 of 5 places fit.
    assert metrics["zero_shot/top5"] == pytest.approx((1 + 0.8 + 1 + 1) / 4)


def test_templates_from_a_list_or_a_file(tmp_path):
    assert load_templates(["a photo of a {}."]) == ("a photo of a {}.",)
    (tmp_path / "t.txt").write_text("a photo of a {}.\n\nart of the {}\n")
    assert load_templates(str(tmp_path / "t.txt")) == ("a photo of a {}.", "art of the {}")
    with pytest.raises(ValueError, match="exactly one"):
        load_templates(["no slot"])
    assert json.dumps(list(DEFAULT_TEMPLATES))  # the default is plain data


def test_class_folders_skip_hidden_and_non_image_files_and_read_sub_folders(tmp_path):
    from vlpjax.data.class_folder import scan_class_folder

    for path in ("cat/a.png", "cat/more/b.jpg", "dog/c.png"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / path)
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    classes, report = scan_class_folder(str(tmp_path))
    assert classes == ["cat", "dog"] and not report.bad
    assert sorted((r.image, r.label) for r in report.rows) == [
        ("cat/a.png", 0),
        ("cat/more/b.jpg", 0),
        ("dog/c.png", 1),
    ]
    (tmp_path / "test" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="mixes split folders"):
        scan_class_folder(str(tmp_path))


def test_streaming_retrieval_equals_in_memory_on_shapes(tiny_shapes_dir):
    """Images decoded and embedded 16 at a time give the retrieval figures of the whole split in
    memory; with every caption, each image has its 3."""
    from vlpjax.evaluate.retrieval import retrieval_metrics
    from vlpjax.evaluate.runner import stream_retrieval_embeddings

    config = _config("clip_shapes", tiny_shapes_dir)
    data = load_data(config)
    run = create_run(config, data.tokenizer.vocab_size)
    inference = Inference(run.graphdef, run.state.params, run.state.frozen, run.mesh, 16)
    pipeline = pipeline_config(config, 1)
    in_memory = evaluate(
        inference, eval_arrays(data.test_source, data.tokenizer, pipeline), data.tokenizer, config.data.text_len,
        zero_shot=False, png_queries=0,
    )  # fmt: skip
    img, txt, owner = stream_retrieval_embeddings(inference, data.test_source, data.tokenizer, pipeline)
    streamed = retrieval_metrics(img, txt, caption_image=owner)
    assert streamed.keys() == in_memory.keys()
    for key, value in in_memory.items():
        assert streamed[key] == pytest.approx(value, abs=1e-9), key
    img_all, txt_all, owner_all = stream_retrieval_embeddings(
        inference, data.test_source, data.tokenizer, pipeline, all_captions=True
    )
    assert np.bincount(owner_all).tolist() == [3] * len(img) and len(txt_all) == 3 * len(img)
    np.testing.assert_allclose(img_all, img, atol=1e-6)
