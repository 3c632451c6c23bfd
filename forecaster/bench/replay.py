"""``forecaster bench --video``: replay's rate against just decoding the video.

Decoding is the floor of a replay on a few cores: :func:`replay_against_decode` sets the
rate of a whole replay of the video (reading, motion cue, model, scoring, scores.csv; in
this process, the model loaded and compiled by a first pass), with the default scorer and
with ``scorer.mode = "global"`` (no motion cue), against the rate of decoding it,
converting it to gray and resizing it to the model's size with OpenCV, in alternating
rounds, so that a slow spell of a shared machine weighs on all alike; the ratio is taken
per round. The CPU time per frame of each says how much of the machine each needs.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np


def decode_rate(video: Path, size: tuple[int, int]) -> tuple[float, float]:
    """Frames per second of decoding ``video``, converting to gray and resizing to ``size``
    (as replay reads it, with nothing else), and the CPU time per frame (ms, all threads
    of the process: OpenCV's decoder runs several)."""
    from forecaster.sources.preprocess import to_gray_resized
    from forecaster.sources.readers import open_source

    count = 0
    cpu = time.process_time()
    started = time.perf_counter()
    with open_source(str(video)) as source:
        while (frame := source.read()) is not None:
            to_gray_resized(frame.image, size)
            count += 1
    wall = time.perf_counter() - started
    return count / wall, (time.process_time() - cpu) / max(count, 1) * 1000.0


#: the scorer modes a replay is timed in: the default (``fused``, with the motion cue, an
#: optical flow per frame) and ``global`` (the prediction error alone, no cue)
MODES: tuple[Literal["fused"], Literal["global"]] = ("fused", "global")


def replay_against_decode(video: Path, rounds: int = 3) -> dict[str, Any]:
    """Replay of ``video`` (the bundled model, default settings, and with ``scorer.mode =
    "global"``) against decoding alone, in alternating rounds: frames per second of each
    per round, their ratio per round, the medians, and the CPU time per frame of each (all
    threads: on a few cores, what a replay needs beyond decoding shows there)."""
    from forecaster.config import ScorerConfig
    from forecaster.detection.engine import load
    from forecaster.model.artifact import bundled_model_path
    from forecaster.offline.replay import Replayer, ReplayOptions
    from forecaster.offline.replay_inputs import plan
    from forecaster.offline.scores_csv import ScoresWriter

    model = load(bundled_model_path())
    (planned,) = plan([str(video)], None)
    fps: dict[str, list[float]] = {name: [] for name in ("decode", *MODES)}
    cpu: dict[str, list[float]] = {name: [] for name in ("decode", *MODES)}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)

        def replay(mode: Literal["fused", "global"]) -> tuple[float, float]:
            replayer = Replayer(model, ReplayOptions(out=out, scorer=ScorerConfig(mode=mode),
                                                     progress=False))
            writer = ScoresWriter(out / "scores.csv", False)
            began = time.process_time()
            try:
                result = replayer.run_video(planned, writer)
            finally:
                writer.close()
            used = (time.process_time() - began) / max(result.frames, 1) * 1000.0
            return result.frames / result.seconds, used

        for mode in MODES:
            replay(mode)  # compiles the chunk shapes
        for _ in range(rounds):
            rate, used = decode_rate(video, model.size)
            fps["decode"].append(rate)
            cpu["decode"].append(used)
            for mode in MODES:
                rate, used = replay(mode)
                fps[mode].append(rate)
                cpu[mode].append(used)
    report: dict[str, Any] = {
        "rounds": rounds,
        "decode_fps": fps["decode"],
        "decode_fps_median": float(np.median(fps["decode"])),
        "decode_cpu_ms_per_frame": float(np.median(cpu["decode"])),
    }
    for mode in MODES:
        ratios = [r / d for r, d in zip(fps[mode], fps["decode"], strict=True)]
        report[mode] = {
            "replay_fps": fps[mode],
            "ratios": ratios,
            "replay_fps_median": float(np.median(fps[mode])),
            "ratio_median": float(np.median(ratios)),
            "cpu_ms_per_frame": float(np.median(cpu[mode])),
        }
    # the default mode's figures at the top level, as before
    report.update({key: report["fused"][key] for key in
                   ("replay_fps", "ratios", "replay_fps_median", "ratio_median")})
    return report
