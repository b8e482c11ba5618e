"""From a trained run to an artifact other tools read: a decoder LM as a Hugging Face directory.

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

from vlpjax.data.tokenizer import TOKENIZER_FILE
from vlpjax.errors import UserError
from vlpjax.interop.hf_lm import save_decoder_lm
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


def export_decoder_lm(config: ml_collections.ConfigDict, workdir: str, out: str, overwrite: bool = False) -> str:
    """The LM of a decoder_lm run, with its tokenizer, as config.json + model.safetensors +
    tokenizer.json in `out`."""
    if config.model.family != "decoder_lm":
        raise UserError(
            f"vlpjax export writes decoder LMs (model.family='decoder_lm'); this recipe is {config.model.family!r}"
        )
    kind = "hf_decoder_lm"
    check_out_dir(out, workdir, kind, overwrite)
    model, data = trained_model(config, workdir)
    t = data.tokenizer
    special = {"bos_token_id": t.cls_id, "eos_token_id": t.sep_id, "pad_token_id": t.pad_id}
    with staged_directory(out, kind) as staging:
        save_decoder_lm(model.lm, staging, extra_config={k: v for k, v in special.items() if v is not None})
        t.save(os.path.join(staging, TOKENIZER_FILE))
    return out
