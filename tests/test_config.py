"""Configs: recipes load, overrides are typed, unknown keys stop with their name."""

import re

import pytest

from vlpjax.cli import main
from vlpjax.config import ConfigError, load_config

RECIPE = "configs/clip_shapes.py"


def test_recipe_loads_with_typed_overrides():
    config = load_config(
        RECIPE,
        ["--config.train.steps=12", "--config.optim.lr=0.01", "--config.data.flip=False", "--config.mesh.fsdp=2"],
    )
    assert config.train.steps == 12 and isinstance(config.train.steps, int)
    assert config.optim.lr == 0.01 and config.data.flip is False and config.mesh.fsdp == 2
    assert load_config(RECIPE + ":tiny").data.image_size == 32


def test_unknown_recipe_argument_fails_naming_the_known_ones():
    with pytest.raises(ConfigError, match=r"takes no argument 'huge'; it knows \('tiny',\)"):
        load_config(RECIPE + ":huge")


def test_unknown_config_key_fails_with_its_name():
    with pytest.raises(ConfigError, match="train.stepz"):
        load_config(RECIPE, ["--config.train.stepz=3"])
    with pytest.raises(ConfigError, match="'trainn'"):
        load_config(RECIPE, ["--config.trainn.steps=3"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("--config.train.steps=ten", "train.steps must be a number"),
        ("--config.train.steps=1.5", "must be an int"),
        ("--config.data.flip=1", "must be a bool"),
        ("--config.train.parallelism=ddp", "parallelism"),
        ("--config.train.steps=0", "train.steps must be at least 1"),
        ("--config.train.log_every=0", "train.log_every must be at least 1"),
        ("--config.train.keep_checkpoints=0", "train.keep_checkpoints must be at least 1"),
        ("--config.optim.lr=0.0", "optim.lr must be a positive finite number"),
        ("--config.optim.lr=-0.001", "optim.lr must be a positive finite number"),
        ("--config.optim.lr=1e999", "optim.lr must be a positive finite number"),
        ("--config.train.batch_size=12", r"train.batch_size 12 does not split over the 8 batch shards"),
        ("--config.mesh.data=3", r"mesh .*needs 3 devices, there are 8"),
        ("--config.mesh.tensor=3", r"8 devices cannot be split"),
    ],
)
def test_wrong_values_fail_before_building(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RECIPE, [override])


@pytest.mark.parametrize(
    "override,message",
    [
        ("--config.data.task=vqa", r"objectives.itc does not apply to data.task='vqa'"),
        ("--config.model.family=dual_encoder", r"objectives.itm needs a model family among \['fusion'\]"),
        ("--config.data.task=captions", "data.task must be one of"),
    ],
)
def test_objectives_that_cannot_run_fail_before_building(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/albef_shapes.py", [override])


def test_cli_reports_unknown_key_before_building(tmp_path, capsys):
    assert main(["train", "--config", RECIPE, "--workdir", str(tmp_path / "w"), "--config.train.bogus=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.bogus" in err and len(err.splitlines()) == 1  # one line, no traceback
    assert not (tmp_path / "w").exists()  # nothing was built
    with pytest.raises(ConfigError, match="train.bogus"):  # --debug: the exception itself
        main(["--debug", "train", "--config", RECIPE, "--workdir", str(tmp_path / "w"), "--config.train.bogus=1"])


def test_missing_recipe_is_named():
    with pytest.raises(ConfigError, match="nowhere.py"):
        load_config("configs/nowhere.py")


def test_missing_dataset_is_named(tmp_path, capsys):
    args = ["train", "--config", RECIPE + ":tiny", "--workdir", str(tmp_path / "w")]
    assert main([*args, f"--config.data.data_dir={tmp_path / 'nodata'}"]) == 2
    assert re.search("is not built.*vlpjax data build synthetic_shapes", capsys.readouterr().err)


ALL_RECIPES = sorted(f[:-3] for f in __import__("os").listdir("configs") if f.endswith(".py"))
SWITCHES = [
    "--config.model.dtype=bfloat16",
    "--config.model.attention=cudnn",
    "--config.model.remat=dots_saveable",
    "--config.model.scan_layers=True",
    "--config.train.grad_accum=2",
]


@pytest.mark.parametrize("recipe", ALL_RECIPES)
def test_every_recipe_takes_the_scale_switches(recipe, hf_recipe_args):
    config = load_config(f"configs/{recipe}.py:tiny", [*SWITCHES, *hf_recipe_args.get(recipe, [])])
    assert (config.model.dtype, config.model.attention, config.model.remat) == ("bfloat16", "cudnn", "dots_saveable")
    assert config.model.scan_layers is True and config.train.grad_accum == 2


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["--config.model.remat=full"],
            r"model.remat must be one of \('none', 'block', 'dots_saveable', 'nothing_saveable'\), got 'full'",
        ),
        (["--config.model.attention=flash"], r"model.attention must be one of \('xla', 'cudnn'\), got 'flash'"),
        (["--config.model.dtype=fp8"], r"model.dtype must be one of \('float32', 'bfloat16', 'float16'\)"),
        (["--config.model.attention=cudnn"], r"model.attention='cudnn' runs in bfloat16 or float16"),
        (["--config.train.grad_accum=0"], r"train.grad_accum must be a whole number >= 1, got 0"),
        (["--config.train.grad_accum=3"], r"train.grad_accum=3 does not divide the 4 rows each of the 8 batch shards"),
    ],
)
def test_bad_scale_switches_name_the_key_and_its_choices(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(f"{RECIPE}:tiny", overrides)
