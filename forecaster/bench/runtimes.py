"""``forecaster bench``: the worker's one-frame step on TensorFlow and on the lean runtime.

The bundled model (the same weights for all) is stepped one frame at a time with its state
carried, as the worker steps it: on TensorFlow (the XLA-compiled one-frame graph the
:class:`~forecaster.model.step.Stepper` runs) and on every installed lean runtime
(:mod:`forecaster.model.lean`), at batch 1 (one camera) and at a batch of 16 (16 cameras in
one call), timed in alternating rounds so that a slow spell weighs on all alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from forecaster.bench.daemon import percentiles

if TYPE_CHECKING:
    from forecaster.model.step import Stepper

#: batch sizes measured: one camera, and 16 cameras in one call
BATCHES = (1, 16)


def _time_interleaved(
    fns: dict[str, Callable[[], None]], repeats: int, rounds: int = 10, warmup: int = 5
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds per call of each function, timed in alternating rounds, and the CPU time of
    this process per call in milliseconds (all its threads: what a call costs the machine,
    less sensitive than wall time to other programs taking the cores)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    cpu = dict.fromkeys(fns, 0.0)
    per_round = max(1, repeats // rounds)
    for _ in range(rounds):
        for name, fn in fns.items():
            began_cpu = time.process_time()
            for _ in range(per_round):
                began = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - began)
            cpu[name] += time.process_time() - began_cpu
    calls = per_round * rounds
    return samples, {name: 1000.0 * total / calls for name, total in cpu.items()}


def _ticker(runner: Any, frames: np.ndarray, state: list[np.ndarray]) -> Callable[[], None]:
    """One tick of ``runner`` per call, the state carried from call to call."""

    def call() -> None:
        nonlocal state
        _, state = runner.run(frames, state)

    return call


def bench_runtimes(
    repeats: int, batches: tuple[int, ...] = BATCHES, stepper: Stepper | None = None
) -> dict[str, Any]:
    """p50/p99 per call and per camera-frame of each runtime at each batch size, the ratio
    TensorFlow / lean (p50), and the largest difference from TensorFlow over 10 ticks.
    ``stepper``: the bundled model's TensorFlow stepper, when already loaded."""
    from forecaster.detection.engine import load
    from forecaster.model.artifact import bundled_model_path
    from forecaster.model.lean import LeanStepper, lean_runner
    from forecaster.model.step import Stepper as TensorFlowStepper
    from forecaster.model.ticks import LEAN, installed

    path = bundled_model_path()
    device = "CPU"
    if stepper is None:
        loaded = load(path, runtime="tensorflow")
        assert isinstance(loaded.runner, TensorFlowStepper)
        stepper, device = loaded.runner, loaded.device
    runners: dict[str, Any] = {"tensorflow": stepper}
    skipped: dict[str, str] = {}
    for name in LEAN:
        if not installed(name):
            skipped[name] = "not installed"
            continue
        lean = lean_runner(stepper, path, name, device)
        if isinstance(lean, LeanStepper):
            runners[name] = lean
        else:
            skipped[name] = "conversion or check failed (see the warning)"
    report: dict[str, Any] = {"model": str(path), "device": device, "skipped": skipped,
                              "rows": []}
    rng = np.random.default_rng(0)
    for batch in batches:
        frames = rng.random((batch, 1, stepper.height, stepper.width, 1), dtype=np.float32)

        samples, cpu = _time_interleaved(
            {name: _ticker(runner, frames, runner.initial_state(batch))
             for name, runner in runners.items()},
            repeats,
        )
        row: dict[str, Any] = {"batch": batch}
        for name in runners:
            stats = percentiles(samples[name])
            row[name] = {
                **stats,
                "ms_per_camera_frame_p50": stats["p50_ms"] / batch,
                "cpu_ms_per_call": cpu[name],
            }
        base = row["tensorflow"]["p50_ms"]
        for name, runner in runners.items():
            if isinstance(runner, LeanStepper):
                row[name]["tensorflow_over_this_p50"] = base / row[name]["p50_ms"]
                if runner.tick is None:  # its check failed: the calls timed ran on TensorFlow
                    row[name]["fell_back"] = runner.failed_check
                else:
                    row[name]["max_difference"] = runner.difference(batch, ticks=10)
        report["rows"].append(row)
    return report


def format_runtimes(report: dict[str, Any]) -> list[str]:
    """The report's lines: one per batch size and runtime."""
    lines = ["", f"one-frame step of the bundled model, by runtime ({report['device']}):",
             f"{'batch':>6}  {'runtime':<12}{'p50':>9}{'p99':>9}{'per cam-frame':>15}"
             f"{'TF / this':>11}{'CPU/call':>10}{'max diff':>10}"]
    for row in report["rows"]:
        for name, stats in row.items():
            if name == "batch":
                continue
            ratio = stats.get("tensorflow_over_this_p50")
            diff = stats.get("max_difference")
            lines.append(
                f"{row['batch']:>6}  {name:<12}{stats['p50_ms']:>7.2f}ms{stats['p99_ms']:>7.2f}ms"
                f"{stats['ms_per_camera_frame_p50']:>13.3f}ms"
                + (f"{ratio:>10.2f}x" if ratio else f"{'-':>11}")
                + f"{stats['cpu_ms_per_call']:>8.2f}ms"
                + (f"{diff:>10.1e}" if diff is not None else f"{'-':>10}")
            )
            if stats.get("fell_back"):
                batch, worst = stats["fell_back"]
                lines.append(f"        {name} differed from TensorFlow by {worst:.3g} at batch "
                             f"{batch}: that row ran on TensorFlow")
    for name, why in report["skipped"].items():
        lines.append(f"  {name}: not measured, {why}")
    return lines
