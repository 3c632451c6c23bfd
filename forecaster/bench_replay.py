"""``forecaster bench --video``: replay's rate against just decoding the video.

Decoding is the floor of a replay on a few cores: :func:`replay_against_decode` sets the
rate of a whole replay of the video (reading, motion cue, model, scoring, scores.csv; in
this process, the model loaded and compiled by a first pass) against the rate of decoding
it, converting it to gray and resizing it to the model's size with OpenCV, in alternating
rounds, so that a slow spell of a shared machine weighs on both alike; the ratio is taken
per round.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def decode_rate(video: Path, size: tuple[int, int]) -> float:
    """Frames per second of decoding ``video``, converting to gray and resizing to ``size``
    (as replay reads it, with nothing else)."""
    from forecaster.preprocess import to_gray_resized
    from forecaster.sources import open_source

    count = 0
    started = time.perf_counter()
    with open_source(str(video)) as source:
        while (frame := source.read()) is not None:
            to_gray_resized(frame.image, size)
            count += 1
    return count / (time.perf_counter() - started)


def replay_against_decode(video: Path, rounds: int = 3) -> dict[str, Any]:
    """Replay of ``video`` (the bundled model, default settings) against decoding alone:
    frames per second of each per round, their ratio per round, and the medians."""
    from forecaster.config import ScorerConfig
    from forecaster.engine import load
    from forecaster.model.artifact import bundled_model_path
    from forecaster.replay import Replayer, ReplayOptions
    from forecaster.replay_inputs import plan
    from forecaster.scores_csv import ScoresWriter

    model = load(bundled_model_path())
    (planned,) = plan([str(video)], None)
    replay_fps: list[float] = []
    decode_fps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)

        def replay() -> float:
            replayer = Replayer(model, ReplayOptions(out=out, scorer=ScorerConfig(),
                                                     progress=False))
            writer = ScoresWriter(out / "scores.csv", False)
            try:
                result = replayer.run_video(planned, writer)
            finally:
                writer.close()
            return result.frames / result.seconds

        replay()  # compiles the chunk shapes
        for _ in range(rounds):
            decode_fps.append(decode_rate(video, model.size))
            replay_fps.append(replay())
    ratios = [r / d for r, d in zip(replay_fps, decode_fps, strict=True)]
    return {
        "rounds": rounds,
        "replay_fps": replay_fps,
        "decode_fps": decode_fps,
        "ratios": ratios,
        "replay_fps_median": float(np.median(replay_fps)),
        "decode_fps_median": float(np.median(decode_fps)),
        "ratio_median": float(np.median(ratios)),
    }
