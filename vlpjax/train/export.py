"""From a trained run to an artifact other tools read: a Hugging Face directory (decoder LMs,
CLIP / SigLIP dual encoders, a fusion model's BERT) or StableHLO serving functions.

An export never destroys anything it did not write: `--out` must be a new or empty directory,
or a previous export of the same kind when `overwrite` is set; it may not be the run's workdir,
a directory that holds it, or the current directory. The files are written into a staging
directory beside `out` and renamed into place whole; a failed export leaves no staging behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile

import ml_collections
from safetensors.numpy import save_file

from vlpjax.data.tokenizer import TOKENIZER_FILE
from vlpjax.errors import UserError
from vlpjax.interop import stablehlo
from vlpjax.interop.hf_clip import dual_encoder_tensors
from vlpjax.interop.hf_fusion import NAME_MAP_FILE, REST_FILE, fusion_tensors
from vlpjax.interop.hf_lm import save_decoder_lm
from vlpjax.interop.preprocessing import (
    PREPROCESSOR_FILE,
    image_processor_config,
    save_tokenizer,
    serving_preprocessing,
)
from vlpjax.interop.safetensors_io import save_hf_directory
from vlpjax.train.restore import trained_model

EXPORT_MARKER = "vlpjax_export.json"  # names what wrote the directory, so --overwrite knows it is ours


class ExportRefused(UserError):
    """`--out` names a directory an export must not write into."""


def _inside(path: str, directory: str) -> bool:
    return os.path.commonpath([path, directory]) == directory


def check_out_dir(out: str, workdir: str, kind: str, overwrite: bool) -> None:
    """Raise ExportRefused unless writing `out` can lose nothing but an earlier export of `kind`."""
    target, run = os.path.realpath(out), os.path.realpath(workdir)
    if target == os.path.realpath(os.getcwd()):
        raise ExportRefused(f"--out {out!r} is the current directory; name a new directory")
    if _inside(run, target):
        raise ExportRefused(f"--out {out!r} is the workdir {workdir!r} or holds it; name a new directory")
    if not os.path.exists(target) or (os.path.isdir(target) and not os.listdir(target)):
        return
    if not os.path.isdir(target):
        raise ExportRefused(f"--out {out!r} exists and is not a directory")
    previous = _export_kind(target)
    if previous != kind:
        what = f"an export of kind {previous!r}" if previous else "files vlpjax did not write"
        raise ExportRefused(f"--out {out!r} is not empty: it holds {what}; name a new directory")
    if not overwrite:
        raise ExportRefused(f"--out {out!r} holds an earlier {kind} export; pass --overwrite to replace it")


def _export_kind(directory: str) -> str | None:
    try:
        with open(os.path.join(directory, EXPORT_MARKER)) as f:
            return json.load(f).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


@contextlib.contextmanager
def staged_directory(out: str, kind: str):
    """Yield an empty staging directory beside `out`; on success it replaces `out` whole (an
    earlier export there is removed only after the new one is in place), on failure it is removed."""
    target = os.path.abspath(out)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=".export-")
    try:
        yield staging
        with open(os.path.join(staging, EXPORT_MARKER), "w") as f:
            json.dump({"kind": kind}, f)
        _swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_in(staging: str, target: str) -> None:
    """Move `staging` to `target`; an earlier export there is moved aside first and put back if
    the move fails, so `target` is never left empty."""
    if not os.path.exists(target):
        os.replace(staging, target)
        return
    old = tempfile.mkdtemp(dir=os.path.dirname(target), prefix=".replaced-")
    os.rmdir(old)
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old)


# --- what each (format, family) writes ------------------------------------------------------
# A writer takes (model, data, config) and returns the function that writes the files into the
# staging directory. Everything that can refuse (a choice HF cannot represent) runs before that
# function is returned, so a refused export writes nothing.


def _special_ids(tokenizer) -> dict:
    ids = {"bos_token_id": tokenizer.cls_id, "eos_token_id": tokenizer.sep_id, "pad_token_id": tokenizer.pad_id}
    return {k: v for k, v in ids.items() if v is not None}


def _hf_decoder_lm(model, data, config, options):
    special = _special_ids(data.tokenizer)

    def write(staging: str) -> None:
        save_decoder_lm(model.lm, staging, extra_config=special)
        save_tokenizer(staging, data.tokenizer, config.data.text_len)

    return write


def _hf_dual_encoder(model, data, config, options):
    hf_config, tensors = dual_encoder_tensors(model, _special_ids(data.tokenizer))

    def write(staging: str) -> None:
        save_hf_directory(staging, hf_config, tensors)
        save_tokenizer(staging, data.tokenizer, config.data.text_len)
        vit = model.img.config
        processor = image_processor_config(config.data.image_size, hf_config, vit.pixel_mean, vit.pixel_std)
        _write_json(staging, PREPROCESSOR_FILE, processor)

    return write


def _hf_fusion(model, data, config, options):
    bert_config, bert_tensors, rest, name_map = fusion_tensors(model)

    def write(staging: str) -> None:
        save_hf_directory(staging, bert_config, bert_tensors)
        save_tokenizer(staging, data.tokenizer, config.data.text_len)
        save_file(rest, os.path.join(staging, REST_FILE))
        _write_json(staging, NAME_MAP_FILE, name_map)

    return write


def _stablehlo_dual_encoder(model, data, config, options):
    preprocessing = serving_preprocessing(config, data.tokenizer)

    def write(staging: str) -> None:
        stablehlo.export_dual_encoder(
            model,
            staging,
            image_size=config.data.image_size,
            text_len=config.data.text_len,
            preprocessing=preprocessing,
        )
        data.tokenizer.save(os.path.join(staging, TOKENIZER_FILE))

    return write


def _decoding_lengths(config, lm_config, options: dict) -> dict:
    """The prompt length (default data.text_len) and cache length (default the LM's positions)."""
    return dict(
        prompt_len=options.get("prompt_len") or int(config.data.text_len),
        max_len=options.get("max_len") or int(lm_config.max_positions),
    )


def _stablehlo_decoder_lm(model, data, config, options):
    preprocessing = serving_preprocessing(config, data.tokenizer, padding="left")
    lengths = _decoding_lengths(config, model.lm.config, options)

    def write(staging: str) -> None:
        stablehlo.export_decoder_lm(model.lm, staging, preprocessing=preprocessing, **lengths)
        data.tokenizer.save(os.path.join(staging, TOKENIZER_FILE))

    return write


def _stablehlo_flamingo(model, data, config, options):
    preprocessing = serving_preprocessing(config, data.tokenizer, padding="left")
    lengths = _decoding_lengths(config, model.lm.config, options)
    num_media = options.get("num_media") or int(config.data.get("chunks", 2))

    def write(staging: str) -> None:
        stablehlo.export_flamingo(
            model,
            staging,
            num_media=num_media,
            image_size=config.data.image_size,
            preprocessing=preprocessing,
            **lengths,
        )
        data.tokenizer.save(os.path.join(staging, TOKENIZER_FILE))

    return write


EXPORTERS = {
    ("hf", "decoder_lm"): _hf_decoder_lm,
    ("hf", "dual_encoder"): _hf_dual_encoder,
    ("hf", "fusion"): _hf_fusion,
    ("stablehlo", "dual_encoder"): _stablehlo_dual_encoder,
    ("stablehlo", "decoder_lm"): _stablehlo_decoder_lm,
    ("stablehlo", "flamingo"): _stablehlo_flamingo,
}
EXPORT_FORMATS = ("hf", "stablehlo")


def _write_json(directory: str, name: str, value: dict) -> None:
    with open(os.path.join(directory, name), "w") as f:
        json.dump(value, f, indent=2)


def export_run(
    config: ml_collections.ConfigDict,
    workdir: str,
    out: str,
    fmt: str = "hf",
    overwrite: bool = False,
    **options,
) -> str:
    """`vlpjax export`: the latest checkpoint of `workdir` as `fmt` in `out` (README, Import and
    export). `options` (stablehlo, decoders): prompt_len, max_len, num_media; None = the default."""
    family = config.model.family
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"--format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    if (fmt, family) not in EXPORTERS:
        families = sorted(f for f_fmt, f in EXPORTERS if f_fmt == fmt)
        raise UserError(f"--format {fmt} exports the model families {families}; this recipe is {family!r}")
    kind = f"{fmt}_{family}"
    check_out_dir(out, workdir, kind, overwrite)
    model, data = trained_model(config, workdir)
    write = EXPORTERS[(fmt, family)](model, data, config, options)
    with staged_directory(out, kind) as staging:
        write(staging)
    return out


def export_decoder_lm(config: ml_collections.ConfigDict, workdir: str, out: str, overwrite: bool = False) -> str:
    """The LM of a decoder_lm run, with its tokenizer, as config.json + model.safetensors +
    tokenizer.json in `out`."""
    if config.model.family != "decoder_lm":
        raise UserError(f"this writes decoder LMs (model.family='decoder_lm'); this recipe is {config.model.family!r}")
    return export_run(config, workdir, out, "hf", overwrite)
