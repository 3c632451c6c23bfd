"""UCSD Ped2 benchmark: train the default model on the training videos, evaluate on the test set.

    python benchmarks/ped2.py [--epochs N] [--max-frames N] [--size HxW] [--retrain]

The model is trained with ``forecaster.model.train.train_command`` and the bundled
defaults (architecture, window, loss, batch size) and cached under ``./cache/ped2/`` (named
after the settings; reused when present). Then ``forecaster eval`` runs on
``../shared/data/ped2/testing`` with its ``labels.json`` and prints the table of the model
and the baselines under both protocols (``paper``: per-video min-max of PSNR; ``causal``:
the daemon's calibrated score). eval.json and the plots go to ``./cache/ped2/eval-<model>/``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data" / "ped2").resolve()
CACHE = ROOT / "cache" / "ped2"

if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))


def _size(text: str) -> tuple[int, int]:
    from forecaster.preprocess import parse_size

    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA,
                        help=f"the ped2 folder with training/ and testing/ (default {DATA})")
    parser.add_argument("--epochs", type=int, default=10,
                        help="training epochs (early stopping may end sooner; default 10)")
    parser.add_argument("--max-frames", type=int, default=None, metavar="N",
                        help="use at most N frames of each training video (default all)")
    parser.add_argument("--size", type=_size, default=(64, 64), metavar="HxW",
                        help="frame size (default 64x64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=CACHE,
                        help=f"where trained models are kept (default {CACHE})")
    parser.add_argument("--retrain", action="store_true", help="train even if cached")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    training, testing = args.data / "training", args.data / "testing"
    labels = testing / "labels.json"
    missing = [p for p in (training, testing, labels) if not p.exists()]
    if missing:
        print(f"ped2 benchmark: data not found: {', '.join(map(str, missing))} "
              f"(expected the UCSD Ped2 data set at {args.data}; use --data)", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from forecaster.errors import ForecasterError
    from forecaster.logs import setup_logging

    setup_logging("info")
    log = logging.getLogger("forecaster.benchmark")
    height, width = args.size
    frames = "all" if args.max_frames is None else str(args.max_frames)
    name = f"convlstm-ae_{height}x{width}_e{args.epochs}_f{frames}_s{args.seed}"
    model = args.cache / f"{name}.keras"
    try:
        if model.exists() and not args.retrain:
            log.info("using cached model %s", model)
        else:
            from forecaster.model.train import train_command

            started = time.perf_counter()
            train_command([str(training)], model, epochs=args.epochs, max_frames=args.max_frames,
                          size=args.size, seed=args.seed, progress=False)
            log.info("trained %s in %.0f s", model, time.perf_counter() - started)
        from forecaster.evaluate import evaluate_command

        evaluate_command([str(testing)], labels=str(labels), model=str(model),
                         out=args.cache / f"eval-{name}")
    except ForecasterError as error:
        print(f"ped2 benchmark: error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
