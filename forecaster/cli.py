"""Command line: ``forecaster`` (also ``python -m forecaster``).

Heavy modules (TensorFlow, OpenCV) are imported inside the commands that need them, so
``--help``, ``check-config`` and ``watch`` start fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from forecaster import __version__
from forecaster.errors import ForecasterError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _size(text: str) -> tuple[int, int]:
    from forecaster.preprocess import parse_size

    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def cmd_run(args: argparse.Namespace) -> int:
    from forecaster.config import find_config, with_source
    from forecaster.logs import setup_logging
    from forecaster.supervisor import run

    config, origin = find_config(args.config)
    if args.source is not None:
        config = with_source(config, args.source)
    setup_logging(config.log_level)
    import logging

    logging.getLogger("forecaster").info(
        "forecaster %s starting; config: %s; cameras: %s",
        __version__,
        origin,
        ", ".join(f"{c.id}={c.source}" for c in config.cameras),
    )
    return run(config, max_frames=args.max_frames)


def cmd_check_config(args: argparse.Namespace) -> int:
    from forecaster.config import load_config
    from forecaster.sources import open_source
    from forecaster.supervisor import resolve_model_path

    config = load_config(args.path)
    for camera in config.cameras:
        open_source(camera.source, loop=camera.loop)
    model = resolve_model_path(config)
    cameras = ", ".join(f"{c.id}={c.source}" for c in config.cameras)
    print(f"{args.path}: ok ({len(config.cameras)} camera(s): {cameras}; model {model})")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from forecaster.watch import watch

    return watch(args.endpoint, args.camera)


def cmd_train(args: argparse.Namespace) -> int:
    from forecaster.logs import setup_logging
    from forecaster.model.train import train_command

    setup_logging("info")
    out = train_command(
        args.data,
        args.out,
        arch=args.arch,
        epochs=args.epochs,
        max_frames=args.max_frames,
        size=args.size,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    print(f"model written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forecaster",
        description="Streaming video frame forecaster: predicts every next frame with a "
        "stateful ConvLSTM and publishes predictions and anomaly scores over ZeroMQ.",
    )
    parser.add_argument("--version", action="version", version=f"forecaster {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", help="config file (default: ./config.toml, "
                     "/etc/forecaster/config.toml, else built-in defaults)")
    run.add_argument("--source", help="source of a one-camera config, e.g. synthetic:, 0, "
                     "rtsp://..., a video file or an image folder")
    run.add_argument("--max-frames", type=_positive_int, metavar="N",
                     help="stop after N frames per camera")
    run.set_defaults(func=cmd_run)

    watch = sub.add_parser("watch", help="subscribe and show live scores")
    watch.add_argument("--endpoint", default="tcp://127.0.0.1:5556")
    watch.add_argument("--camera", help="only this camera")
    watch.set_defaults(func=cmd_watch)

    train = sub.add_parser("train", help="train a model on videos, image folders or data sets")
    train.add_argument("data", nargs="+", help="video files, image folders, data set folders "
                       "or synthetic:?anomaly_rate=0&seed=N")
    train.add_argument("--out", required=True, help="output model file (.keras)")
    train.add_argument("--arch", default="convlstm-ae")
    train.add_argument("--epochs", type=_positive_int, default=10)
    train.add_argument("--max-frames", type=_positive_int, metavar="N",
                       help="use at most N frames of each video")
    train.add_argument("--size", type=_size, default=(64, 64), metavar="HxW")
    train.add_argument("--batch-size", type=_positive_int, default=8)
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(func=cmd_train)

    check = sub.add_parser("check-config", help="validate a config file; exit 0 or 2")
    check.add_argument("path")
    check.set_defaults(func=cmd_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ForecasterError as error:
        print(f"forecaster: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
