"""`vlpjax train | eval | export | generate | data build`: the command line.

vlpjax data build synthetic_shapes --data_dir data
vlpjax data build image_text_folder --folder my_images --data_dir data
vlpjax data build interleaved_folder --folder my_docs --data_dir data
vlpjax train --config configs/clip_shapes.py[:arg] --workdir DIR [--config.key=value ...]
vlpjax eval  --config configs/clip_shapes.py --workdir DIR
vlpjax export --config configs/lm_shapes.py --workdir DIR --out HF_DIR
vlpjax generate --config configs/flamingo_shapes.py --workdir DIR --image a.png --prompt "..."
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="configs/<recipe>.py[:arg]")
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, TensorBoard logs, PNGs")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlpjax", description="image-text pretraining in JAX")
    commands = parser.add_subparsers(dest="command", required=True)
    _config_args(commands.add_parser("train", help="train a recipe (resumes from the workdir)"))
    _config_args(commands.add_parser("eval", help="evaluate the latest checkpoint of a workdir"))
    export = commands.add_parser("export", help="write a decoder_lm run's LM as a Hugging Face directory")
    _config_args(export)
    export.add_argument(
        "--out", required=True, help="the directory to write (config.json, model.safetensors, tokenizer.json)"
    )
    generate = commands.add_parser("generate", help="continue a prompt about images with a Flamingo run")
    _config_args(generate)
    generate.add_argument(
        "--image", action="append", required=True, help="an image file; repeat for several <image> markers"
    )
    generate.add_argument("--prompt", default="", help="text with <image> markers (one is prepended if there is none)")
    generate.add_argument("--max_new_tokens", type=int, default=32)
    generate.add_argument("--beams", type=int, default=1, help="1: greedy; more: beam search")
    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    build = data.add_parser("build", help="build a dataset into --data_dir")
    build.add_argument("name", choices=["synthetic_shapes", "image_text_folder", "interleaved_folder"])
    build.add_argument("--data_dir", default="data")
    build.add_argument("--image_size", type=int, default=64, help="synthetic_shapes")
    build.add_argument("--train_size", type=int, default=50_000, help="synthetic_shapes")
    build.add_argument("--test_size", type=int, default=1_000, help="synthetic_shapes")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--folder", help="image_text_folder: the folder holding the images and manifest")
    build.add_argument(
        "--manifest",
        default=None,
        help="folders: manifest path relative to the folder (manifest.jsonl; documents.jsonl for interleaved_folder)",
    )
    build.add_argument(
        "--max_bad_fraction", type=float, default=0.05, help="image_text_folder: stop when more rows are bad"
    )
    return parser


def _build_data(args) -> None:
    from vlpjax.data import builders

    if args.name == "synthetic_shapes":
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
        report = getattr(builder, "scan_report", None)
        if report is not None:
            print(
                f"{len(report.rows)} good rows, {len(report.bad)} bad rows skipped "
                f"(listed in {builders.dataset_dir(builder)}/bad_rows.jsonl)"
            )
    splits = {name: info.num_examples for name, info in builder.info.splits.items()}
    print(f"{args.name}: {splits} in {builders.dataset_dir(builder)}")


def _generate(config, args) -> None:
    from vlpjax.data.images import decode_image
    from vlpjax.train.export import generate_text

    images = []
    for path in args.image:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--image {path!r} does not exist")
        with open(path, "rb") as f:
            images.append(decode_image(f.read()))
    print(generate_text(config, args.workdir, images, args.prompt, args.max_new_tokens, args.beams))


def _setup_logging() -> None:
    """vlpjax's own log lines (progress notes, the final report) reach the terminal as plain text;
    other libraries keep their defaults."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("vlpjax")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False


def main(argv=None) -> int:
    from vlpjax.xla_flags import apply_default_flags

    apply_default_flags()
    _setup_logging()
    argv = sys.argv[1:] if argv is None else argv
    args, extra = _parser().parse_known_args(argv)
    unknown = [a for a in extra if not a.startswith("--config.")]
    if unknown:
        raise SystemExit(f"vlpjax: unknown arguments {unknown}")
    from vlpjax.config import ConfigError, load_config

    try:
        if args.command == "data":
            _build_data(args)
            return 0
        config = load_config(args.config, extra)
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
    from vlpjax.train.loop import NonFiniteError

    try:
        if args.command == "train":
            from vlpjax.train.loop import train

            train(config, args.workdir)
        elif args.command == "export":
            from vlpjax.train.export import export_decoder_lm

            print(f"wrote {export_decoder_lm(config, args.workdir, args.out)}")
        elif args.command == "generate":
            _generate(config, args)
        else:
            from vlpjax.train.restore import evaluate_workdir

            evaluate_workdir(config, args.workdir)
    except FileNotFoundError as err:  # missing dataset, checkpoint or tokenizer: say which
        raise SystemExit(f"vlpjax {args.command}: {err}") from None
    except NonFiniteError as err:  # a diverged run: the message names the step, the metric and the last good checkpoint
        raise SystemExit(f"vlpjax {args.command}: training diverged at {err}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
