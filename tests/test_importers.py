"""`vlpjax data import`: small files written here in the published formats (COCO captions,
Karpathy's splits, VQAv2 questions + annotations, Flickr30k) become image_text_folder manifests
with every caption, the official splits and VQAv2's 10 answers; the folder then builds."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from vlpjax import cli
from vlpjax.data import builders
from vlpjax.data.importers import import_coco_captions, import_flickr30k, import_vqav2, write_folder


def _jpeg(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def _json(path, value):
    path.write_text(json.dumps(value))
    return str(path)


def _coco_name(subtype, image_id):
    return f"COCO_{subtype}_{image_id:012d}.jpg"


@pytest.fixture
def coco(tmp_path):
    """Images 1 (train2014), 2 and 4 (val2014) on disk; image 3 named by the files but missing."""
    images = tmp_path / "coco"
    _jpeg(images / "train2014" / _coco_name("train2014", 1), 10)
    _jpeg(images / "val2014" / _coco_name("val2014", 2), 20)
    _jpeg(images / "val2014" / _coco_name("val2014", 4), 40)

    def captions_file(name, subtype, ids):
        entries = [{"id": i, "file_name": _coco_name(subtype, i), "width": 8, "height": 8} for i in ids]
        notes = [
            {"id": 10 * i + k, "image_id": i, "caption": f"image {i} caption {k} \n"} for i in ids for k in range(5)
        ]
        return _json(tmp_path / name, {"info": {}, "images": entries, "annotations": notes})

    train = captions_file("captions_train2014.json", "train2014", [1, 3])
    val = captions_file("captions_val2014.json", "val2014", [2, 4])
    splits = {1: ("train2014", "train"), 2: ("val2014", "test"), 3: ("train2014", "val"), 4: ("val2014", "restval")}
    karpathy = _json(
        tmp_path / "dataset_coco.json",
        {
            "dataset": "coco",
            "images": [
                {"filepath": folder, "filename": _coco_name(folder, i), "cocoid": i, "split": split, "sentences": []}
                for i, (folder, split) in splits.items()
            ],
        },
    )
    return images, [train, val], karpathy


def test_coco_captions_with_karpathy_splits(coco, tmp_path):
    images, captions, karpathy = coco
    imported = import_coco_captions(str(images), captions, karpathy)
    rows = {row["image"]: row for row in imported.rows}
    assert sorted(rows) == [
        "train2014/" + _coco_name("train2014", 1),
        *("val2014/" + _coco_name("val2014", i) for i in (2, 4)),
    ]
    assert rows["train2014/" + _coco_name("train2014", 1)]["captions"] == [f"image 1 caption {k}" for k in range(5)]
    splits = {row["image"][-6:-4]: row["split"] for row in imported.rows}
    assert splits == {"01": "train", "02": "test", "04": "train"}  # Karpathy's restval trains
    assert imported.missing == ["train2014/" + _coco_name("train2014", 3)]

    manifest = write_folder(imported, str(images), str(tmp_path / "out"))
    builder = builders.build_image_text_folder(str(tmp_path / "data"), str(tmp_path / "out"))
    assert {n: s.num_examples for n, s in builder.info.splits.items()} == {"train": 2, "test": 1}
    assert len(open(manifest).read().splitlines()) == 3


def test_coco_captions_without_karpathy_find_images_in_any_folder(coco):
    images, captions, _ = coco
    imported = import_coco_captions(str(images), captions)
    assert sorted(row["image"].split("/")[0] for row in imported.rows) == ["train2014", "val2014", "val2014"]
    assert all("split" not in row for row in imported.rows)  # the random hold-out decides


def test_vqav2_keeps_the_ten_answers(tmp_path):
    images = tmp_path / "coco"
    _jpeg(images / "val2014" / _coco_name("val2014", 7), 70)
    questions = [
        {"image_id": 7, "question": "What colour is it?", "question_id": 70},
        {"image_id": 7, "question": "Is it square?", "question_id": 71},
        {"image_id": 8, "question": "How many?", "question_id": 80},  # image 8 is missing
    ]
    answers = {70: ["grey"] * 7 + ["gray"] * 3, 71: ["yes"] * 9 + ["no"], 80: ["2"] * 10}
    notes = [
        {
            "question_id": q,
            "image_id": q // 10,
            "answers": [{"answer": a, "answer_id": k + 1} for k, a in enumerate(ans)],
        }
        for q, ans in answers.items()
    ]
    q_file = _json(tmp_path / "q.json", {"data_subtype": "val2014", "questions": questions})
    a_file = _json(tmp_path / "a.json", {"data_subtype": "val2014", "annotations": notes})
    imported = import_vqav2(str(images), [q_file], [a_file], split=["test"])
    assert [row["question"] for row in imported.rows] == ["What colour is it?", "Is it square?"]
    assert imported.rows[0]["answers"] == answers[70] and len(imported.rows[1]["answers"]) == 10
    assert {row["split"] for row in imported.rows} == {"test"}
    assert imported.missing == ["val2014/" + _coco_name("val2014", 8)]


def test_flickr30k_from_karpathy(tmp_path):
    images = tmp_path / "flickr"
    _jpeg(images / "1.jpg", 1)
    _jpeg(images / "2.jpg", 2)
    entries = [
        {
            "filename": f"{i}.jpg",
            "split": split,
            "sentences": [{"raw": f"a photo {i}.{k}", "tokens": []} for k in range(5)],
        }
        for i, split in ((1, "train"), (2, "test"))
    ]
    imported = import_flickr30k(str(images), _json(tmp_path / "dataset_flickr30k.json", {"images": entries}))
    assert [(row["image"], row["split"], len(row["captions"])) for row in imported.rows] == [
        ("1.jpg", "train", 5),
        ("2.jpg", "test", 5),
    ]


def test_the_cli_names_a_missing_file_argument(tmp_path, capsys):
    code = cli.main(
        ["data", "import", "vqav2", "--images", str(tmp_path), "--out", str(tmp_path / "o"), "--questions", "q"]
    )
    assert code == 2 and "vlpjax data import vqav2 needs --annotations" in capsys.readouterr().err


def test_coco_images_anywhere_under_images_captions_once_each(coco, tmp_path):
    """Images moved one folder down are still found with Karpathy's file; a captions file given
    twice does not double the captions; an empty caption is dropped."""
    images, captions, karpathy = coco
    moved = tmp_path / "moved"
    moved.mkdir()
    os.rename(images, moved / "images")
    data = json.loads(open(captions[1]).read())
    data["annotations"].append({"id": 999, "image_id": 2, "caption": "   "})
    open(captions[1], "w").write(json.dumps(data))
    imported = import_coco_captions(str(moved), [*captions, captions[1]], karpathy)
    assert len(imported.rows) == 3 and all(len(row["captions"]) == 5 for row in imported.rows)
    assert all(row["image"].startswith("images/") for row in imported.rows)


def test_an_import_never_replaces_a_manifest_unasked(coco, tmp_path):
    images, captions, karpathy = coco
    imported = import_coco_captions(str(images), captions, karpathy)
    write_folder(imported, str(images), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="already holds a manifest.jsonl"):
        write_folder(imported, str(images), str(tmp_path / "out"))
    write_folder(imported, str(images), str(tmp_path / "out"), overwrite=True)
