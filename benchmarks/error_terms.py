"""Other ways to read the forecast's error, each alone and added to the cue.

    python benchmarks/error_terms.py [--data DIR] [--seeds 0 1 2] [--cache DIR]

Does the 64x64 forecast carry something the motion cue does not, if its error is read
otherwise than as the whole frame's? For each seed, the model ``benchmarks/ped2.py``
trained and cached for it (run that first) predicts every frame of that seed's pool, as
the daemon does (one stateful pass per video): the 4 labelled test videos, the seed's 4
held-out normal videos and a copy of each with an object pasted in, crossing the frame at
3 pixels a frame. The probe, apart: the held-out normal videos and a copy of each with a
walker at a walker's speed going straight down the frame, across the walkway.

The error terms, each from the squared error map of the prediction made from frame t-1
and frame t, in 8x8 windows 4 pixels apart (the fused mode's ``worst`` windows):

- ``global``: ``ln`` of the whole frame's mean (the default's term);
- ``worst``: the mean of the 5 largest window ``ln`` errors;
- ``skill``: where things move, how much better the forecast did than copying the last
  frame: each window's ``ln(forecast error / copy-last error)``, weighted by its share of
  the copy-last error;
- ``place-mean``: each window's ``ln`` error less its mean on the model's normal
  validation videos (the error usual at that place), the 5 largest;
- ``place-z``: the same divided by the window's spread there (at least 0.05, as the
  ``patch`` mode), the 5 largest;
- ``place-z, spread floor q90``: the spread floored at the 90th percentile of the
  windows' spreads;
- ``motion``: the motion the forecast implies (dense optical flow from frame t-1 to the
  prediction, at the model's 64x64) against the motion that came (from frame t-1 to frame
  t): ``ln`` of their windows' mean squared difference, the 5 largest;
- ``motion, place-mean``: the same, each window less its mean on the validation videos.

Each is smoothed at 0.7 and standardised by its mean and spread on the model's validation
videos, as the fused mode's terms (without their care for a frame with no cue, which file
sources do not have); ``+ cue xW`` adds W times the standardised cue divided by the normal motion
per place (learned from the model's training videos, as ``train`` learns it). Printed,
mean and spread over the seeds: micro AUC over the pool (causal), over the test videos
with each video's scores min-max scaled (paper), and over the probe.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import ped2  # noqa: E402

from forecaster.detection.calibration import (  # noqa: E402
    PATCH_STD_FLOOR,
    PatchPooler,
    log_window_errors,
    smooth,
)

SMOOTHING = 0.7
TOP_K = 5
#: fusion weights of the cue printed for every term (0: the term alone)
CUE_WEIGHTS = (0.0, 1.0, 2.0)

#: a term's raw per-frame values (T,) from a video's arrays: ``em`` its window ln errors (T,
#: n), ``ec`` those of copying the last frame, ``g`` the whole frame's ln mse (T,), ``mm``
#: the window ln errors of the forecast's motion; and from the normal validation videos'
#: per-window means and spreads of ``em`` (``m``, ``s``) and of ``mm`` (``mm_m``)
Term = Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], np.ndarray]
#: Farneback at the model's size (64x64): pyramid scale, levels, window, iterations,
#: poly_n, poly_sigma
FARNEBACK_64 = (0.5, 2, 7, 3, 5, 1.1)


def top(values: np.ndarray) -> np.ndarray:
    return np.sort(values, axis=1)[:, -TOP_K:].mean(axis=1)


def skill(em: np.ndarray, ec: np.ndarray) -> np.ndarray:
    share = np.exp(ec)
    share /= share.sum(axis=1, keepdims=True)
    return (share * (em - ec)).sum(axis=1)


def motion_errors(pooler: PatchPooler, previous: np.ndarray, predictions: np.ndarray,
                  actual: np.ndarray) -> np.ndarray:
    """Per frame, the window ``ln`` mean squared difference between the motion the forecast
    implies (dense flow from the last frame to the prediction) and the motion that came
    (from the last frame to the frame), both at the model's size; (T, n)."""
    import cv2

    def gray(x: np.ndarray) -> np.ndarray:
        return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)

    out = []
    for last, predicted, came in zip(previous, predictions, actual, strict=True):
        a, b, c = gray(last), gray(predicted), gray(came)
        implied = cv2.calcOpticalFlowFarneback(a, b, None, *FARNEBACK_64, 0)
        real = cv2.calcOpticalFlowFarneback(a, c, None, *FARNEBACK_64, 0)
        out.append(log_window_errors(pooler, np.square(implied - real).sum(axis=2)).ravel())
    return np.stack(out)


TERMS: dict[str, Term] = {
    "global": lambda r, v: r["g"],
    "worst": lambda r, v: top(r["em"]),
    "skill": lambda r, v: skill(r["em"], r["ec"]),
    "place-mean": lambda r, v: top(r["em"] - v["m"]),
    "place-z": lambda r, v: top((r["em"] - v["m"]) / np.maximum(v["s"], PATCH_STD_FLOOR)),
    "place-z, spread floor q90": lambda r, v: top(
        (r["em"] - v["m"]) / np.maximum(v["s"], np.quantile(v["s"], 0.9))),
    "motion": lambda r, v: top(r["mm"]),
    "motion, place-mean": lambda r, v: top(r["mm"] - v["mm_m"]),
}


def score_seed(seed: int, model: Path, tests: list[ped2.Video],
               normal: Callable[[str], ped2.Video], uris: dict[str, str],
               ) -> dict[str, tuple[float, float, float]]:
    """Every row's (causal pool, paper test, probe) micro AUC for one seed's model."""
    from forecaster.detection.engine import load
    from forecaster.detection.flow import learn_place

    size = (64, 64)
    pooler = PatchPooler(size[0], size[1], 8, 4)
    test_names = [v.name for v in tests]
    out: dict[str, tuple[float, float, float]] = {}
    hold = ped2.HOLDS[seed % 4]
    loaded = load(model)
    card = loaded.card
    place = learn_place([normal(n).windows for n in card.training["train_videos"]])

    def raw(video: ped2.Video) -> tuple[ped2.Scored, dict[str, np.ndarray]]:
        s = ped2.run_model(loaded.runner, video.frames, video.cues, video.placed(place),
                           video.labels, video.name, card.window)
        previous = video.frames[card.window - 1:-1].astype(np.float32) / 255.0
        em = log_window_errors(pooler, np.square(s.predictions - s.actual))
        ec = log_window_errors(pooler, np.square(previous - s.actual))
        g = np.log(np.maximum(np.square(s.predictions - s.actual).mean(axis=(1, 2)),
                              1e-10))
        mm = motion_errors(pooler, previous, s.predictions, s.actual)
        return s, {"em": em.reshape(len(em), -1), "ec": ec.reshape(len(ec), -1), "g": g,
                   "mm": mm, "cue": np.log(1e-3 + s.placed)}

    val = [raw(normal(n))[1] for n in card.training["val_videos"]]
    window_errors = np.concatenate([v["em"] for v in val])
    usual = {"m": window_errors.mean(axis=0), "s": window_errors.std(axis=0),
             "mm_m": np.concatenate([v["mm"] for v in val]).mean(axis=0)}

    def terms(r: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = {name: smooth(term(r, usual), SMOOTHING) for name, term in TERMS.items()}
        values["cue"] = smooth(r["cue"], SMOOTHING)
        return values

    val_terms = [terms(v) for v in val]
    norm = {k: (np.concatenate([v[k] for v in val_terms]).mean(),
                max(np.concatenate([v[k] for v in val_terms]).std(), 1e-3))
            for k in val_terms[0]}
    held = [normal(h) for h in hold]
    pseudo = [ped2.read_pseudo(f"pseudo-fast-{h}", uris[h], size, seed=1000 + int(h),
                               **ped2.PSEUDO_KINDS["fast"]) for h in hold]
    probes = [ped2.read_pseudo(f"probe-across-{h}", uris[h], size, seed=2000 + int(h),
                               **ped2.PROBE_KINDS["across"]) for h in hold]
    z: dict[str, dict[str, np.ndarray]] = {}
    lab: dict[str, np.ndarray] = {}
    for video in tests + held + pseudo + probes:
        s, r = raw(video)
        z[video.name] = {k: (v - norm[k][0]) / norm[k][1] for k, v in terms(r).items()}
        lab[video.name] = s.labels
    pool = [v.name for v in tests + held + pseudo]
    probe = [v.name for v in held + probes]
    rows = [(name, w) for name in TERMS for w in CUE_WEIGHTS] + [("cue", 0.0)]
    for name, weight in rows:
        scores = {v: z[v][name] + weight * z[v]["cue"] if name != "cue" else z[v]["cue"]
                  for v in z}
        label = (f"{name} + cue x{weight:g}" if weight else
                 "the cue divided by the normal motion per place" if name == "cue"
                 else name)
        out[label] = (ped2.micro_auc(scores, lab, pool),
                      ped2.micro_auc(scores, lab, test_names, paper=True),
                      ped2.micro_auc(scores, lab, probe))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ped2.DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cache", type=Path, default=ped2.CACHE,
                        help="where benchmarks/ped2.py keeps its models")
    args = parser.parse_args(argv)
    labels_path = args.data / "testing" / "labels.json"
    if not labels_path.is_file() or not (args.data / "training").is_dir():
        print(f"error terms: the Ped2 data set was not found at {args.data} (use --data)",
              file=sys.stderr)
        return 2
    models = {s: args.cache / f"default_hold{'-'.join(ped2.HOLDS[s % 4])}_s{s}.keras"
              for s in args.seeds}
    missing = [str(m) for m in models.values() if not m.exists()]
    if missing:
        print(f"error terms: no model at {', '.join(missing)}; run benchmarks/ped2.py "
              f"--seeds {' '.join(map(str, args.seeds))} first", file=sys.stderr)
        return 2
    from forecaster.logs import import_tensorflow_quietly, setup_logging
    from forecaster.offline.datasets import expand_videos, load_labels

    setup_logging("warning")
    import_tensorflow_quietly()
    size = (64, 64)
    labels = load_labels(labels_path)
    uris = {r.name: r.uri for r in expand_videos([str(args.data / "training")])}
    read_cache: dict[str, ped2.Video] = {}

    def normal(name: str) -> ped2.Video:
        if name not in read_cache:
            read_cache[name] = ped2.read(f"normal-{name}", uris[name], size, None)
        return read_cache[name]

    tests = [ped2.read(r.name, r.uri, size, np.asarray(labels[r.name]))
             for r in expand_videos([str(args.data / "testing")])]
    results: dict[str, list[tuple[float, float, float]]] = {}
    for seed, model in models.items():
        for label, value in score_seed(seed, model, tests, normal, uris).items():
            results.setdefault(label, []).append(value)
        print(f"seed {seed}: done", file=sys.stderr, flush=True)

    print(f"\nerror terms over seeds {' '.join(map(str, args.seeds))} (mean ± spread)\n")
    print("| term | pool, causal | test, paper | probe (across) |")
    print("| --- | --- | --- | --- |")
    for label, values in results.items():
        cols = np.asarray(values)
        print(f"| {label} | " + " | ".join(ped2.summary(cols[:, i].tolist()) for i in range(3)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
