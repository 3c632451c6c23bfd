"""UCSD Ped2 protocol: train with ``forecaster train``'s defaults, choose the scorer by
leave-one-video-out, report the spread over seeds.

    python benchmarks/ped2.py [--seeds 0 1 2] [--hold 03 07 11 15] [--data DIR] [--retrain]

What the daemon faces is footage it was never tuned on, with more normal frames than
anomalous ones, in scenes and crowds of every density. So:

1. **Held-out normal videos.** ``--hold`` training videos (default 4 of the 16, all normal)
   are kept out of training. They are pooled with the labelled test videos
   (``testing/``): the causal micro AUC over the pool counts the false alarms across
   scenes, not only the anomalies found.
2. **Training.** For every seed, ``forecaster.model.train.train_command`` with its defaults
   (what ``forecaster train DATA --out M.keras`` runs) on the other training videos. Models
   are cached under ``./cache/ped2/`` (never committed) and reused unless ``--retrain``.
3. **Candidates.** Every scorer candidate is the daemon's own :class:`~forecaster.scorer.
   Scorer` run on the model's predictions (made as the daemon makes them: one stateful pass
   per video) and calibrated on the model's own held-out validation videos, as ``train``
   calibrates: the ``global`` and ``patch`` modes as the card has them, and the ``fused``
   mode over a grid (error term, smoothing, weights; ``error_weight 0`` is the model-free
   flow alone).
4. **Leave one video out.** For each video of the pool, the candidate with the best mean
   (over seeds) causal micro AUC on the *other* videos is chosen and scores the left-out
   one. The reported figure is the AUC of those scores: no figure is from a candidate chosen
   on the frames it is reported on. Causal: over the whole pool; paper (per-video min-max
   of the same scores, Liu et al. 2018): over the labelled test videos.
5. **Synthetic scenes** as a second data set: the bundled model (trained on synthetic normal
   scenes) on ``--synthetic`` labelled scenes it never saw, the same candidates.

It prints the table and writes ``cache/ped2/protocol.json``. The first 10 frames of each
video cannot be scored and are left out.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data" / "ped2").resolve()
CACHE = ROOT / "cache" / "ped2"

if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from forecaster.fused import DEFAULT_FUSED, FusedSettings  # noqa: E402

log = logging.getLogger("forecaster.benchmark")

#: a candidate: a name and how its Scorer is made (mode, fused settings or None)
Candidate = tuple[str, str, FusedSettings | None]


def candidates() -> list[Candidate]:
    out: list[Candidate] = [("global", "global", None), ("patch", "patch", None)]
    seen = set()
    for error in ("global", "worst"):
        for smoothing in (0.0, 0.5, 0.7, 0.85):
            for error_weight, flow_weight in ((1.0, 0.0), (1.0, 0.5), (1.0, 1.0), (1.0, 2.0),
                                              (0.0, 1.0)):
                settings = replace(DEFAULT_FUSED, error=error, smoothing=smoothing,
                                   error_weight=error_weight, flow_weight=flow_weight)
                key = ("-" if error_weight == 0 else error, smoothing, error_weight, flow_weight)
                if key in seen:
                    continue
                seen.add(key)
                name = (f"fused flow-only s{smoothing:g}" if error_weight == 0 else
                        f"fused {error} s{smoothing:g} flow x{flow_weight:g}")
                out.append((name, "fused", settings))
    return out


@dataclass
class Scored:
    """One video run through one model: what every candidate needs."""

    name: str
    labels: np.ndarray  #: of the scored frames
    predictions: np.ndarray  #: (n, H, W) float32, the prediction of each scored frame
    actual: np.ndarray  #: (n, H, W) float32, the scored frames
    cues: np.ndarray  #: (n,) motion cues of the scored frames


def run_model(stepper: Any, frames: np.ndarray, cues: np.ndarray, labels: np.ndarray,
              name: str, window: int, chunk: int = 128) -> Scored:
    """One stateful pass (chunks, state carried: equal to the daemon's per-frame ticks)."""
    x = frames.astype(np.float32)[..., None] / np.float32(255.0)
    state = stepper.initial_state(1)
    outputs = []
    for start in range(0, len(x), chunk):
        predictions, state = stepper.run(x[None, start:start + chunk], state)
        outputs.append(predictions[0, :, :, :, 0])
    predicted = np.concatenate(outputs)
    # frame t (t >= window) is scored against the prediction made from frame t - 1
    return Scored(name, labels[window:], predicted[window - 1:-1], x[window:, :, :, 0],
                  cues[window:])


def scorer_scores(candidate: Candidate, calibration: dict[str, Any], video: Scored,
                  ) -> np.ndarray | None:
    """The candidate's causal score of every scored frame; None when the model's card
    cannot serve it (a patch candidate without a per-location calibration)."""
    from forecaster.scorer import Scorer

    try:
        scorer = Scorer(calibration, mode=candidate[1])
    except ValueError:
        return None
    out = np.empty(len(video.actual))
    for i in range(len(out)):
        out[i] = scorer.score(video.predictions[i], video.actual[i], float(video.cues[i])).score
    return out


def calibrations(card_calibration: dict[str, Any], val: Sequence[Scored],
                 cands: Sequence[Candidate]) -> dict[str, dict[str, Any]]:
    """Each candidate's calibration: the card's (global, patch), fused ones made anew on
    the model's validation videos, as train makes them."""
    from forecaster.fused import fused_calibration

    maps = [np.square(v.predictions - v.actual) for v in val]
    cues = [v.cues for v in val]
    out = {}
    for name, mode, settings in cands:
        if mode != "fused":
            out[name] = card_calibration
            continue
        assert settings is not None
        out[name] = {**card_calibration, "fused": fused_calibration(maps, cues, settings)}
    return out


def read(uri: str, size: tuple[int, int], labels: np.ndarray | None
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from forecaster.datasets import read_video_cues

    frames, own, cues = read_video_cues(uri, size, cue_height=DEFAULT_FUSED.cue_height)
    truth = labels if labels is not None else own
    if truth is None:
        truth = np.zeros(len(frames), np.uint8)
    assert cues is not None
    return frames, cues, np.asarray(truth, np.uint8)


def score_all(model_path: Path, pool: list[tuple[str, str, np.ndarray | None]],
              val_uris: list[tuple[str, str]], cands: Sequence[Candidate],
              ) -> dict[str, dict[str, np.ndarray]]:
    """{candidate: {video: causal scores}} of one model on the pool."""
    from forecaster.engine import load

    loaded = load(model_path)
    stepper, card = loaded.runner, loaded.card
    size, window = card.size, card.window

    def scored(name: str, uri: str, labels: np.ndarray | None) -> Scored:
        frames, cues, truth = read(uri, size, labels)
        return run_model(stepper, frames, cues, truth, name, window)

    val = [scored(n, u, None) for n, u in val_uris]
    videos = [scored(n, u, lab) for n, u, lab in pool]
    cals = calibrations(card.calibration, val, cands)
    out: dict[str, dict[str, np.ndarray]] = {}
    for cand in cands:
        scores = {v.name: scorer_scores(cand, cals[cand[0]], v) for v in videos}
        if all(s is not None for s in scores.values()):
            out[cand[0]] = scores  # type: ignore[assignment]
    out["_labels"] = {v.name: v.labels for v in videos}
    return out


def micro_auc(scores: dict[str, np.ndarray], labels: dict[str, np.ndarray],
              videos: Sequence[str], paper: bool = False) -> float:
    from forecaster.detection_metrics import roc_auc
    from forecaster.evaluate import minmax

    s = np.concatenate([minmax(scores[v]) if paper else scores[v] for v in videos])
    y = np.concatenate([labels[v] for v in videos])
    return roc_auc(y, s)


def lovo(per_seed: list[dict[str, dict[str, np.ndarray]]], names: Sequence[str],
         videos: Sequence[str], labelled: Sequence[str]) -> dict[str, Any]:
    """Leave one video out: per video the candidate best on the others (mean over seeds)."""
    picks = {}
    for video in videos:
        others = [v for v in videos if v != video]
        means = {n: np.mean([micro_auc(s[n], s["_labels"], others) for s in per_seed])
                 for n in names}
        picks[video] = max(names, key=lambda n: means[n])
    causal, paper = [], []
    for s in per_seed:
        composed = {v: s[picks[v]][v] for v in videos}
        causal.append(micro_auc(composed, s["_labels"], videos))
        paper.append(micro_auc(composed, s["_labels"], labelled, paper=True))
    return {"picks": picks, "causal": causal, "paper": paper}


def summary(values: Sequence[float]) -> str:
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def baselines(pool: list[tuple[str, str, np.ndarray | None]], size: tuple[int, int],
              window: int) -> dict[str, dict[str, np.ndarray]]:
    """The eval's baselines (forecaster.evaluate) on the same frames, and their labels."""
    from forecaster.datasets import read_video
    from forecaster.evaluate import copy_last_mse, frame_diff, mog2_fraction
    from forecaster.flow import flow_scores

    out: dict[str, dict[str, np.ndarray]] = {k: {} for k in
                                             ("copy-last", "frame-diff", "mog2", "flow")}
    labels = {}
    for name, uri, lab in pool:
        frames, own = read_video(uri, size)
        truth = lab if lab is not None else (own if own is not None else
                                              np.zeros(len(frames), np.uint8))
        labels[name] = np.asarray(truth, np.uint8)[window:]
        out["copy-last"][name] = copy_last_mse(frames)[window:]
        out["frame-diff"][name] = frame_diff(frames)[window:]
        out["mog2"][name] = mog2_fraction(frames)[window:]
        out["flow"][name] = flow_scores(frames)[window:]
    out["_labels"] = labels
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA,
                        help=f"the ped2 folder with training/ and testing/ (default {DATA})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--hold", nargs="+", default=["03", "07", "11", "15"],
                        help="normal training videos kept out of training and pooled with "
                             "the test videos (default 03 07 11 15)")
    parser.add_argument("--synthetic", type=int, default=6,
                        help="labelled synthetic scenes for the second data set (default 6)")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--retrain", action="store_true", help="train even if cached")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    training, testing = args.data / "training", args.data / "testing"
    labels_path = testing / "labels.json"
    missing = [p for p in (training, testing, labels_path) if not p.exists()]
    if missing:
        print(f"ped2 benchmark: data not found: {', '.join(map(str, missing))} "
              f"(expected the UCSD Ped2 data set at {args.data}; use --data)", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from forecaster.datasets import expand_videos, load_labels
    from forecaster.logs import import_tensorflow_quietly, setup_logging
    from forecaster.model.artifact import bundled_model_path, read_card

    setup_logging("info")
    import_tensorflow_quietly()
    from forecaster.model.train import TrainSettings, train_command

    train_refs = expand_videos([str(training)])
    unknown = sorted(set(args.hold) - {r.name for r in train_refs})
    if unknown:
        print(f"ped2 benchmark: --hold names no training video: {', '.join(unknown)}",
              file=sys.stderr)
        return 2
    labels = load_labels(labels_path)
    pool = [(r.name, r.uri, np.asarray(labels[r.name])) for r in expand_videos([str(testing)])]
    pool += [(f"normal-{r.name}", r.uri, None) for r in train_refs if r.name in args.hold]
    fit_uris = [r.uri for r in train_refs if r.name not in args.hold]
    videos = [name for name, _, _ in pool]
    labelled = [name for name, _, lab in pool if lab is not None]
    cands = candidates()
    names = [c[0] for c in cands]

    args.cache.mkdir(parents=True, exist_ok=True)
    per_seed, trained = [], {}
    for seed in args.seeds:
        model = args.cache / f"default_hold{'-'.join(args.hold)}_s{seed}.keras"
        if args.retrain or not model.exists():
            started = time.perf_counter()
            train_command(fit_uris, model, TrainSettings(seed=seed, progress=False))
            log.info("seed %d: trained in %.0f s", seed, time.perf_counter() - started)
        card = read_card(model)
        ratio = card.calibration["mse_mean"] / card.calibration["copy_last_mse_mean"]
        trained[seed] = {"model": str(model), "error_ratio": ratio,
                         "fit_seconds": card.training.get("fit_seconds"),
                         "epochs_run": card.training.get("epochs_run"),
                         "val_videos": card.training.get("val_videos")}
        uris = {r.name: r.uri for r in train_refs}
        val = [(v, uris[v]) for v in card.training["val_videos"]]
        log.info("seed %d: scoring %d candidates", seed, len(cands))
        per_seed.append(score_all(model, pool, val, cands))

    table = {n: {"causal": [micro_auc(s[n], s["_labels"], videos) for s in per_seed],
                 "paper": [micro_auc(s[n], s["_labels"], labelled, paper=True)
                           for s in per_seed]} for n in names}
    chosen = lovo(per_seed, names, videos, labelled)
    overall = max(names, key=lambda n: np.mean(table[n]["causal"]))
    card0 = read_card(Path(trained[args.seeds[0]]["model"]))
    base = baselines(pool, card0.size, card0.window)
    base_table = {k: {"causal": micro_auc(base[k], base["_labels"], videos),
                      "paper": micro_auc(base[k], base["_labels"], labelled, paper=True)}
                  for k in ("copy-last", "frame-diff", "mog2", "flow")}

    # the second data set: the bundled model on labelled synthetic scenes it never saw
    synthetic = [(f"synthetic-{s}", f"synthetic:?seed={s}&frames=600&anomaly_rate=0.01", None)
                 for s in range(100, 100 + args.synthetic)]
    synth_val = [(f"synthetic-{s}", f"synthetic:?seed={s}&frames=600&anomaly_rate=0")
                 for s in range(200, 203)]
    synth = score_all(bundled_model_path(), synthetic, synth_val, cands)
    synth_names = [name for name, _, _ in synthetic]
    synth_table = {n: micro_auc(synth[n], synth["_labels"], synth_names) if n in synth
                   else float("nan") for n in names}
    bundled = read_card(bundled_model_path())
    synth_base = baselines(synthetic, bundled.size, bundled.window)
    for k in ("copy-last", "frame-diff", "mog2", "flow"):
        base_table[k]["synthetic"] = micro_auc(synth_base[k], synth_base["_labels"], synth_names)

    print(f"\nPed2 pool: {', '.join(videos)} ({len(labelled)} labelled test videos, "
          f"{len(videos) - len(labelled)} held-out normal ones); seeds {args.seeds}")
    for seed, info in trained.items():
        print(f"seed {seed}: error {info['error_ratio']:.2f}x copy-last's, "
              f"{info['epochs_run']} epochs, {info['fit_seconds']} s")
    print(f"\n{'candidate':<34} {'causal (pool)':>16} {'paper (test)':>16} {'synthetic':>10}")
    for n in sorted(names, key=lambda n: -np.mean(table[n]["causal"])):
        print(f"{n:<34} {summary(table[n]['causal']):>16} {summary(table[n]['paper']):>16} "
              f"{synth_table[n]:>10.3f}")
    for k, v in base_table.items():
        print(f"{'baseline ' + k:<34} {v['causal']:>16.3f} {v['paper']:>16.3f} "
              f"{v['synthetic']:>10.3f}")
    print(f"\nleave-one-video-out: causal {summary(chosen['causal'])}, paper "
          f"{summary(chosen['paper'])}")
    print("picks: " + ", ".join(f"{v}: {p}" for v, p in chosen["picks"].items()))
    print(f"best on the whole pool (the default's candidate): {overall}")
    report = {"pool": videos, "labelled": labelled, "hold": args.hold, "seeds": args.seeds,
              "models": trained, "candidates": table, "baselines": base_table,
              "synthetic": synth_table, "lovo": chosen, "best_on_pool": overall}
    out = args.cache / "protocol.json"
    out.write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
