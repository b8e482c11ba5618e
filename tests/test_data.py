"""Data: shapes content, deterministic batches, disjoint process shards, folder validation."""

import dataclasses
import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.shapes_fixture import TINY_DATA
from vlpjax.data import builders, shapes
from vlpjax.data.pipeline import PipelineConfig, train_dataset, train_iterator
from vlpjax.data.tokenizer import TextTokenizer


def _sources(data_dir):
    builder = builders.load_builder("synthetic_shapes", data_dir, **TINY_DATA)
    tokenizer = TextTokenizer(os.path.join(builders.dataset_dir(builder), "tokenizer.json"))
    return builder.as_data_source(), tokenizer


def test_captions_name_every_object_and_flip_swaps_sides():
    rng = np.random.default_rng(0)
    for _ in range(50):
        scene = shapes.sample_scene(rng)
        assert 1 <= len(scene) <= 3 and len({o.cell for o in scene}) == len(scene)
        for caption in shapes.captions(scene, rng):
            for obj in scene:
                assert obj.noun_phrase() in caption and shapes.POSITIONS[obj.cell] in caption
    assert (
        shapes.swap_left_right("a red circle at the top left and a blue square on the right")
        == "a red circle at the top right and a blue square on the left"
    )


def _mirrored(scene):
    return tuple(dataclasses.replace(o, cell=(o.cell[0], 2 - o.cell[1])) for o in scene)


def test_swapped_texts_are_the_texts_of_the_mirrored_scene():
    """The flip's text rule checked against the generator: swapping left/right in a scene's
    captions and questions gives what the generator writes for the mirrored scene."""
    rng = np.random.default_rng(3)
    relational = 0
    for seed in range(300):
        scene = shapes.sample_scene(rng)
        mirror = _mirrored(scene)
        texts, mirror_texts = (
            shapes.captions(scene, np.random.default_rng(seed)),
            shapes.captions(mirror, np.random.default_rng(seed)),
        )
        assert [shapes.swap_left_right(t) for t in texts] == mirror_texts
        qa, mirror_qa = (
            shapes.questions(scene, np.random.default_rng(seed)),
            shapes.questions(mirror, np.random.default_rng(seed)),
        )
        for (q, a), (mq, ma) in zip(qa, mirror_qa, strict=True):
            if " left of " in q:  # the mirror is asked "left of" and answers the opposite
                relational += 1
                assert shapes.swap_left_right(q) == mq.replace(" left of ", " right of ") and {a, ma} == {"yes", "no"}
            else:
                assert (shapes.swap_left_right(q), a) == (mq, ma)
    assert relational > 50


def test_drawn_objects_have_their_colour_inside_their_box():
    rng = np.random.default_rng(1)
    scene = shapes.sample_scene(rng)
    image, boxes = shapes.draw_scene(scene, 64, rng)
    for obj, (x1, y1, x2, y2) in zip(scene, boxes * 64, strict=False):
        patch = image[int(y1) : int(y2), int(x1) : int(x2)].reshape(-1, 3)
        assert (patch == shapes.COLOURS[obj.colour]).all(axis=1).any()


def test_test_split_captions_are_distinct(tiny_shapes_dir):
    (sources, _) = _sources(tiny_shapes_dir)
    test = sources["test"]
    scenes = [test[i]["captions"][0] for i in range(len(test))]
    assert len(set(scenes)) == len(scenes) == TINY_DATA["test_size"]
    # The generator itself guarantees it for the default 1,000 test scenes.
    many = list(shapes.unique_scenes(np.random.default_rng(7), 1000))
    assert len(set(many)) == 1000


def _config(**kw):
    return PipelineConfig(batch_size=8, image_size=32, text_len=24, seed=3, flip=True, threads=0, **kw)


def test_same_seed_same_batches_and_resume_from_state(tiny_shapes_dir):
    sources, tokenizer = _sources(tiny_shapes_dir)
    first = train_iterator(sources["train"], tokenizer, _config())
    second = train_iterator(sources["train"], tokenizer, _config())
    a = [next(first) for _ in range(3)]
    b = [next(second) for _ in range(3)]
    for x, y in zip(a, b, strict=False):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    # The saved iterator state resumes at the same batch.
    state = first.get_state()
    expected = next(first)
    third = train_iterator(sources["train"], tokenizer, _config())
    third.set_state(json.loads(json.dumps(state)))
    np.testing.assert_array_equal(next(third)["image_id"], expected["image_id"])
    other = next(
        train_iterator(
            sources["train"], tokenizer, PipelineConfig(batch_size=8, image_size=32, text_len=24, seed=4, threads=0)
        )
    )
    assert not np.array_equal(other["image_id"], a[0]["image_id"])


def test_process_shards_are_disjoint(tiny_shapes_dir):
    sources, tokenizer = _sources(tiny_shapes_dir)
    seen = []
    for process in range(4):
        ds = train_dataset(sources["train"], tokenizer, _config(), process_index=process, process_count=4)
        per_epoch = 512 // 4 // 8
        ids = np.concatenate([ds[i]["image_id"] for i in range(per_epoch)])
        assert len(set(ids.tolist())) == len(ids)
        seen.append(set(ids.tolist()))
    for i in range(4):
        for j in range(i + 1, 4):
            assert not seen[i] & seen[j]
    assert len(set.union(*seen)) == 512


def test_the_global_batch_is_the_same_for_any_number_of_processes(tiny_shapes_dir):
    """Process p's rows of batch k, concatenated in process order, are one process's batch k of
    the global size, augmentation included: a run on 2 processes trains on the batches of 1."""
    sources, tokenizer = _sources(tiny_shapes_dir)
    alone = PipelineConfig(batch_size=16, image_size=32, text_len=24, seed=3, flip=True, threads=0)
    whole = train_dataset(sources["train"], tokenizer, alone)
    parts = [train_dataset(sources["train"], tokenizer, _config(), process_index=p, process_count=2) for p in (0, 1)]
    for k in (0, 1, 33):  # 33: past the first epoch of 32 global batches
        joined = {key: np.concatenate([part[k][key] for part in parts]) for key in whole[k]}
        for key, value in whole[k].items():
            np.testing.assert_array_equal(joined[key], value, err_msg=key)


def test_batches_hold_normalised_images_and_right_padded_text(tiny_shapes_dir):
    sources, tokenizer = _sources(tiny_shapes_dir)
    batch = next(train_iterator(sources["train"], tokenizer, _config()))
    assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
    assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    mask = batch["text_mask"]
    lengths = mask.sum(1)
    np.testing.assert_array_equal(mask, np.arange(24)[None] < lengths[:, None])  # right padded
    assert (batch["text_ids"][np.arange(8), lengths - 1] == tokenizer.sep_id).all()


def _write_folder(root, rows):
    os.makedirs(root / "imgs", exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 120, np.uint8)).save(root / "imgs" / "ok.png")
    Image.fromarray(np.full((8, 8, 3), 60, np.uint8)).save(root / "imgs" / "ok2.jpg")
    (root / "imgs" / "broken.jpg").write_bytes(b"not an image")
    (root / "secret.png").write_bytes((root / "imgs" / "ok.png").read_bytes())
    with open(root / "manifest.jsonl", "w") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")


GOOD = [
    {"image": "imgs/ok.png", "captions": ["a grey square", "flat grey"]},
    {"image": "imgs/ok2.jpg", "captions": ["a darker square"]},
    {"image": "imgs/ok.png", "question": "what colour?", "answers": ["grey", "gray"]},
]
BAD = [
    {"image": "imgs/missing.png", "captions": ["gone"]},
    {"image": "imgs/broken.jpg", "captions": ["cannot decode"]},
    {"image": "imgs/ok.png", "captions": [""]},
    {"image": "../secret.png", "captions": ["outside"]},
    "{not json",
]


def test_image_text_folder_skips_and_reports_bad_rows(tmp_path):
    folder = tmp_path / "photos"
    _write_folder(folder, GOOD + BAD)
    builder = builders.build_image_text_folder(
        str(tmp_path / "data"), str(folder), max_bad_fraction=0.7, test_fraction=0.0
    )
    assert builder.info.splits["train"].num_examples == 2  # two distinct good images
    source = builder.as_data_source()["train"]
    rows = {source[i]["image_path"].decode(): source[i] for i in range(2)}
    assert [c.decode() for c in rows["imgs/ok.png"]["captions"]] == ["a grey square", "flat grey"]
    assert rows["imgs/ok.png"]["questions"][0] == b"what colour?"
    with open(os.path.join(builders.dataset_dir(builder), "bad_rows.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    assert lines[0] == {"rows": 8, "good": 3, "bad": 5}
    reasons = {row["line"]: row["reason"] for row in lines[1:]}
    assert (
        "missing" in reasons[4]
        and "decoded" in reasons[5]
        and "empty" in reasons[6]
        and "leaves the folder" in reasons[7]
    )
    assert 8 in reasons


def test_image_text_folder_stops_when_too_many_rows_are_bad(tmp_path):
    folder = tmp_path / "photos"
    _write_folder(folder, GOOD + BAD + BAD)
    with pytest.raises(ValueError, match="10 of 13 manifest rows are bad.*max_bad_fraction") as err:
        builders.build_image_text_folder(str(tmp_path / "data"), str(folder), max_bad_fraction=0.2)
    # Only the first 5 fit in the message; the report beside the data directory holds them all.
    report = str(err.value).split("All bad rows are listed in ")[1]
    with open(report) as f:
        lines = [json.loads(line) for line in f]
    assert lines[0] == {"rows": 13, "good": 3, "bad": 10} and len(lines) == 11


def test_a_non_utf8_line_is_one_bad_row(tmp_path):
    folder = tmp_path / "photos"
    _write_folder(folder, GOOD)
    with open(folder / "manifest.jsonl", "ab") as f:
        f.write(b'{"image": "imgs/ok.png", "captions": ["caf\xe9"]}\n')
    builder = builders.build_image_text_folder(
        str(tmp_path / "data"), str(folder), test_fraction=0.0, max_bad_fraction=0.5
    )
    with open(os.path.join(builders.dataset_dir(builder), "bad_rows.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    assert lines[0] == {"rows": 4, "good": 3, "bad": 1}
    assert lines[1]["line"] == 4 and "not valid UTF-8" in lines[1]["reason"]


def test_an_edited_manifest_or_image_is_a_new_dataset(tmp_path):
    folder = tmp_path / "photos"
    _write_folder(folder, GOOD)
    data = str(tmp_path / "data")
    first = builders.build_image_text_folder(data, str(folder))
    assert first.info.splits["train"].num_examples == 2
    with open(folder / "manifest.jsonl", "a") as f:
        f.write(json.dumps({"image": "imgs/new.png", "captions": ["a new one"]}) + "\n")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "imgs" / "new.png")
    with pytest.raises(FileNotFoundError, match="is not built"):  # training refuses the stale build
        builders.load_builder("image_text_folder", data, path=str(folder))
    second = builders.build_image_text_folder(data, str(folder))
    assert second.info.splits["train"].num_examples == 3
    assert builders.dataset_dir(second) != builders.dataset_dir(first)
    os.utime(folder / "imgs" / "new.png", ns=(1, 1))  # the same manifest, a changed image file
    with pytest.raises(FileNotFoundError, match="is not built"):
        builders.load_builder("image_text_folder", data, path=str(folder))


def test_a_manifest_outside_the_folder_names_images_inside_it(tmp_path):
    folder = tmp_path / "photos"
    _write_folder(folder, GOOD)
    manifest = tmp_path / "lists" / "mine.jsonl"
    manifest.parent.mkdir()
    (folder / "manifest.jsonl").rename(manifest)
    builder = builders.build_image_text_folder(
        str(tmp_path / "data"), str(folder), manifest=str(manifest), test_fraction=0.0
    )
    assert builder.info.splits["train"].num_examples == 2  # imgs/ok.png and imgs/ok2.jpg, read from the folder


def test_an_edited_documents_file_is_a_new_dataset_and_bad_bytes_are_one_bad_document(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(folder / "a.png")
    docs = [{"chunks": ["before", {"image": "a.png"}, f"after {i}"]} for i in range(4)]
    (folder / "documents.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    data = str(tmp_path / "data")
    first = builders.build_image_text_folder(data, str(folder), kind="interleaved_folder")
    assert first.info.splits["train"].num_examples == 4
    with open(folder / "documents.jsonl", "ab") as f:
        f.write(b'{"chunks": ["caf\xe9", {"image": "a.png"}]}\n')
        f.write((json.dumps(docs[0]) + "\n").encode())
    with pytest.raises(FileNotFoundError, match="is not built"):
        builders.load_builder("interleaved_folder", data, path=str(folder))
    second = builders.build_image_text_folder(data, str(folder), kind="interleaved_folder", max_bad_fraction=0.5)
    assert second.info.splits["train"].num_examples == 5
    with open(os.path.join(builders.dataset_dir(second), "bad_rows.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    assert lines[1]["line"] == 5 and "not valid UTF-8" in lines[1]["reason"]


def test_a_moved_folder_still_loads_its_newest_build(tmp_path, caplog):
    """An archived run is evaluated where its image folder no longer exists: the newest build
    of that folder is used, with a warning; a folder that exists but changed is refused."""
    folder = tmp_path / "photos"
    _write_folder(folder, GOOD)
    data = str(tmp_path / "data")
    built = builders.build_image_text_folder(data, str(folder))
    folder.rename(tmp_path / "elsewhere")
    loaded = builders.load_builder("image_text_folder", data, path=str(folder))
    assert builders.dataset_dir(loaded) == builders.dataset_dir(built)
    assert "cannot read the manifest" in caplog.text


def _split_folder(root, rows):
    os.makedirs(root, exist_ok=True)
    for i in range(6):
        Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(root / f"a{i}.png")
    with open(root / "manifest.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def _split_images(builder) -> dict:
    sources = builder.as_data_source()
    return {name: sorted(s[i]["image_path"].decode() for i in range(len(s))) for name, s in sources.items()}


def test_rows_that_name_a_split_keep_it_and_only_the_others_are_held_out(tmp_path):
    rows = [
        {"image": "a0.png", "captions": ["zero"], "split": "train"},
        {"image": "a1.png", "captions": ["one"], "split": "train"},
        {"image": "a2.png", "captions": ["two"], "split": "val"},
        {"image": "a3.png", "captions": ["three"], "split": "test"},
        {"image": "a3.png", "question": "which?", "answers": ["three"], "split": "test"},
        {"image": "a4.png", "captions": ["four"]},
        {"image": "a5.png", "captions": ["five"]},
        {"image": "a5.png", "captions": ["five"], "split": "dev"},  # not a split: a bad row
    ]
    _split_folder(tmp_path / "f", rows)
    builder = builders.build_image_text_folder(
        str(tmp_path / "d"), str(tmp_path / "f"), test_fraction=0.5, max_bad_fraction=0.2
    )
    splits = _split_images(builder)
    assert splits["val"] == ["a2.png"]
    # Of the two images that name no split, one (round(2 * 0.5)) is held out at random.
    held_out = [image for image in ("a4.png", "a5.png") if image in splits["test"]]
    assert len(held_out) == 1 and "a3.png" in splits["test"] and len(splits["test"]) == 2
    assert splits["train"] == sorted(["a0.png", "a1.png", *({"a4.png", "a5.png"} - set(held_out))])
    with open(os.path.join(builders.dataset_dir(builder), "bad_rows.jsonl")) as f:
        assert "'split' must be one of" in [json.loads(line) for line in f][1]["reason"]


def test_rows_of_one_image_naming_different_splits_are_refused(tmp_path):
    rows = [{"image": "a0.png", "captions": ["x"], "split": "train"}, {"image": "a0.png", "captions": ["y"]}]
    _split_folder(tmp_path / "f", rows)
    with pytest.raises(ValueError, match=r"image 'a0.png' is in split 'train' on manifest line 1 and None on line 2"):
        builders.build_image_text_folder(str(tmp_path / "d"), str(tmp_path / "f"))


def test_documents_keep_their_named_split(tmp_path):
    root = tmp_path / "docs"
    _split_folder(root, [])
    docs = [
        {"chunks": ["one", {"image": "a0.png"}, "a"], "split": "test"},
        {"chunks": [{"image": "a1.png"}, "b"], "split": "train"},
        {"chunks": [{"image": "a2.png"}, "c"], "split": "val"},
    ]
    with open(root / "documents.jsonl", "w") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
    builder = builders.build_image_text_folder(str(tmp_path / "d"), str(root), kind="interleaved_folder")
    sources = builder.as_data_source()
    texts = {name: [list(map(bytes.decode, s[i]["texts"])) for i in range(len(s))] for name, s in sources.items()}
    assert texts == {"train": [["", "b"]], "test": [["one", "a"]], "val": [["", "c"]]}


def test_a_folder_built_with_a_hold_out_seed_loads_with_it(tmp_path):
    from vlpjax.config import load_config

    _split_folder(tmp_path / "f", [{"image": f"a{i}.png", "captions": [f"c{i}"]} for i in range(6)])
    builders.build_image_text_folder(str(tmp_path / "d"), str(tmp_path / "f"), seed=3)
    base = ["--config.data.name=image_text_folder", f"--config.data.folder={tmp_path / 'f'}"]
    base.append("--config.evals.zero_shot.enabled=False")  # captioned images carry no class labels
    base.append(f"--config.data.data_dir={tmp_path / 'd'}")
    config = load_config("configs/clip_shapes.py:tiny", [*base, "--config.data.split_seed=3"])
    assert builders.load_dataset(config.data).info.splits["test"].num_examples == 1  # round(6 * 0.1)
    with pytest.raises(FileNotFoundError, match="is not built"):
        builders.load_dataset(load_config("configs/clip_shapes.py:tiny", base).data)
