"""UCSD Ped2 protocol: train with ``forecaster train``'s defaults, choose the scorer by
leave-one-video-out, report the spread over seeds.

    python benchmarks/ped2.py [--seeds 0 1 2] [--hold 03 07 11 15] [--data DIR] [--retrain]
                              [--synthetic N] [--cache DIR]

What the daemon faces is footage it was never tuned on, with more normal frames than
anomalous ones, in scenes and crowds of every density. So:

1. **Held-out normal videos.** Four of the 16 training videos (all normal) are kept out of
   training, a different four for each seed (``HOLDS``: 03 07 11 15 for seed 0, 02 06 10
   14 for seed 1, 01 05 09 13 for seed 2, 04 08 12 16 for seed 3; ``--hold`` fixes one
   set for every seed), so 12 normal videos are held out over 3 seeds. They are pooled
   with the labelled test videos (``testing/``): the causal micro AUC over the pool counts
   the false alarms across scenes, not only the anomalies found.
2. **Pseudo-anomalies.** Each held-out normal video also enters the pool once more with an
   object of its own scene pasted in, crossing the frame a bit faster than walkers, and
   labelled where it is (:mod:`forecaster.offline.pseudo_anomaly`, ``PSEUDO_KINDS``). These
   anomalies come from footage no model or setting saw. Probes of a kind Ped2's labels do
   not have (``PROBE_KINDS``: an object at a walker's speed going a way walkers do not)
   are scored apart, with the held-out normal videos, and not used to choose.
3. **Training.** For every seed, ``forecaster.offline.train.train_command`` with its defaults
   (what ``forecaster train DATA --out M.keras`` runs) on the other training videos. Models
   are cached under ``./cache/ped2/`` (never committed) and reused unless ``--retrain``.
4. **Candidates.** Every scorer candidate is the daemon's own :class:`~forecaster.detection.scorer.
   Scorer` run on the model's predictions (made as the daemon makes them: one stateful pass
   per video) and calibrated on the model's own held-out validation videos, as ``train``
   calibrates: the ``global`` and ``patch`` modes as the card has them, and the ``fused``
   mode over a grid (error term, smoothing, weights; ``error_weight 0`` is the model-free
   cue alone, ``flow_weight 0`` the model's term alone).
5. **Leave one video out**, per seed. For each video of the seed's pool, the candidate with
   the best causal micro AUC on the *other* videos is chosen and scores the left-out one.
   The reported figure is the AUC of those scores: no figure is from a candidate chosen on
   the frames it is reported on. Causal: over the whole pool; paper (per-video min-max of
   the same scores, Liu et al. 2018): over the 4 real test videos, with a 90% interval
   from resampling those videos (a figure that rests on 4 videos is uncertain), and over
   the pseudo-anomalous videos.
6. **Synthetic scenes** as a second data set: the bundled model (trained on synthetic normal
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

from forecaster.detection.flow import PlaceNorm, learn_place  # noqa: E402
from forecaster.detection.fused import DEFAULT_FUSED, FusedSettings  # noqa: E402

log = logging.getLogger("forecaster.benchmark")

#: a candidate: a name and how its Scorer is made (mode, fused settings or None, and
#: whether its cue is divided by the normal motion per place)
Candidate = tuple[str, str, FusedSettings | None, bool]
#: the name of a candidate whose cue is divided by the normal motion per place ends so
PLACE = " +place"


def candidates() -> list[Candidate]:
    out: list[Candidate] = [("global", "global", None, False), ("patch", "patch", None, False)]
    seen = set()
    for error in ("global", "worst"):
        for smoothing in (0.0, 0.5, 0.7, 0.85):
            for error_weight, flow_weight in ((1.0, 0.0), (1.0, 0.5), (1.0, 1.0), (1.0, 2.0),
                                              (1.0, 4.0), (0.0, 1.0)):
                settings = replace(DEFAULT_FUSED, error=error, smoothing=smoothing,
                                   error_weight=error_weight, flow_weight=flow_weight)
                key = ("-" if error_weight == 0 else error, smoothing, error_weight, flow_weight)
                if key in seen:
                    continue
                seen.add(key)
                name = (f"fused flow-only s{smoothing:g}" if error_weight == 0 else
                        f"fused {error} s{smoothing:g} flow x{flow_weight:g}")
                out.append((name, "fused", settings, False))
                if flow_weight > 0:
                    out.append((name + PLACE, "fused", settings, True))
    return out


@dataclass
class Scored:
    """One video run through one model: what every candidate needs."""

    name: str
    labels: np.ndarray  #: of the scored frames
    predictions: np.ndarray  #: (n, H, W) float32, the prediction of each scored frame
    actual: np.ndarray  #: (n, H, W) float32, the scored frames
    cues: np.ndarray  #: (n,) motion cues of the scored frames
    placed: np.ndarray  #: (n,) the same divided by the normal motion per place (NaN: none)


def run_model(stepper: Any, frames: np.ndarray, cues: np.ndarray, placed: np.ndarray,
              labels: np.ndarray, name: str, window: int, chunk: int = 128) -> Scored:
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
                  cues[window:], placed[window:])


def scorer_scores(candidate: Candidate, calibration: dict[str, Any], video: Scored,
                  ) -> np.ndarray | None:
    """The candidate's causal score of every scored frame; None when the model's card
    cannot serve it (a patch candidate without a per-location calibration)."""
    from forecaster.detection.scorer import Scorer

    try:
        scorer = Scorer(calibration, mode=candidate[1])
    except ValueError:
        return None
    cues = video.placed if candidate[3] else video.cues
    out = np.empty(len(video.actual))
    for i in range(len(out)):
        out[i] = scorer.score(video.predictions[i], video.actual[i], float(cues[i])).score
    return out


def calibrations(card_calibration: dict[str, Any], val: Sequence[Scored],
                 cands: Sequence[Candidate], place: PlaceNorm | None
                 ) -> dict[str, dict[str, Any]]:
    """Each candidate's calibration: the card's (global, patch), fused ones made anew on
    the model's validation videos, as train makes them (with ``place`` for the candidates
    whose cue is divided by it)."""
    from forecaster.detection.fused import fused_calibration

    maps = [np.square(v.predictions - v.actual) for v in val]
    out = {}
    for name, mode, settings, placed in cands:
        if mode != "fused" or (placed and place is None):
            out[name] = card_calibration
            continue
        assert settings is not None
        cues = [v.placed if placed else v.cues for v in val]
        out[name] = {**card_calibration, "fused": fused_calibration(
            maps, cues, settings, place=place if placed else None)}
    return out


@dataclass
class Video:
    """One video of a pool, read at the model's size: frames, motion cues, labels."""

    name: str
    frames: np.ndarray  #: (T, H, W) uint8
    cues: np.ndarray  #: (T,)
    labels: np.ndarray  #: (T,) uint8; all 0 for a normal video
    windows: np.ndarray  #: (T, rows, cols) the cue's window speeds

    def placed(self, place: PlaceNorm | None) -> np.ndarray:
        """The cues divided by the normal motion per place ``place`` (NaN: none)."""
        from forecaster.detection.flow import place_cues

        return (np.full(len(self.cues), np.nan) if place is None
                else place_cues(self.windows, place))


def read(name: str, uri: str, size: tuple[int, int], labels: np.ndarray | None) -> Video:
    from forecaster.offline.datasets import read_video_cues

    windows: list[np.ndarray] = []
    frames, own, cues = read_video_cues(uri, size, cue_height=DEFAULT_FUSED.cue_height,
                                        windows_out=windows)
    truth = labels if labels is not None else own
    if truth is None:
        truth = np.zeros(len(frames), np.uint8)
    assert cues is not None
    return Video(name, frames, cues, np.asarray(truth, np.uint8), windows[0])


#: the pseudo-anomalies pasted into each held-out normal video (one copy of the video
#: each): an object a bit faster than walkers (Ped2's walkers move about 1-2 pixels a frame
#: at 240 rows; its cyclists 3-6) and one at a walker's speed going a way walkers do not
#: (straight down the frame, across the walkway)
PSEUDO_KINDS: dict[str, dict[str, Any]] = {
    "fast": {"speed": 3.0},
}
#: pseudo-anomalies of a kind Ped2's labels do not have, scored apart from the pool (they
#: would steer the choice away from what Ped2 labels): one at a walker's speed going a way
#: walkers do not (straight down the frame, across the walkway), a probe of whether the
#: forecast learned the scene's usual directions
PROBE_KINDS: dict[str, dict[str, Any]] = {
    "across": {"speed": 1.5, "against": (1.0, 0.0)},
}


def read_pseudo(name: str, uri: str, size: tuple[int, int], seed: int, *, speed: float,
                against: tuple[float, float] | None = None) -> Video:
    """A normal video with a pseudo-anomaly pasted at its full size, then read as the
    daemon reads frames: the model's size and the motion cue from the full-size frame."""
    from forecaster.detection.flow import MotionCue
    from forecaster.offline.pseudo_anomaly import pseudo_anomaly
    from forecaster.sources.preprocess import to_gray, to_gray_resized
    from forecaster.sources.readers import open_source

    images = []
    with open_source(uri) as source:
        while (frame := source.read()) is not None:
            images.append(to_gray(frame.image))
    pasted = pseudo_anomaly(np.stack(images), seed, speed=speed, against=against)
    from forecaster.offline.datasets import stack_windows

    cue = MotionCue(DEFAULT_FUSED.cue_height)
    frames = np.stack([to_gray_resized(f, size) for f in pasted.frames])
    cues, windows = [], []
    for image in pasted.frames:
        cues.append(cue(image))
        windows.append(cue.windows)
    return Video(name, frames, np.asarray(cues, dtype=np.float64), pasted.labels,
                 stack_windows(windows))


def score_all(model_path: Path, pool: Sequence[Video], val: Sequence[Video],
              cands: Sequence[Candidate], place: PlaceNorm | None = None,
              ) -> dict[str, dict[str, np.ndarray]]:
    """{candidate: {video: causal scores}} of one model on the pool; ``place``: the
    normal motion per place of the candidates whose cue is divided by it (None: those
    candidates are left out)."""
    from forecaster.detection.engine import load

    loaded = load(model_path)
    stepper, card = loaded.runner, loaded.card

    def scored(video: Video) -> Scored:
        return run_model(stepper, video.frames, video.cues, video.placed(place), video.labels,
                         video.name, card.window)

    val_scored = [scored(v) for v in val]
    videos = [scored(v) for v in pool]
    cals = calibrations(card.calibration, val_scored, cands, place)
    out: dict[str, dict[str, np.ndarray]] = {}
    for cand in cands:
        if cand[3] and place is None:
            continue
        scores = {v.name: scorer_scores(cand, cals[cand[0]], v) for v in videos}
        if all(s is not None for s in scores.values()):
            out[cand[0]] = scores  # type: ignore[assignment]
    out["_labels"] = {v.name: v.labels for v in videos}
    return out


def micro_auc(scores: dict[str, np.ndarray], labels: dict[str, np.ndarray],
              videos: Sequence[str], paper: bool = False) -> float:
    from forecaster.offline.detection_metrics import roc_auc
    from forecaster.offline.evaluate import minmax

    s = np.concatenate([minmax(scores[v]) if paper else scores[v] for v in videos])
    y = np.concatenate([labels[v] for v in videos])
    return roc_auc(y, s)


def lovo(scored: dict[str, dict[str, np.ndarray]], names: Sequence[str],
         videos: Sequence[str]) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Leave one video out on one seed's pool: per video the candidate best on the others
    (causal micro AUC); the picks and the composed scores."""
    from forecaster.offline.detection_metrics import undefined_reason

    picks, composed = {}, {}
    for video in videos:
        others = [v for v in videos if v != video]
        if undefined_reason(np.concatenate([scored["_labels"][v] for v in others])):
            raise SystemExit(f"ped2 benchmark: the pool without {video} has one class only")
        means = {n: micro_auc(scored[n], scored["_labels"], others) for n in names}
        picks[video] = max(names, key=lambda n: means[n])
        composed[video] = scored[picks[video]][video]
    return picks, composed


def interval(scores: dict[str, np.ndarray], labels: dict[str, np.ndarray],
             videos: Sequence[str], rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A 90% interval of the paper micro AUC over ``videos``, from resampling the videos
    with replacement (each round draws as many videos as there are)."""
    from forecaster.offline.detection_metrics import undefined_reason

    rng = np.random.default_rng(seed)
    values = []
    for _ in range(rounds):
        drawn = [videos[i] for i in rng.integers(0, len(videos), len(videos))]
        y = np.concatenate([labels[v] for v in drawn])
        if undefined_reason(y) is None:
            values.append(micro_auc(scores, labels, drawn, paper=True))
    return float(np.percentile(values, 5)), float(np.percentile(values, 95))


def summary(values: Sequence[float]) -> str:
    array = np.asarray(values, dtype=np.float64)
    if len(array) == 1:
        return f"{array[0]:.3f}"
    return f"{array.mean():.3f} ± {array.std(ddof=1):.3f}"


BASELINES = ("copy-last", "frame-diff", "mog2", "flow")


def baselines(pool: Sequence[Video], window: int) -> dict[str, dict[str, np.ndarray]]:
    """The eval's baselines (forecaster.offline.evaluate) on the same frames, and their labels."""
    from forecaster.detection.flow import flow_scores
    from forecaster.offline.evaluate import copy_last_mse, frame_diff, mog2_fraction

    out: dict[str, dict[str, np.ndarray]] = {k: {} for k in BASELINES}
    labels = {}
    for video in pool:
        frames = video.frames
        labels[video.name] = video.labels[window:]
        out["copy-last"][video.name] = copy_last_mse(frames)[window:]
        out["frame-diff"][video.name] = frame_diff(frames)[window:]
        out["mog2"][video.name] = mog2_fraction(frames)[window:]
        out["flow"][video.name] = flow_scores(frames)[window:]
    out["_labels"] = labels
    return out


#: the normal training videos held out for each seed (seed s: HOLDS[s % 4])
HOLDS = (("03", "07", "11", "15"), ("02", "06", "10", "14"), ("01", "05", "09", "13"),
         ("04", "08", "12", "16"))
#: the candidates of the three rows of docs/detection-ped2.md: the default, the cue alone, the model's
#: term alone (each at the default's error kind and smoothing)
ROWS = {"default": (DEFAULT_FUSED, True),
        "cue alone": (replace(DEFAULT_FUSED, error_weight=0.0, flow_weight=1.0), False),
        "place cue alone": (replace(DEFAULT_FUSED, error_weight=0.0, flow_weight=1.0), True),
        "model term alone": (replace(DEFAULT_FUSED, error_weight=1.0, flow_weight=0.0), False),
        "default, no place": (DEFAULT_FUSED, False)}


def synthetic_kinds(seeds: Sequence[int], frames: int, window: int) -> dict[str, np.ndarray]:
    """{video: the anomaly kind of each scored frame (-1: normal)} of the labelled synthetic
    scenes, from the scene's own episode schedule."""
    from forecaster.sources.synthetic import SyntheticScene

    out = {}
    for seed in seeds:
        kinds = np.full(frames, -1)
        for episode in SyntheticScene(seed=seed, anomaly_rate=0.01).episodes(frames):
            kinds[episode.start:min(episode.end, frames)] = int(episode.kind)
        out[f"synthetic-{seed}"] = kinds[window:]
    return out


def by_kind(scores: dict[str, np.ndarray], kinds: dict[str, np.ndarray]) -> dict[str, float]:
    """Micro AUC of each anomaly kind against the normal frames (other kinds left out)."""
    from forecaster.offline.detection_metrics import roc_auc
    from forecaster.sources.synthetic import AnomalyKind

    out = {}
    for kind in AnomalyKind:
        keep = {v: (k == -1) | (k == int(kind)) for v, k in kinds.items()}
        y = np.concatenate([(kinds[v][keep[v]] == int(kind)).astype(np.uint8) for v in kinds])
        s = np.concatenate([scores[v][keep[v]] for v in kinds])
        out[kind.name.lower()] = roc_auc(y, s) if 0 < y.sum() < len(y) else float("nan")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA,
                        help=f"the ped2 folder with training/ and testing/ (default {DATA})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--hold", nargs="+", default=None,
                        help="normal training videos kept out of training and pooled with "
                             "the test videos, the same for every seed (default: a "
                             "different four for each seed, HOLDS)")
    parser.add_argument("--synthetic", type=int, default=6,
                        help="labelled synthetic scenes for the second data set (default 6; "
                             "0: none)")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--retrain", action="store_true", help="train even if cached")
    return parser.parse_args(argv)


def candidate_name(settings: FusedSettings, place: bool) -> str:
    def key(cand: FusedSettings) -> FusedSettings:  # the error kind of no weight is moot
        return replace(cand, error="global") if cand.error_weight == 0 else cand

    for name, mode, cand, placed in candidates():
        if mode == "fused" and cand is not None and key(cand) == key(settings) and placed == place:
            return name
    raise SystemExit(f"ped2 benchmark: {settings} is not among the candidates")


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
    from forecaster.logs import import_tensorflow_quietly, setup_logging
    from forecaster.model.artifact import bundled_model_path, read_card
    from forecaster.offline.datasets import expand_videos, load_labels

    setup_logging("info")
    import_tensorflow_quietly()
    from forecaster.offline.train import TrainSettings, train_command

    train_refs = expand_videos([str(training)])
    uris = {r.name: r.uri for r in train_refs}
    holds = {seed: tuple(args.hold) if args.hold else HOLDS[seed % len(HOLDS)]
             for seed in args.seeds}
    unknown = sorted({h for hold in holds.values() for h in hold} - set(uris))
    if unknown:
        print(f"ped2 benchmark: --hold names no training video: {', '.join(unknown)}",
              file=sys.stderr)
        return 2
    labels = load_labels(labels_path)
    cands = candidates()
    names = [c[0] for c in cands]
    rows = {row: candidate_name(*row_key) for row, row_key in ROWS.items()}
    size = (64, 64)
    read_cache: dict[str, Video] = {}

    def cached(name: str, uri: str, lab: np.ndarray | None) -> Video:
        if name not in read_cache:
            read_cache[name] = read(name, uri, size, lab)
        return read_cache[name]

    tests = [cached(r.name, r.uri, np.asarray(labels[r.name]))
             for r in expand_videos([str(testing)])]
    test_names = [v.name for v in tests]

    args.cache.mkdir(parents=True, exist_ok=True)
    seeds: dict[int, dict[str, Any]] = {}
    for seed in args.seeds:
        hold = holds[seed]
        model = args.cache / f"default_hold{'-'.join(hold)}_s{seed}.keras"
        if args.retrain or not model.exists():
            started = time.perf_counter()
            fit_uris = [r.uri for r in train_refs if r.name not in hold]
            train_command(fit_uris, model, TrainSettings(seed=seed, progress=False))
            log.info("seed %d: trained in %.0f s", seed, time.perf_counter() - started)
        card = read_card(model)
        if card.size != size:
            raise SystemExit(f"ped2 benchmark: {model} is {card.size}, not {size}")
        normal = [cached(f"normal-{h}", uris[h], None) for h in hold]
        pseudo = [read_pseudo(f"pseudo-{kind}-{h}", uris[h], size, seed=1000 + int(h), **kw)
                  for h in hold for kind, kw in PSEUDO_KINDS.items()]
        probes = [read_pseudo(f"probe-{kind}-{h}", uris[h], size, seed=2000 + int(h), **kw)
                  for h in hold for kind, kw in PROBE_KINDS.items()]
        pool = tests + normal + pseudo
        val = [cached(f"normal-{v}", uris[v], None) for v in card.training["val_videos"]]
        # the normal motion per place, as train learns it: from the model's training videos
        place = learn_place([cached(f"normal-{name}", uris[name], None).windows
                             for name in card.training["train_videos"]])
        log.info("seed %d: scoring %d candidates on %d videos", seed, len(cands), len(pool))
        scored = score_all(model, pool + probes, val, cands, place)
        videos = [v.name for v in pool]
        probe_videos = [v.name for v in normal + probes]
        pseudo_names = [v.name for v in pseudo]
        picks, composed = lovo(scored, names, videos)
        lab = scored["_labels"]
        table = {n: {"causal": micro_auc(scored[n], lab, videos),
                     "paper": micro_auc(scored[n], lab, test_names, paper=True),
                     "pseudo": micro_auc(scored[n], lab, [v.name for v in normal + pseudo]),
                     "probe": micro_auc(scored[n], lab, probe_videos)}
                 for n in names if n in scored}
        base = baselines(pool + probes, card.window)
        base_table = {k: {"causal": micro_auc(base[k], base["_labels"], videos),
                          "paper": micro_auc(base[k], base["_labels"], test_names, paper=True),
                          "pseudo": micro_auc(base[k], base["_labels"],
                                              [v.name for v in normal + pseudo]),
                          "probe": micro_auc(base[k], base["_labels"], probe_videos)}
                      for k in BASELINES}
        seeds[seed] = {
            "model": str(model), "hold": list(hold),
            "error_ratio": card.calibration["mse_mean"] / card.calibration["copy_last_mse_mean"],
            "epochs_run": card.training.get("epochs_run"),
            "val_videos": card.training.get("val_videos"),
            "pool": videos,
            "lovo": {"picks": picks,
                     "causal": micro_auc(composed, lab, videos),
                     "paper": micro_auc(composed, lab, test_names, paper=True),
                     "paper_interval": interval(composed, lab, test_names, seed=seed),
                     "paper_pseudo": micro_auc(composed, lab, pseudo_names, paper=True)},
            "candidates": table, "baselines": base_table,
            "rows_interval": {row: interval(scored[name], lab, test_names, seed=seed)
                              for row, name in rows.items()},
        }

    synth_table: dict[str, float] = {}
    synth_kinds: dict[str, dict[str, float]] = {}
    if args.synthetic:
        # the second data set: the bundled model on labelled synthetic scenes it never saw
        bundled = read_card(bundled_model_path())
        synthetic = [read(f"synthetic-{s}", f"synthetic:?seed={s}&frames=600&anomaly_rate=0.01",
                          bundled.size, None) for s in range(100, 100 + args.synthetic)]
        synth_val = [read(f"synthetic-{s}", f"synthetic:?seed={s}&frames=600&anomaly_rate=0",
                          bundled.size, None) for s in range(200, 203)]
        synth = score_all(bundled_model_path(), synthetic, synth_val, cands,
                          learn_place([v.windows for v in synth_val]))
        synth_names = [v.name for v in synthetic]
        synth_table = {n: micro_auc(synth[n], synth["_labels"], synth_names) if n in synth
                       else float("nan") for n in names}
        kinds = synthetic_kinds(range(100, 100 + args.synthetic), 600, bundled.window)
        for check in synthetic:  # the schedule read back is the one the frames carry
            assert np.array_equal(kinds[check.name] >= 0, check.labels[bundled.window:] > 0)
        # the bundled model's card has no normal motion per place: its default is the
        # plain one (the +place candidates learn one from the calibration scenes)
        synth_rows = {**rows, "default": rows["default, no place"]}
        synth_kinds = {row: by_kind(synth[name], kinds) for row, name in synth_rows.items()}
        synth_base = baselines(synthetic, bundled.window)
        for k in BASELINES:
            synth_table[f"baseline {k}"] = micro_auc(synth_base[k], synth_base["_labels"],
                                                     synth_names)

    def over(key: str, name: str, field: str) -> list[float]:
        return [info[key][name][field] for info in seeds.values() if name in info[key]]

    print(f"\nPed2 pools: the 4 test videos, 4 held-out normal videos and their "
          f"pseudo-anomalous copies ({', '.join(PSEUDO_KINDS)}), per seed {list(seeds)}; "
          f"probes apart ({', '.join(PROBE_KINDS)})")
    for seed, info in seeds.items():
        print(f"seed {seed}: held out {' '.join(info['hold'])}; error "
              f"{info['error_ratio']:.2f}x copy-last's, {info['epochs_run']} epochs")
    print(f"\n{'candidate':<34} {'causal (pool)':>15} {'paper (test)':>15} "
          f"{'normal+pseudo':>15} {'across (probe)':>15} {'synthetic':>10}")
    ordered = sorted((n for n in names if over("candidates", n, "causal")),
                     key=lambda n: -np.mean(over("candidates", n, "causal")))
    for n in ordered:
        print(f"{n:<34} {summary(over('candidates', n, 'causal')):>15} "
              f"{summary(over('candidates', n, 'paper')):>15} "
              f"{summary(over('candidates', n, 'pseudo')):>15} "
              f"{summary(over('candidates', n, 'probe')):>15} "
              f"{synth_table.get(n, float('nan')):>10.3f}")
    for k in BASELINES:
        print(f"{'baseline ' + k:<34} {summary(over('baselines', k, 'causal')):>15} "
              f"{summary(over('baselines', k, 'paper')):>15} "
              f"{summary(over('baselines', k, 'pseudo')):>15} "
              f"{summary(over('baselines', k, 'probe')):>15} "
              f"{synth_table.get('baseline ' + k, float('nan')):>10.3f}")
    print("\nthe three rows (paper: mean over seeds, and the 90% interval from resampling "
          "the 4 test videos):")
    for row, name in rows.items():
        low = np.mean([info["rows_interval"][row][0] for info in seeds.values()])
        high = np.mean([info["rows_interval"][row][1] for info in seeds.values()])
        print(f"  {row:<18} ({name}): causal {summary(over('candidates', name, 'causal'))}, "
              f"paper {summary(over('candidates', name, 'paper'))} [{low:.3f}, {high:.3f}]")
    if synth_kinds:
        print("\nsynthetic scenes by anomaly kind (each kind against the normal frames):")
        for row, aucs in synth_kinds.items():
            print(f"  {row:<18} " + "  ".join(f"{k} {v:.3f}" for k, v in aucs.items()))
    causal = [info["lovo"]["causal"] for info in seeds.values()]
    paper = [info["lovo"]["paper"] for info in seeds.values()]
    low = np.mean([info["lovo"]["paper_interval"][0] for info in seeds.values()])
    high = np.mean([info["lovo"]["paper_interval"][1] for info in seeds.values()])
    pseudo_paper = [info["lovo"]["paper_pseudo"] for info in seeds.values()]
    print(f"\nleave-one-video-out: causal {summary(causal)} (pool), paper {summary(paper)} "
          f"[{low:.3f}, {high:.3f}] (test), paper {summary(pseudo_paper)} (pseudo)")
    for seed, info in seeds.items():
        counts: dict[str, int] = {}
        for pick in info["lovo"]["picks"].values():
            counts[pick] = counts.get(pick, 0) + 1
        print(f"picks, seed {seed}: " + ", ".join(f"{p} x{c}" for p, c in
                                                 sorted(counts.items(), key=lambda i: -i[1])))
    best = max(ordered, key=lambda n: np.mean(over("candidates", n, "causal")))
    print(f"best on the whole pools (a hypothesis: chosen on those videos): {best}")
    report = {"seeds": seeds, "synthetic": synth_table, "synthetic_by_kind": synth_kinds,
              "rows": rows, "best_on_pools": best}
    out = args.cache / "protocol.json"
    out.write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
