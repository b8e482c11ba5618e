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
from vlpjax.data.pipeline import image_arrays
from vlpjax.data.shapes import CLASS_NAMES
from vlpjax.evaluate.context import EvalContext
from vlpjax.evaluate.evaluators import _captions_and_owners, run_evaluator
from vlpjax.evaluate.inference import Inference
from vlpjax.evaluate.retrieval import retrieval_metrics
from vlpjax.evaluate.zero_shot import (
    DEFAULT_TEMPLATES,
    class_embeddings,
    load_templates,
    zero_shot_accuracy,
    zero_shot_metrics,
)
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


def _in_memory(source, tokenizer, config):
    """The reference: the whole test split's images, first captions, labels and object counts."""
    examples = [source[i] for i in range(len(source))]
    ids, mask = tokenizer([e["captions"][0].decode() for e in examples], config.data.text_len)
    return {
        **image_arrays(examples, pipeline_config(config, 1)),
        "text_ids": ids,
        "text_mask": mask,
        "label": np.array([int(e["label"]) for e in examples]),
        "object_count": np.array([len(e["labels"]) for e in examples]),
    }


def _context(config, data, run, batch_size):
    """The evaluators' view of an untrained run, at `batch_size` for every evaluator."""
    for spec in config.evals.values():
        spec.batch_size = batch_size
    ctx = EvalContext(config, run.graphdef, run.mesh, data, pipeline_config(config, 1), "", write_pngs=False)
    ctx.set_weights(run.state.params, run.state.frozen)
    return ctx


def test_class_folder_zero_shot_equals_the_shapes_zero_shot(tiny_shapes_dir, tmp_path, capsys):
    _class_folder(tmp_path / "classes", load_data(_config("clip_shapes", tiny_shapes_dir)).test_source)
    args = ["data", "build", "image_class_folder", "--folder", str(tmp_path / "classes"), "--data_dir", str(tmp_path)]
    assert cli.main(args) == 0 and "1 bad rows skipped" in capsys.readouterr().out
    builder = builders.load_builder("image_class_folder", str(tmp_path), path=str(tmp_path / "classes"))
    assert list(builder.info.splits) == ["test"] and builder.info.splits["test"].num_examples == TINY_DATA["test_size"]
    assert sorted(builders.dataset_classes(builder)) == sorted(CLASS_NAMES)

    # The same run's zero_shot evaluator, pointed at the class folder from the command line.
    folder = {"name": "image_class_folder", "folder": str(tmp_path / "classes"), "data_dir": str(tmp_path)}
    config = _config("clip_shapes", tiny_shapes_dir, f"--config.evals.zero_shot.data={folder!r}")
    data = load_data(config)
    run = create_run(config, data.tokenizer.vocab_size)
    on_folder = run_evaluator(_context(config, data, run, 32), "imagenet_like", config.evals.zero_shot)
    config.evals.zero_shot.data = None  # the run's own shapes test split
    on_shapes = run_evaluator(_context(config, data, run, 32), "zero_shot", config.evals.zero_shot)
    assert on_folder["imagenet_like/top1"] == pytest.approx(on_shapes["zero_shot/top1"], abs=1e-9)
    assert on_folder["imagenet_like/top1"] <= on_folder["imagenet_like/top5"] <= 1.0
    assert "zero_shot/single_object_top1" in on_shapes and "imagenet_like/single_object_top1" not in on_folder
    # and the shapes figure is the in-memory zero-shot accuracy of the whole split
    arrays = _in_memory(data.test_source, data.tokenizer, config)
    inference = Inference(run.graphdef, run.state.params, run.state.frozen, run.mesh, 32)
    classes = class_embeddings(lambda t: inference.texts(*data.tokenizer(t, config.data.text_len)), CLASS_NAMES)
    img = inference.images({"image": arrays["image"]})
    assert on_shapes["zero_shot/top1"] == pytest.approx(zero_shot_accuracy(img, classes, arrays["label"]), abs=1e-9)
    single = arrays["object_count"] == 1
    assert 0 < single.sum() < len(single)
    expected = zero_shot_accuracy(img[single], classes, arrays["label"][single])
    assert on_shapes["zero_shot/single_object_top1"] == pytest.approx(expected, abs=1e-9)


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
    """The retrieval evaluator, its images decoded and embedded 16 at a time, gives the figures
    of the whole split in memory; with every caption, each image has its 3."""
    config = _config("clip_shapes", tiny_shapes_dir)
    data = load_data(config)
    run = create_run(config, data.tokenizer.vocab_size)
    inference = Inference(run.graphdef, run.state.params, run.state.frozen, run.mesh, 32)
    arrays = _in_memory(data.test_source, data.tokenizer, config)
    img, txt = inference.images({"image": arrays["image"]}), inference.texts(arrays["text_ids"], arrays["text_mask"])
    in_memory = retrieval_metrics(img, txt)

    ctx = _context(config, data, run, 16)
    streamed = run_evaluator(ctx, "retrieval", config.evals.retrieval)
    assert streamed.keys() == in_memory.keys()
    for key, value in in_memory.items():
        assert streamed[key] == pytest.approx(value, abs=1e-9), key
    config.evals.retrieval.all_captions = True
    every = run_evaluator(ctx, "every_caption", config.evals.retrieval)
    texts, owner = _captions_and_owners(ctx.split_images(config.evals.retrieval).captions, np.arange(len(img)), True)
    assert np.bincount(owner).tolist() == [3] * len(img) and len(texts) == 3 * len(img)
    txt_all = inference.texts(*data.tokenizer(texts, config.data.text_len))
    for key, value in retrieval_metrics(img, txt_all, "every_caption", caption_image=owner).items():
        assert every[key] == pytest.approx(value, abs=1e-9), key
