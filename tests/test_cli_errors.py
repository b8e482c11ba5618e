"""What a user gets wrong ends with one line naming it and exit status 2; export never
destroys a directory it did not write."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.test_flamingo import VOCAB, open_gates, tiny_flamingo
from tests.test_tokenizer import word_tokenizer
from vlpjax.cli import main
from vlpjax.errors import UserError
from vlpjax.evaluate.prompting import continue_prompt
from vlpjax.train import export

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LM = os.path.join(ROOT, "configs", "lm_shapes.py") + ":tiny"
CLIP = os.path.join(ROOT, "configs", "clip_shapes.py") + ":tiny"
FLAMINGO = os.path.join(ROOT, "configs", "flamingo_shapes.py") + ":tiny"


def _one_line_error(capsys, *args) -> str:
    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # no traceback
    return err


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A directory of the user's files with a sentinel, the current directory of the test."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "sentinel.txt").write_text("keep me")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _sentinel_intact(scratch):
    assert (scratch / "mine" / "sentinel.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "out,message",
    [
        ("mine", "is not empty: it holds files vlpjax did not write"),
        ("mine/run", "is the workdir"),
        ("mine", "is the workdir 'mine/run' or holds it"),
        (".", "is the current directory"),
    ],
)
def test_export_refuses_to_write_over_what_it_did_not_write(scratch, capsys, out, message):
    workdir = "mine/run" if "workdir" in message else "elsewhere"
    (scratch / workdir).mkdir(parents=True, exist_ok=True)
    err = _one_line_error(capsys, "export", "--config", LM, "--workdir", workdir, "--out", out)
    assert message in err
    _sentinel_intact(scratch)
    assert not [p for p in os.listdir(scratch) if p.startswith(".export-")]


def test_export_replaces_only_its_own_earlier_export_and_only_when_asked(scratch, tmp_path, monkeypatch):
    out = str(scratch / "hf")

    def fake_save(lm, directory, extra_config):
        (open(os.path.join(directory, "model.safetensors"), "w")).write("weights")

    class FakeTokenizer:
        cls_id, sep_id, pad_id, unk_id, mask_id = 1, 2, None, None, None

        def save(self, path):
            open(path, "w").write("{}")

        def token(self, token_id):
            return f"[{token_id}]"

    class FakeModel:
        lm = None

    monkeypatch.setattr(
        export, "trained_model", lambda config, workdir: (FakeModel(), type("D", (), {"tokenizer": FakeTokenizer()}))
    )
    monkeypatch.setattr(export, "save_decoder_lm", fake_save)
    from vlpjax.config import load_config

    config = load_config(LM)
    export.export_decoder_lm(config, "run", out)
    assert sorted(os.listdir(out)) == [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        export.EXPORT_MARKER,
    ]
    with pytest.raises(export.ExportRefused, match="pass --overwrite"):
        export.export_decoder_lm(config, "run", out)
    export.export_decoder_lm(config, "run", out, overwrite=True)
    assert os.path.isfile(os.path.join(out, "model.safetensors"))

    def failing_save(lm, directory, extra_config):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "save_decoder_lm", failing_save)
    with pytest.raises(OSError, match="No space left"):
        export.export_decoder_lm(config, "run", out, overwrite=True)
    assert os.path.isfile(os.path.join(out, "model.safetensors"))  # the earlier export is intact
    assert not [p for p in os.listdir(scratch) if p.startswith((".export-", ".replaced-"))]
    _sentinel_intact(scratch)


def test_generate_names_each_bad_argument(tmp_path, capsys):
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    workdir = str(tmp_path / "w")
    base = ["generate", "--config", FLAMINGO, "--workdir", workdir]
    assert "--max_new_tokens must be at least 1" in _one_line_error(
        capsys, *base, "--image", str(image), "--max_new_tokens", "0"
    )
    assert "is a directory, not an image file" in _one_line_error(capsys, *base, "--image", str(tmp_path))
    assert "is not an image Pillow can read" in _one_line_error(capsys, *base, "--image", str(not_image))
    assert str(not_image) in _one_line_error(capsys, *base, "--image", str(not_image))
    assert "does not exist" in _one_line_error(capsys, *base, "--image", str(tmp_path / "nope.png"))
    err = _one_line_error(capsys, "generate", "--config", CLIP, "--workdir", workdir, "--image", str(image))
    assert "works with the families ['coca', 'flamingo', 'fusion', 'prefix_lm']" in err and "'dual_encoder'" in err


def test_a_prompt_past_the_position_limit_is_refused(tmp_path):
    model = tiny_flamingo()  # max_positions 32
    open_gates(model)
    tokenizer = word_tokenizer(tmp_path, [f"w{i}" for i in range(VOCAB)])
    image = np.zeros((8, 8, 3), np.uint8)
    assert isinstance(continue_prompt(model, tokenizer, [image], "<image>w3 w4", 8, max_new_tokens=4), str)
    with pytest.raises(UserError, match="exceeds the LM's 32 positions"):
        continue_prompt(model, tokenizer, [image], "<image>w3 w4", 8, max_new_tokens=40)


def test_a_weight_index_cannot_read_outside_its_directory(tmp_path):
    from safetensors.numpy import save_file

    from vlpjax.interop.safetensors_io import UnsafeShardPath, read_safetensors

    (tmp_path / "elsewhere").mkdir()
    save_file({"w": np.ones(2, np.float32)}, str(tmp_path / "elsewhere" / "x.safetensors"))
    model = tmp_path / "a" / "model"
    model.mkdir(parents=True)
    save_file({"v": np.zeros(2, np.float32)}, str(model / "part.safetensors"))
    index = {"weight_map": {"v": "part.safetensors", "w": "../../elsewhere/x.safetensors"}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UnsafeShardPath, match=r"names shard '../../elsewhere/x.safetensors'"):
        read_safetensors(str(model))
    index["weight_map"]["w"] = "part.safetensors"
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    assert set(read_safetensors(str(model))) == {"v"}


def test_bad_data_settings_are_one_line_errors(tmp_path, capsys, tiny_shapes_dir):
    base = ["train", "--config", CLIP, "--workdir", str(tmp_path / "w"), f"--config.data.data_dir={tiny_shapes_dir}"]
    folder = ["--config.data.name=image_text_folder", "--config.evals.zero_shot.enabled=False"]
    err = _one_line_error(capsys, *base, *folder)
    assert "data.folder must name the image folder" in err
    (tmp_path / "empty").mkdir()
    err = _one_line_error(capsys, *base, f"--config.data.tokenizer={tmp_path / 'empty'}")
    assert "cannot load a tokenizer from" in err and "empty" in err
