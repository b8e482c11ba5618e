"""`vlpjax train | eval | export | generate | data build`: the command line.

vlpjax data build synthetic_shapes --data_dir data
vlpjax data build image_text_folder --folder my_images --data_dir data
vlpjax data build interleaved_folder --folder my_docs --data_dir data
vlpjax data import coco-captions --captions captions_val2014.json --images coco --out my_coco [--karpathy K.json]
vlpjax data build webdataset --shards 'laion/{00000..00099}.tar' --data_dir data
vlpjax train --config configs/clip_shapes.py[:arg] --workdir DIR [--config.key=value ...]
vlpjax eval  --config configs/clip_shapes.py --workdir DIR
vlpjax export --config configs/clip_shapes.py --workdir DIR --out OUT [--format hf|stablehlo]
vlpjax generate --config configs/flamingo_shapes.py --workdir DIR --image a.png --prompt "..."
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections import Counter

from vlpjax.errors import UserError
from vlpjax.taxonomy import FAMILIES

# builders.DATASETS, spelled out: importing the builders (TFDS) for every command is slow.
DATASET_KINDS = ["synthetic_shapes", "image_text_folder", "interleaved_folder", "image_class_folder", "webdataset"]


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="configs/<recipe>.py[:arg]")
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, TensorBoard logs, PNGs")


def _cluster_args(parser: argparse.ArgumentParser) -> None:
    """One of several processes (see README, Scaling out); SLURM, Open MPI and TPU VMs need none."""
    parser.add_argument("--coordinator", help="HOST:PORT of process 0 (or VLPJAX_COORDINATOR)")
    parser.add_argument("--num_processes", type=int, help="processes in the job (or VLPJAX_NUM_PROCESSES)")
    parser.add_argument("--process_id", type=int, help="this process, 0..N-1 (or VLPJAX_PROCESS_ID)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlpjax", description="image-text pretraining in JAX")
    parser.add_argument("--debug", action="store_true", help="show the traceback of every error")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("train", "train a recipe (resumes from the workdir)"),
        ("eval", "evaluate a workdir's checkpoint"),
    ):
        command = commands.add_parser(name, help=text)
        _config_args(command)
        _cluster_args(command)
    export = commands.add_parser("export", help="write a run as a Hugging Face directory or StableHLO functions")
    _config_args(export)
    export.add_argument("--out", required=True, help="the directory to write (README, Import and export)")
    export.add_argument(
        "--format",
        default="hf",
        choices=["hf", "stablehlo"],
        help="hf: a Hugging Face directory; stablehlo: jax.export serving functions",
    )
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export of the same kind in --out")
    export.add_argument("--prompt_len", type=int, help="stablehlo decoders: prompt tokens (default data.text_len)")
    export.add_argument("--max_len", type=int, help="stablehlo decoders: KV cache slots (default the LM's positions)")
    export.add_argument("--num_media", type=int, help="stablehlo Flamingo: images per prompt (default data.chunks)")
    generate = commands.add_parser(
        "generate",
        help="Flamingo: continue a prompt about the images; CoCa, PrefixLM, BLIP's decoder: caption each image "
        "or answer --question",
    )
    _config_args(generate)
    generate.add_argument(
        "--image", action="append", required=True, help="an image file; repeat for several <image> markers"
    )
    generate.add_argument(
        "--prompt",
        default="",
        help="Flamingo: text with <image> markers (one is prepended if there is none); else a caption's first words",
    )
    generate.add_argument(
        "--question", help="CoCa, PrefixLM, BLIP's decoder: answer this question about each image (a VQA recipe's run)"
    )
    generate.add_argument(
        "--max_new_tokens", type=int, help="default: Flamingo 32; a captioner, as many as its text positions allow"
    )
    generate.add_argument("--beams", type=int, default=1, help="1: greedy; more: beam search")
    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    build = data.add_parser("build", help="build a dataset into --data_dir")
    build.add_argument("name", choices=DATASET_KINDS)
    build.add_argument("--data_dir", default="data")
    build.add_argument("--image_size", type=int, default=64, help="synthetic_shapes")
    build.add_argument("--train_size", type=int, default=50_000, help="synthetic_shapes")
    build.add_argument("--test_size", type=int, default=1_000, help="synthetic_shapes")
    build.add_argument(
        "--seed", type=int, default=0, help="shapes: the scenes; folders, webdataset: the hold-out (data.split_seed)"
    )
    build.add_argument("--folder", help="image_text_folder: the folder holding the images and manifest")
    build.add_argument(
        "--manifest",
        default=None,
        help="folders: manifest path relative to the folder (manifest.jsonl; documents.jsonl for interleaved_folder)",
    )
    build.add_argument(
        "--max_bad_fraction", type=float, default=0.05, help="folders, webdataset: stop when more rows are bad"
    )
    build.add_argument("--shards", help="webdataset: tar shards, brace ranges expanded: 'dir/{00000..00099}.tar'")
    _import_args(data)
    return parser


def _import_args(data) -> None:
    """`vlpjax data import FORMAT`: a published dataset's files -> an image_text_folder."""
    from vlpjax.data.importers import IMPORTERS

    imports = data.add_parser("import", help="write a published dataset as an image_text_folder (README, Your data)")
    imports.add_argument("format", choices=sorted(IMPORTERS))
    imports.add_argument("--images", required=True, help="the directory the dataset's image paths are relative to")
    imports.add_argument("--out", required=True, help="the folder to write: images/ and manifest.jsonl")
    imports.add_argument("--captions", action="append", help="coco-captions: a captions_*.json (repeat for several)")
    imports.add_argument("--karpathy", help="coco-captions (optional) and flickr30k: Karpathy's dataset_*.json")
    imports.add_argument("--questions", action="append", help="vqav2: a questions file (repeat, with its annotations)")
    imports.add_argument("--annotations", action="append", help="vqav2: the annotations of each --questions")
    imports.add_argument(
        "--split", action="append", choices=["train", "val", "test"], help="vqav2: the split of each --questions"
    )
    imports.add_argument("--copy", action="store_true", help="copy the images (default: hard links where possible)")
    imports.add_argument("--overwrite", action="store_true", help="replace the manifest.jsonl --out already holds")


def _import_data(args) -> None:
    import inspect

    from vlpjax.data.importers import IMPORTERS, write_folder

    importer = IMPORTERS[args.format]
    kwargs = {}
    for name, parameter in inspect.signature(importer).parameters.items():
        if name == "images_dir":
            continue
        value = getattr(args, name)
        if value is None and parameter.default is inspect.Parameter.empty:
            raise UserError(f"vlpjax data import {args.format} needs --{name}")
        kwargs[name] = value
    imported = importer(args.images, **kwargs)
    manifest = write_folder(imported, args.images, args.out, copy=args.copy, overwrite=args.overwrite)
    splits = Counter(row.get("split", "(random hold-out)") for row in imported.rows)
    print(f"{len(imported.rows)} rows ({dict(splits)}) in {manifest}")
    if imported.missing:
        print(f"{len(imported.missing)} images named but not under --images, left out; first: {imported.missing[:3]}")
    print(f"next: vlpjax data build image_text_folder --folder {args.out} --data_dir data")


def _build_data(args) -> None:
    from vlpjax.data import builders

    if args.name == "webdataset":
        if not args.shards:
            raise SystemExit("vlpjax data build webdataset: --shards is required")
        builder = builders.build_webdataset(
            args.data_dir, args.shards, max_bad_fraction=args.max_bad_fraction, seed=args.seed
        )
    elif args.name == "image_class_folder":
        if not args.folder:
            raise SystemExit("vlpjax data build image_class_folder: --folder is required")
        builder = builders.build_image_class_folder(
            args.data_dir, args.folder, max_bad_fraction=args.max_bad_fraction, seed=args.seed
        )
    elif args.name == "synthetic_shapes":
        builder = builders.build_synthetic_shapes(
            args.data_dir,
            image_size=args.image_size,
            train_size=args.train_size,
            test_size=args.test_size,
            seed=args.seed,
        )
    else:
        if not args.folder:
            raise SystemExit(f"vlpjax data build {args.name}: --folder is required")
        manifest = {"manifest": args.manifest} if args.manifest else {}
        builder = builders.build_image_text_folder(
            args.data_dir,
            args.folder,
            kind=args.name,
            max_bad_fraction=args.max_bad_fraction,
            seed=args.seed,
            **manifest,
        )
    report = getattr(builder, "scan_report", None)  # folders and webdataset: what was skipped
    if report is not None:
        print(
            f"{len(report.rows)} good rows, {len(report.bad)} bad rows skipped "
            f"(listed in {builders.dataset_dir(builder)}/bad_rows.jsonl)"
        )
    splits = {name: info.num_examples for name, info in builder.info.splits.items()}
    print(f"{args.name}: {splits} in {builders.dataset_dir(builder)}")


def _read_image(path: str):
    """An image file as uint8 [H, W, 3], or a UserError naming the path."""
    from PIL import UnidentifiedImageError

    from vlpjax.data.images import decode_image

    if os.path.isdir(path):
        raise UserError(f"--image {path!r} is a directory, not an image file")
    if not os.path.isfile(path):
        raise UserError(f"--image {path!r} does not exist")
    with open(path, "rb") as f:
        data = f.read()
    try:
        return decode_image(data)
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"--image {path!r} is not an image Pillow can read ({type(err).__name__})") from None


def _continue_with_flamingo(config, args, images) -> None:
    """One continuation of the prompt, its <image> markers standing for the images in order."""
    from vlpjax.evaluate.prompting import continue_prompt, with_image_markers
    from vlpjax.train.restore import trained_model

    if args.question:
        raise UserError("--question answers with CoCa, PrefixLM and BLIP runs; ask Flamingo in --prompt")
    prompt = with_image_markers(args.prompt, len(images))  # before the (slow) restore
    model, data = trained_model(config, args.workdir)
    image_size, new_tokens = config.data.image_size, args.max_new_tokens or 32
    print(continue_prompt(model, data.tokenizer, images, prompt, image_size, new_tokens, args.beams))


def _caption_each_image(config, args, images) -> None:
    """A caption of each image, starting with the prompt's words if there are any; with
    --question, an answer to it instead."""
    import numpy as np

    from vlpjax.data.images import normalize, resize
    from vlpjax.data.question_answer import question_prompt
    from vlpjax.evaluate.captioner import Captioner
    from vlpjax.train.restore import trained_model

    if args.question and args.prompt:
        raise UserError("give --prompt (a caption's first words) or --question, not both")
    model, data = trained_model(config, args.workdir)
    captioner = Captioner(model, data.tokenizer, args.beams)
    if args.question:
        prompt = question_prompt(data.tokenizer, args.question, model.max_text_len - 1)
    else:
        prompt = captioner.caption_prompt(args.prompt)
    new_tokens = args.max_new_tokens or model.max_text_len - len(prompt)
    if new_tokens < 1 or len(prompt) + new_tokens > model.max_text_len:
        raise UserError(
            f"the prompt's {len(prompt)} tokens and --max_new_tokens {new_tokens} exceed "
            f"the model's {model.max_text_len} text positions"
        )
    pixels = np.stack([normalize(resize(image, config.data.image_size)) for image in images])
    texts = captioner.texts(captioner.generate_ids({"image": pixels}, new_tokens, [prompt] * len(images)))
    for path, text in zip(args.image, texts, strict=True):
        print(f"{path}: {' '.join(part for part in (args.prompt.strip(), text) if part)}")


# What `vlpjax generate` does with each family's run.
GENERATE_BY_FAMILY = {
    "flamingo": _continue_with_flamingo,
    "coca": _caption_each_image,
    "prefix_lm": _caption_each_image,
    "fusion": _caption_each_image,  # with model.decoder (BLIP)
}


def _generate(config, args) -> None:
    if config.model.family not in GENERATE_BY_FAMILY:
        raise UserError(
            f"vlpjax generate works with the families {sorted(GENERATE_BY_FAMILY)}; this recipe is "
            f"{config.model.family!r}"
        )
    switch = FAMILIES[config.model.family].decoder_switch
    if switch and not config.model.get(switch):
        raise UserError(
            f"vlpjax generate needs a text decoder: this {config.model.family} recipe has no model.{switch}"
        )
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UserError(f"--max_new_tokens must be at least 1, got {args.max_new_tokens}")
    GENERATE_BY_FAMILY[config.model.family](config, args, [_read_image(path) for path in args.image])


def _setup_logging() -> None:
    """vlpjax's own log lines (progress notes, the final report) reach the terminal as plain text;
    other libraries keep their defaults."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("vlpjax")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False


# OS errors a user fixes (a full disk, a read-only or unwritable place), not bugs.
USER_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOENT, errno.ENOTDIR)


def _is_user_error(err: BaseException) -> bool:
    if isinstance(err, (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return True
    return isinstance(err, OSError) and err.errno in USER_ERRNOS


def _peer_timeout(args, extra) -> int:
    """train.peer_timeout_s of the recipe and its overrides, read before JAX starts."""
    from vlpjax.config import apply_overrides, load_recipe

    return int(apply_overrides(load_recipe(args.config), extra).train.get("peer_timeout_s", 300))


def _join_cluster(args, extra) -> None:
    """Before any other JAX call: join the job when this process is one of several."""
    from vlpjax.parallel import distributed

    settings = distributed.cluster_settings(
        getattr(args, "coordinator", None), getattr(args, "num_processes", None), getattr(args, "process_id", None)
    )
    if settings is None:
        return
    distributed.initialize(**settings, peer_timeout_s=_peer_timeout(args, extra))
    import jax

    if jax.process_index() == 0:
        logging.getLogger("vlpjax").info("joined the job: %s", distributed.describe_job())
    else:  # one copy of the progress notes is enough; warnings and errors still show everywhere
        logging.getLogger("vlpjax").setLevel(logging.WARNING)


def _run(args, extra) -> None:
    if args.command == "data":
        _import_data(args) if args.data_command == "import" else _build_data(args)
        return
    if args.command in ("train", "eval"):
        _join_cluster(args, extra)
        from vlpjax.parallel.distributed import naming_lost_peers

        with naming_lost_peers():
            _run_command(args, extra)
        return
    _run_command(args, extra)


def _run_command(args, extra) -> None:
    from vlpjax.config import load_config

    config = load_config(args.config, extra)
    if args.command == "train":
        from vlpjax.train.loop import train

        train(config, args.workdir)
    elif args.command == "export":
        from vlpjax.train.export import export_run

        lengths = dict(prompt_len=args.prompt_len, max_len=args.max_len, num_media=args.num_media)
        print(f"wrote {export_run(config, args.workdir, args.out, args.format, args.overwrite, **lengths)}")
    elif args.command == "generate":
        _generate(config, args)
    else:
        from vlpjax.train.restore import evaluate_workdir

        evaluate_workdir(config, args.workdir)


def main(argv=None) -> int:
    """Expected problems (UserError, a missing file, a full disk, a read-only workdir) end with one
    line naming the culprit and exit status 2; anything else is a bug and keeps its traceback.
    `--debug` shows the traceback always."""
    from vlpjax.xla_flags import apply_default_flags

    apply_default_flags()
    _setup_logging()
    argv = sys.argv[1:] if argv is None else argv
    args, extra = _parser().parse_known_args(argv)
    unknown = [a for a in extra if not a.startswith("--config.")]
    if unknown:
        raise SystemExit(f"vlpjax: unknown arguments {unknown}")
    try:
        _run(args, extra)
    except Exception as err:
        if args.debug or not _is_user_error(err):
            raise
        one_line = " ".join(str(err).split())  # messages quoting other libraries may span lines
        print(f"vlpjax {args.command}: {one_line}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
