"""The bundled model on the TensorFlow and the JAX backend: load, first tick, tick, chunk.

    python benchmarks/jax_backend.py [--repeats 300] [--rounds 2]

Keras fixes its backend per process, so each measurement runs in a child process with
``KERAS_BACKEND`` set; the rounds alternate the backends (tensorflow, jax, tensorflow, ...)
so that a busy machine slows both alike. A child loads the bundled model (seconds, with the
backend's import), times the first one-frame tick (compilation), the p50 of one tick with
the state carried, and a 128-frame chunk (as replay runs, ms per frame). Prints one line per
run and the JAX/TensorFlow ratios of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BACKENDS = ("tensorflow", "jax")
CHUNK = 128
KEYS = ("load_s", "first_tick_s", "tick_p50_ms", "chunk_ms_per_frame")


def child(repeats: int) -> dict[str, Any]:
    start = time.perf_counter()
    from forecaster.detection.engine import load
    from forecaster.model.artifact import bundled_model_path
    from forecaster.sources.preprocess import to_gray_resized
    from forecaster.sources.readers import open_source

    loaded = load(bundled_model_path())
    load_s = time.perf_counter() - start
    runner = loaded.runner
    height, width = loaded.size
    images = []
    with open_source(f"synthetic:?fps=0&width={width}&height={height}&frames={CHUNK}") as source:
        while (frame := source.read()) is not None:
            images.append(to_gray_resized(frame.image, (height, width)))
    frames = (np.stack(images)[None, :, :, :, None] / 255.0).astype(np.float32)
    state = runner.initial_state(1)
    start = time.perf_counter()
    _, state = runner.run(frames[:, :1], state)
    first_tick_s = time.perf_counter() - start
    ticks = []
    for i in range(repeats):
        start = time.perf_counter()
        _, state = runner.run(frames[:, i % CHUNK : i % CHUNK + 1], state)
        ticks.append(time.perf_counter() - start)
    runner.run(frames, runner.initial_state(1))  # a chunk graph compiles at its first call
    chunks = []
    for _ in range(3):
        start = time.perf_counter()
        runner.run(frames, runner.initial_state(1))
        chunks.append(time.perf_counter() - start)
    import keras

    return {
        "backend": keras.config.backend(),
        "device": loaded.device,
        "load_s": round(load_s, 2),
        "first_tick_s": round(first_tick_s, 2),
        "tick_p50_ms": round(1000 * statistics.median(ticks), 3),
        "chunk_ms_per_frame": round(1000 * min(chunks) / CHUNK, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.repeats)))
        return 0
    root = Path(__file__).resolve().parents[1]
    runs: dict[str, list[dict[str, Any]]] = {backend: [] for backend in BACKENDS}
    for _ in range(args.rounds):
        for backend in BACKENDS:
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
            proc = subprocess.run(
                [sys.executable, __file__, "--child", "--repeats", str(args.repeats)],
                env=env, capture_output=True, text=True, check=False,
            )
            if proc.returncode != 0:
                print(proc.stderr[-2000:], file=sys.stderr)
                return 1
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            runs[backend].append(result)
            print(json.dumps(result))
    medians = {
        backend: {key: statistics.median(run[key] for run in results) for key in KEYS}
        for backend, results in runs.items()
    }
    for key in KEYS:
        tf, jax = medians["tensorflow"][key], medians["jax"][key]
        print(f"{key}: tensorflow {tf:.3g}, jax {jax:.3g}, jax/tensorflow {jax / tf:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
