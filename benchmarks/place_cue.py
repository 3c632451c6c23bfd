"""The normal motion per place against the plain motion cue, with no model: the cue alone.

    python benchmarks/place_cue.py [--data DIR]

For each of 3 splits of UCSD Ped2's 16 normal training videos (``benchmarks/ped2.py``'s
``HOLDS``: 4 held out per split), the normal motion per place
(:func:`forecaster.detection.flow.learn_place`) is learned from the 12 others, as ``forecaster
train`` learns it from the videos it is given. The pool of a split: the 4 labelled test
videos, the 4 held-out normal videos and a copy of each with an object of its own scene
pasted in, crossing the frame at 3 pixels a frame (the protocol's ``fast`` kind). The
probe, apart: the held-out normal videos and a copy of each with a walker at a walker's
speed going straight down the frame, across the walkway (the protocol's ``across``).

Each variant is the cue alone, ``ln(0.001 + cue)`` smoothed at 0.7 as the fused mode's cue
term, with each window's speed divided by its place's quantile (at least the median
window's) to a power; power 0 is the plain cue. Printed per variant, mean and spread over
the splits: the micro AUC over the pool (causal), over the test videos with each video's
scores min-max scaled (paper), over the test videos alone (causal), and over the probe.
The first 10 frames of each video are left out, as the daemon scores from the 11th.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data" / "ped2").resolve()
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

#: name: (quantile, power); power 0: the plain cue
VARIANTS: dict[str, tuple[float, float]] = {
    "plain cue (nothing learned)": (0.99, 0.0),
    "99th percentile, power 0.25 (the default)": (0.99, 0.25),
    "99th percentile, power 0.5": (0.99, 0.5),
    "99th percentile, power 0.75": (0.99, 0.75),
    "99th percentile, power 1": (0.99, 1.0),
    "95th percentile, power 0.25": (0.95, 0.25),
    "99.9th percentile, power 0.25": (0.999, 0.25),
}
SPLITS = (("03", "07", "11", "15"), ("02", "06", "10", "14"), ("01", "05", "09", "13"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA,
                        help=f"the ped2 folder with training/ and testing/ (default {DATA})")
    args = parser.parse_args(argv)
    labels_path = args.data / "testing" / "labels.json"
    if not labels_path.is_file() or not (args.data / "training").is_dir():
        print(f"place cue: the Ped2 data set was not found at {args.data} (use --data)",
              file=sys.stderr)
        return 2
    cv2.setNumThreads(1)
    from forecaster.detection.flow import MotionCue, learn_place, place_cues
    from forecaster.detection.fused import DEFAULT_FUSED, cue_value, smooth_nan
    from forecaster.offline.datasets import (
        expand_videos,
        load_labels,
        read_video_cues,
        stack_windows,
    )
    from forecaster.offline.detection_metrics import roc_auc
    from forecaster.offline.pseudo_anomaly import pseudo_anomaly
    from forecaster.sources.preprocess import to_gray
    from forecaster.sources.readers import open_source

    rows = DEFAULT_FUSED.cue_height

    def windows_of(uri: str) -> np.ndarray:
        out: list[np.ndarray] = []
        read_video_cues(uri, (64, 64), cue_height=rows, windows_out=out)
        return out[0]

    def pasted_windows(uri: str, seed: int, **kind: object) -> tuple[np.ndarray, np.ndarray]:
        with open_source(uri) as source:
            frames = np.stack([to_gray(f.image) for f in iter(source.read, None)])
        pasted = pseudo_anomaly(frames, seed, **kind)  # type: ignore[arg-type]
        cue = MotionCue(rows)
        windows = []
        for image in pasted.frames:
            cue(image)
            windows.append(cue.windows)
        return stack_windows(windows), np.asarray(pasted.labels)

    labels = load_labels(labels_path)
    videos: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for ref in expand_videos([str(args.data / "testing")]):
        videos[f"test-{ref.name}"] = (windows_of(ref.uri), np.asarray(labels[ref.name]))
    uris = {ref.name: ref.uri for ref in expand_videos([str(args.data / "training")])}
    for name, uri in uris.items():
        windows = windows_of(uri)
        videos[f"normal-{name}"] = (windows, np.zeros(len(windows), np.uint8))
        videos[f"fast-{name}"] = pasted_windows(uri, 1000 + int(name), speed=3.0)
        videos[f"across-{name}"] = pasted_windows(uri, 2000 + int(name), speed=1.5,
                                                  against=(1.0, 0.0))
    tests = [name for name in videos if name.startswith("test-")]
    print(f"{len(videos)} videos read; the cue alone at {rows} rows, smoothed at "
          f"{DEFAULT_FUSED.smoothing}; mean ± spread over {len(SPLITS)} splits")
    print(f"{'variant':<42} {'pool causal':>13} {'test paper':>13} {'test causal':>13} "
          f"{'across probe':>13}")
    for variant, (quantile, power) in VARIANTS.items():
        figures = []
        for hold in SPLITS:
            place = None if power == 0 else learn_place(
                [videos[f"normal-{n}"][0] for n in uris if n not in hold], quantile, power)
            scores = {}
            pool = tests + [f"{kind}-{h}" for h in hold for kind in ("normal", "fast")]
            probe = [f"{kind}-{h}" for h in hold for kind in ("normal", "across")]
            for name in set(pool + probe):
                # the daemon scores from the 11th frame, its moving average from there
                raw = [cue_value(float(c)) for c in place_cues(videos[name][0], place)[10:]]
                scores[name] = smooth_nan(np.asarray(raw), DEFAULT_FUSED.smoothing)

            def auc(names: list[str], paper: bool = False,
                    scores: dict[str, np.ndarray] = scores) -> float:
                values = []
                for name in names:
                    value = scores[name]
                    if paper:
                        low, high = np.nanmin(value), np.nanmax(value)
                        value = (value - low) / (high - low)
                    values.append(value)
                truth = np.concatenate([videos[name][1][10:] for name in names])
                return roc_auc(truth, np.concatenate(values))

            figures.append((auc(pool), auc(tests, paper=True), auc(tests), auc(probe)))
        table = np.asarray(figures)
        cells = " ".join(f"{m:.3f} ± {s:.3f}" for m, s in
                         zip(table.mean(axis=0), table.std(axis=0, ddof=1), strict=True))
        print(f"{variant:<42} {cells}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
