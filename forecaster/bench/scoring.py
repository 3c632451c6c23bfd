"""``forecaster bench``: the CPU a frame's scoring costs, by path.

- ``cue alone``: the motion cue of a frame (gray frame resized to the cue's rows, dense
  optical flow against the previous one), with no model;
- ``default``: what the daemon does per frame with the bundled model and the default
  scorer: the cue, the model's one-frame step and the score.

Frames are the synthetic scene made at Ped2's frame size (360x240), converted to the model's
size as the capture process converts them. Each path runs ``rounds`` times, alternating, and
every figure is CPU time (all threads of this process) per frame, the median of the rounds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

#: the source frames' size: Ped2's (rows, columns)
SOURCE_SIZE = (240, 360)


def _frames(count: int) -> np.ndarray:
    from forecaster.sources.preprocess import to_gray
    from forecaster.sources.readers import SyntheticSource

    rows, cols = SOURCE_SIZE
    uri = f"synthetic:?seed=7&fps=0&frames={count}&width={cols}&height={rows}"
    images = []
    with SyntheticSource(uri) as source:
        while (frame := source.read()) is not None:
            images.append(to_gray(frame.image))
    return np.stack(images)


def bench_scoring(frames: int = 200, rounds: int = 5) -> dict[str, Any]:
    """CPU ms per frame of the cue alone and of the default scoring path."""
    from forecaster.config import ScorerConfig
    from forecaster.detection.engine import load
    from forecaster.detection.flow import MotionCue
    from forecaster.detection.scorer import cue_height, cue_place
    from forecaster.model.artifact import bundled_model_path
    from forecaster.sources.preprocess import to_gray_resized

    loaded = load(bundled_model_path())
    card = loaded.card
    rows = cue_height("auto", card.calibration) or 120
    source = _frames(frames)
    small = np.stack([to_gray_resized(f, card.size) for f in source])

    def cue_alone() -> None:
        cue = MotionCue(rows)
        for image in source:
            cue(image)

    def default() -> None:
        engine = loaded.engine(ScorerConfig())
        engine.add_camera("bench")
        cue = MotionCue(rows, cue_place("auto", card.calibration))
        for t, image in enumerate(source):
            value = np.asarray([cue(image)])
            engine.process("bench", small[t][None], [t], [float(t)], value)

    default()  # compile the step and warm the caches
    paths: dict[str, Callable[[], None]] = {"cue alone": cue_alone, "default": default}
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, run in paths.items():
            started = time.process_time()
            run()
            samples[name].append((time.process_time() - started) * 1000.0 / len(source))
    out: dict[str, Any] = {"frames": len(source), "rounds": rounds,
                           "source_size": list(SOURCE_SIZE), "cue_rows": rows,
                           "model": str(bundled_model_path())}
    for name, values in samples.items():
        out[name] = {"cpu_ms_per_frame": float(np.median(values)),
                     "rounds_ms": [round(v, 3) for v in values]}
    cue_ms = out["cue alone"]["cpu_ms_per_frame"]
    out["default_to_cue"] = (out["default"]["cpu_ms_per_frame"] / cue_ms
                             if cue_ms > 0 else math.nan)
    return out


def format_scoring(report: dict[str, Any]) -> list[str]:
    cue, default = report["cue alone"], report["default"]
    return [
        f"scoring path, CPU per frame ({report['frames']} frames of "
        f"{report['source_size'][1]}x{report['source_size'][0]}, cue at "
        f"{report['cue_rows']} rows, median of {report['rounds']} alternating rounds):",
        f"  cue alone (no model):              {cue['cpu_ms_per_frame']:.2f} ms",
        f"  default (cue + model step + score): {default['cpu_ms_per_frame']:.2f} ms "
        f"({report['default_to_cue']:.2f}x the cue alone)",
    ]


__all__ = ["bench_scoring", "format_scoring"]
