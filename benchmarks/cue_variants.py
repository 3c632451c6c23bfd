"""The motion cue's optical flow settings against their cost, with no model: the cue alone.

    python benchmarks/cue_variants.py [--data DIR] [--variants NAME ...]

The pool: UCSD Ped2's 4 labelled test videos, its 16 normal training videos, and a copy of
each training video with an object of its own scene pasted in, crossing the frame at 3
pixels a frame (:mod:`forecaster.offline.pseudo_anomaly`, as ``benchmarks/ped2.py``'s
``fast`` kind). Every variant computes the cue as the capture process does (the frame
resized to the cue's rows, the flow, the fastest 5% of 8x8 windows), scored as the fused
mode's flow term alone (``ln(0.001 + cue)``, smoothed at 0.7). Printed per variant: the
micro AUC over the pool (causal), over the test videos with each video's scores min-max
scaled (paper), over the normal and pasted videos, and the CPU per frame (resize, flow,
windows) on Ped2's 240x360 frames. The first 10 frames of each video are left out, as
the daemon scores from the 11th.

No model and no training: the settings of the cue are compared on their own, cheaply.
The fused score with a model is ``benchmarks/ped2.py``'s.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data" / "ped2").resolve()
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

#: name: (flow, rows, settings); Farneback's settings are (levels, window, iterations)
VARIANTS: dict[str, tuple[str, int, dict[str, Any]]] = {
    "Farneback 3 iterations (the cue before)": ("farneback", 120, {"iterations": 3}),
    "Farneback 2 iterations (the cue now)": ("farneback", 120, {"iterations": 2}),
    "Farneback 1 iteration": ("farneback", 120, {"iterations": 1}),
    "Farneback 2 iterations at 96 rows": ("farneback", 96, {"iterations": 2, "window": 13}),
    "Farneback 2 iterations at 80 rows": ("farneback", 80, {"iterations": 2, "window": 11}),
    "DIS, medium preset": ("dis", 120, {"preset": 2}),
    "DIS, fast preset": ("dis", 120, {"preset": 1}),
}


def cue_of(flow: str, rows: int, settings: dict[str, Any]
           ) -> Callable[[list[np.ndarray]], tuple[np.ndarray, float]]:
    """A function of a video's gray frames: their cues (NaN first) and the CPU seconds."""
    from forecaster.detection.calibration import PatchPooler, top_k_mean
    from forecaster.detection.flow import FARNEBACK, TOP_FRACTION, cue_size
    from forecaster.sources.preprocess import to_gray_resized

    scale, levels, window, _, poly_n, poly_sigma = FARNEBACK
    levels = settings.get("levels", levels)
    window = settings.get("window", window)
    iterations = settings.get("iterations", 2)
    farneback: Any = cv2.calcOpticalFlowFarneback

    def run(frames: list[np.ndarray]) -> tuple[np.ndarray, float]:
        size = cue_size(*frames[0].shape[:2], rows)
        pooler = PatchPooler(*size, 8, 4)
        top = max(1, round(TOP_FRACTION * pooler.grid[0] * pooler.grid[1]))
        dis = cv2.DISOpticalFlow.create(settings["preset"]) if flow == "dis" else None
        previous = None
        out = []
        began = time.process_time()
        for frame in frames:
            small = to_gray_resized(frame, size)
            if previous is None:
                out.append(math.nan)
            else:
                field = (dis.calc(previous, small, None) if dis is not None else
                         farneback(previous, small, None, scale, levels, window, iterations,
                                   poly_n, poly_sigma, 0))
                magnitude = np.sqrt(np.square(field[..., 0]) + np.square(field[..., 1]))
                out.append(float(top_k_mean(pooler(magnitude), top)))
            previous = small
        return np.asarray(out), time.process_time() - began

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA,
                        help=f"the ped2 folder with training/ and testing/ (default {DATA})")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None,
                        metavar="NAME", help="the variants to run (default: all)")
    args = parser.parse_args(argv)
    labels_path = args.data / "testing" / "labels.json"
    if not labels_path.is_file() or not (args.data / "training").is_dir():
        print(f"cue variants: the Ped2 data set was not found at {args.data} (use --data)",
              file=sys.stderr)
        return 2
    cv2.setNumThreads(1)
    from forecaster.detection.fused import cue_value, smooth_nan
    from forecaster.offline.datasets import expand_videos, load_labels
    from forecaster.offline.detection_metrics import roc_auc
    from forecaster.offline.pseudo_anomaly import pseudo_anomaly
    from forecaster.sources.preprocess import to_gray
    from forecaster.sources.readers import open_source

    def frames_of(uri: str) -> list[np.ndarray]:
        with open_source(uri) as source:
            return [to_gray(frame.image) for frame in iter(source.read, None)]

    labels = load_labels(labels_path)
    pool: dict[str, tuple[list[np.ndarray], np.ndarray]] = {}
    for ref in expand_videos([str(args.data / "testing")]):
        pool[f"test-{ref.name}"] = (frames_of(ref.uri), np.asarray(labels[ref.name]))
    for ref in expand_videos([str(args.data / "training")]):
        frames = frames_of(ref.uri)
        pool[f"normal-{ref.name}"] = (frames, np.zeros(len(frames), np.uint8))
        pasted = pseudo_anomaly(np.stack(frames), seed=1000 + int(ref.name), speed=3.0)
        pool[f"pasted-{ref.name}"] = (list(pasted.frames), np.asarray(pasted.labels))
    count = sum(len(frames) for frames, _ in pool.values())
    print(f"pool: {len(pool)} videos, {count} frames; the cue alone, smoothed at 0.7")
    print(f"{'variant':<42} {'causal':>7} {'paper':>7} {'normal+pasted':>14} {'CPU/frame':>10}")
    tests = [name for name in pool if name.startswith("test-")]
    others = [name for name in pool if not name.startswith("test-")]
    for name in args.variants or list(VARIANTS):
        run = cue_of(*VARIANTS[name])
        scores: dict[str, np.ndarray] = {}
        seconds = 0.0
        for video, (frames, _) in pool.items():
            cues, spent = run(frames)
            seconds += spent
            scores[video] = smooth_nan(np.asarray([cue_value(c) for c in cues]), 0.7)[10:]

        def micro(names: list[str], paper: bool = False,
                  scores: dict[str, np.ndarray] = scores) -> float:
            values, truth = [], []
            for video in names:
                value = scores[video]
                if paper:
                    low, high = np.nanmin(value), np.nanmax(value)
                    value = (value - low) / (high - low) if high > low else value * 0.0
                values.append(value)
                truth.append(pool[video][1][10:])
            return roc_auc(np.concatenate(truth), np.concatenate(values))

        print(f"{name:<42} {micro(list(pool)):>7.3f} {micro(tests, paper=True):>7.3f} "
              f"{micro(others):>14.3f} {seconds / count * 1000:>8.2f}ms", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
