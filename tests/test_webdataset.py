"""webdataset tar shards: brace patterns expand, samples stream (a truncated shard gives the
samples before the damage), and 3 shards with one corrupt image build with the bad sample
reported and the rest counted exactly."""

import gzip
import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from vlpjax import cli
from vlpjax.config import load_config
from vlpjax.data import builders
from vlpjax.data.webdataset import DamagedShard, expand_braces, shard_samples
from vlpjax.errors import InvalidInput


def _image_bytes(value, fmt="JPEG"):
    out = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(out, format=fmt)
    return out.getvalue()


def _shard(path, samples):
    """samples: [(key, {extension: bytes})], written in order as webdataset does."""
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for extension, data in files.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_brace_patterns_expand_like_webdataset():
    assert expand_braces("d/{000..002}.tar") == ["d/000.tar", "d/001.tar", "d/002.tar"]
    assert expand_braces("{a,b}-{8..10}") == ["a-8", "a-9", "a-10", "b-8", "b-9", "b-10"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(InvalidInput, match="counts down"):
        expand_braces("{5..1}")


def test_a_truncated_shard_streams_the_samples_before_the_damage_then_stops(tmp_path):
    path = tmp_path / "s.tar"
    _shard(path, [(f"{i:03d}", {"jpg": _image_bytes(i), "txt": b"a caption"}) for i in range(4)])
    whole = path.read_bytes()
    # A sample is 5 blocks of 512 bytes (2 headers, 2 for the image, 1 for the caption).
    for cut, seen_before in ((2 * 2560 + 700, ["000", "001"]), (2 * 2560, ["000"])):  # mid-member; on a boundary
        path.write_bytes(whole[:cut])
        seen = []
        with pytest.raises(DamagedShard, match="breaks off after"):
            for sample in shard_samples(str(path)):
                seen.append(sample.key)
        assert seen == seen_before
    gz = tmp_path / "s.tar.gz"
    gz.write_bytes(gzip.compress(whole)[:-200])
    with pytest.raises(DamagedShard):
        list(shard_samples(str(gz)))
    gz.write_bytes(gzip.compress(whole))
    assert [s.key for s in shard_samples(str(gz))] == ["000", "001", "002", "003"]


def test_members_group_as_webdataset_groups_them(tmp_path):
    path = tmp_path / "s.tar"
    jpg = _image_bytes(1)
    _shard(
        path, [("a/000", {"seg.png": jpg, "JPG": jpg, "txt": b"x"}), ("._000", {"jpg": jpg}), ("001", {"txt": b"y"})]
    )
    samples = list(shard_samples(str(path)))
    assert [(s.key, sorted(s.files)) for s in samples] == [("a/000", ["jpg", "seg.png", "txt"]), ("001", ["txt"])]


def test_three_shards_with_a_corrupt_image_build_and_report_it(tmp_path, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    _shard(
        shards / "000.tar",
        [(f"a{i}", {"jpg": _image_bytes(10 * i), "txt": f"caption a{i}".encode()}) for i in range(4)],
    )
    second = [
        (f"b{i}", {"jpg": _image_bytes(5 * i), "json": json.dumps({"caption": f"caption b{i}"}).encode()})
        for i in range(3)
    ]
    second.insert(1, ("b_bad", {"jpg": b"\xff\xd8 not really a jpeg", "txt": b"broken"}))
    _shard(shards / "001.tar", second)
    _shard(
        shards / "002.tar",
        [(f"c{i}", {"png": _image_bytes(i, "PNG"), "txt": f"caption c{i}".encode()}) for i in range(5)],
    )
    pattern = str(shards / "{000..002}.tar")
    args = ["data", "build", "webdataset", "--shards", pattern, "--data_dir", str(tmp_path / "d")]
    assert cli.main([*args, "--max_bad_fraction", "0.1"]) == 0
    assert "12 good rows, 1 bad rows skipped" in capsys.readouterr().out
    # With a quarter held out, the two splits hold every good sample once.
    quarter = builders.build_webdataset(str(tmp_path / "q"), pattern, max_bad_fraction=0.1, test_fraction=0.25)
    paths = {n: {s[i]["image_path"] for i in range(len(s))} for n, s in quarter.as_data_source().items()}
    assert len(paths["train"]) + len(paths["test"]) == 12 and not paths["train"] & paths["test"]
    assert 0 < len(paths["test"]) < 12

    config = load_config(
        "configs/clip_shapes.py:tiny",
        [
            "--config.data.name=webdataset",
            f"--config.data.shards={pattern}",
            f"--config.data.data_dir={tmp_path / 'd'}",
        ],
    )
    builder = builders.load_dataset(config.data)
    counts = {name: split.num_examples for name, split in builder.info.splits.items()}
    assert sum(counts.values()) == 12
    sources = builder.as_data_source()
    captions = sorted(s[i]["captions"][0].decode() for s in sources.values() for i in range(len(s)))
    assert captions == sorted([f"caption {p}{i}" for p, n in (("a", 4), ("b", 3), ("c", 5)) for i in range(n)])
    with open(os.path.join(builders.dataset_dir(builder), "bad_rows.jsonl")) as f:
        report = [json.loads(line) for line in f]
    assert report[0] == {"rows": 13, "good": 12, "bad": 1}
    assert report[1]["image"].endswith("001.tar:b_bad") and report[1]["line"] == 6


def test_data_build_offers_every_registered_dataset():
    assert sorted(cli.DATASET_KINDS) == sorted(builders.DATASETS)


def test_a_damaged_shard_stops_the_build_naming_it(tmp_path, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    for n in range(2):
        _shard(shards / f"{n}.tar", [(f"{n}_{i}", {"jpg": _image_bytes(i), "txt": b"a caption"}) for i in range(3)])
    (shards / "1.tar").write_bytes((shards / "1.tar").read_bytes()[:2560])  # cut after its first sample
    args = ["data", "build", "webdataset", "--shards", str(shards / "{0..1}.tar"), "--data_dir", str(tmp_path / "d")]
    assert cli.main(args) == 2
    assert "1.tar' breaks off after 0 samples" in capsys.readouterr().err
