"""``forecaster bench``: speed of the model step, the daemon and replay on this machine.

Every ratio is measured in one run on the same weights: the stateful one-step function
against re-running the 10-frame window (the way the original Keras answers predict), and
the chunked replay path against one model call per frame.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from forecaster.bench.daemon import (
    CALIBRATED_SCENE,
    SCORER_MODE,
    bench_cameras,
    bench_daemon,
    bench_overload,
    bench_soak,
    percentiles,
)

WINDOW = 10


def _time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - began)
    return samples


def _time_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, rounds: int = 10, warmup: int = 5
) -> dict[str, list[float]]:
    """Time several functions in alternating rounds of ``repeats / rounds`` calls each, so
    that a slow spell of a shared machine weighs on all of them alike (their ratios are
    then taken from the same minutes)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    per_round = max(1, repeats // rounds)
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name] += _time_calls(fn, per_round, warmup=0)
    return samples


def measure_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Floating-point peak of this machine as TensorFlow sees it: a large fp32 matmul."""
    import tensorflow as tf

    a = tf.random.uniform((size, size))
    b = tf.random.uniform((size, size))
    matmul = tf.function(lambda: tf.linalg.matmul(a, b))
    samples = _time_calls(lambda: matmul().numpy(), repeats, warmup=2)
    return 2.0 * size**3 / min(samples) / 1e9


def count_flops(model: Any, inputs: list[np.ndarray]) -> float | None:
    """Floating-point operations of one call of ``model`` on ``inputs`` (TF profiler),
    traced with the inputs' exact shapes."""
    import tensorflow as tf

    try:
        fn = tf.function(lambda *x: model(list(x) if len(x) > 1 else x[0], training=False))
        concrete = fn.get_concrete_function(*[tf.constant(x) for x in inputs])
        profiler = tf.compat.v1.profiler
        options = profiler.ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        info = profiler.profile(concrete.graph, options=options)
        return float(info.total_float_ops)
    except (ValueError, TypeError, tf.errors.OpError):
        return None


def bench_arch(arch: str, size: tuple[int, int], repeats: int) -> dict[str, Any]:
    """Per-tick cost of one architecture, same weights, same run: the daemon's runner
    (the stateful step of a recurrent arch) against running the model on the last 10-frame
    window every tick (the way the original Keras answers predict; the only way for a clip
    arch). Both as the worker runs them, one frame in per tick: the stateful step both as
    plain graphs and as the daemon runs it (XLA-compiled one-frame graph), the window as the
    window runner runs it; timed in alternating rounds.
    """
    import keras

    from forecaster.model.builders import build_model, get_spec
    from forecaster.model.step import Stepper, make_runner

    keras.utils.set_random_seed(0)
    spec = get_spec(arch)
    model = build_model(arch, *size, window=WINDOW)
    height, width = size
    frame = np.random.default_rng(0).random((1, 1, height, width, 1), dtype=np.float32)
    window_runner = make_runner(model, window=WINDOW)
    window_state = window_runner.initial_state(1)

    def window_tick() -> None:
        nonlocal window_state
        _, window_state = window_runner.run(frame, window_state)

    window = np.repeat(frame, WINDOW, axis=1)
    row: dict[str, Any] = {
        "arch": arch,
        "kind": spec.kind,
        "size": list(size),
        "parameters": int(model.count_params()),
        "step": None,
        "step_xla": None,
        "window": None,
        "window_over_step_p50": None,
        "step_ticks_per_s": None,
        "window_ticks_per_s": None,
        "step_flops": None,
        "window_flops": count_flops(model, [window]),
    }
    if not spec.recurrent:
        row["window"] = percentiles(_time_calls(window_tick, repeats))
        row["window_ticks_per_s"] = 1000.0 / row["window"]["p50_ms"]
        return row
    stepper = Stepper(model, jit=False)  # plain graphs
    state = stepper.initial_state(1)

    def step() -> None:
        nonlocal state
        _, state = stepper.run(frame, state)

    runner = make_runner(model)  # what the worker runs: XLA for one-frame ticks
    run_state = runner.initial_state(1)

    def tick() -> None:
        nonlocal run_state
        _, run_state = runner.run(frame, run_state)

    samples = _time_interleaved({"window": window_tick, "step": step, "tick": tick}, repeats)
    window_stats = percentiles(samples["window"])
    xla_stats = percentiles(samples["tick"])
    row.update(
        {
            "step": percentiles(samples["step"]),
            "step_xla": xla_stats,
            "window": window_stats,
            "window_ticks_per_s": 1000.0 / window_stats["p50_ms"],
            "window_over_step_p50": window_stats["p50_ms"] / xla_stats["p50_ms"],
            "step_ticks_per_s": 1000.0 / xla_stats["p50_ms"],
            # the one-frame graph has no loop, whose operations the profiler would miss
            "step_flops": count_flops(stepper.tick_model, [frame, *stepper.initial_state(1)]),
        }
    )
    return row


def _run_cli(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    return subprocess.run(
        [sys.executable, "-m", "forecaster", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _decode(video: Path, size: tuple[int, int], max_frames: int | None) -> tuple[np.ndarray, float]:
    """The video's frames gray and resized as replay reads them, and the seconds per frame
    that reading (decode + resize) took."""
    from forecaster.sources.preprocess import to_gray_resized
    from forecaster.sources.readers import open_source

    frames = []
    started = time.perf_counter()
    with open_source(str(video)) as source:
        while (frame := source.read()) is not None:
            frames.append(to_gray_resized(frame.image, size))
            if max_frames is not None and len(frames) >= max_frames:
                break
    seconds = time.perf_counter() - started
    return np.stack(frames), seconds / max(1, len(frames))


def bench_replay_engine(frames: np.ndarray, chunks: tuple[int, ...] = (1, 128)) -> dict[str, Any]:
    """Replay's model + scoring on decoded frames (the bundled model, the daemon's scorer):
    frames per second with one model call per ``chunk`` frames, after a warm-up pass."""
    from forecaster.config import ScorerConfig
    from forecaster.detection.engine import load
    from forecaster.model.artifact import bundled_model_path
    from forecaster.offline.replay_feed import RecordingStepper, feed_chunk

    model = load(bundled_model_path())
    stepper = RecordingStepper(model.runner)
    stamps = np.zeros(len(frames))
    results: dict[str, Any] = {"frames": len(frames)}
    for chunk in chunks:
        rates = []
        for _ in range(2):  # the first pass compiles this chunk's shapes
            engine = model.engine(ScorerConfig(), stepper)
            engine.add_camera("bench")
            started = time.perf_counter()
            for start in range(0, len(frames), chunk):
                stop = min(start + chunk, len(frames))
                feed_chunk(engine, stepper, "bench", frames[start:stop],
                           range(start, stop), stamps[start:stop])
            rates.append(len(frames) / (time.perf_counter() - started))
        results[f"chunk_{chunk}_fps"] = rates[-1]
    if len(chunks) == 2:
        results["ratio"] = results[f"chunk_{chunks[1]}_fps"] / results[f"chunk_{chunks[0]}_fps"]
    return results


def bench_replay(video: Path, max_frames: int | None = None) -> dict[str, Any]:
    """Replay throughput on a real video: chunked (default) against one call per frame,
    end to end (``forecaster replay``, reading included) and for the model + scoring alone
    on decoded frames; and what reading (decode + resize) costs per frame."""
    from forecaster.model.artifact import bundled_model_path, read_card

    card = read_card(bundled_model_path())
    frames, read_s = _decode(video, (int(card.height), int(card.width)), max_frames)
    results: dict[str, Any] = {"video": str(video), "read_ms_per_frame": 1000.0 * read_s}
    for label, extra in (("chunked", []), ("per_frame", ["--chunk", "1"])):
        with tempfile.TemporaryDirectory() as out:
            proc = _run_cli(["replay", str(video), "--out", out, *extra])
            if proc.returncode != 0:
                results[label] = {"error": proc.stderr.strip().splitlines()[-1:]}
                continue
            summary = json.loads((Path(out) / "summary.json").read_text())
            results[label] = {"frames": summary["total"]["frames"], "fps": summary["total"]["fps"]}
    if "fps" in results.get("chunked", {}) and "fps" in results.get("per_frame", {}):
        results["chunked_over_per_frame"] = results["chunked"]["fps"] / results["per_frame"]["fps"]
    results["engine"] = bench_replay_engine(frames)
    from forecaster.bench.replay import replay_against_decode

    results["against_decode"] = replay_against_decode(video)
    return results


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import tensorflow as tf

    info["tensorflow"] = tf.__version__
    gpus = tf.config.list_physical_devices("GPU")
    info["device"] = gpus[0].name if gpus else "CPU"
    return info


def peak_rss_mb() -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return {"bench_process_mb": own, "largest_child_mb": children}


def run_bench(
    *,
    archs: list[str] | None = None,
    size: tuple[int, int] = (64, 64),
    repeats: int = 300,
    video: Path | None = None,
    daemon_rates: list[float] | None = None,
    daemon_frames: int = 2000,
    daemon_scene: str = "64x64",
    cameras: list[int] | None = None,
    camera_seconds: float = 30.0,
    camera_fps: float = 10.0,
    capture_nice: int | None = None,
    rtsp: bool = False,
    cameras_per_process: int | None = None,
    camera_model: Path | None = None,
    soak_ticks: int | None = None,
    scorer_mode: str = "auto",
    overload: bool = False,
    web: bool = False,
    recording: bool = False,
) -> dict[str, Any]:
    from forecaster.logs import import_tensorflow_quietly
    from forecaster.model.builders import SPECS

    import_tensorflow_quietly()
    SCORER_MODE["mode"] = scorer_mode
    report: dict[str, Any] = {"machine": machine(), "scorer_mode": scorer_mode}
    report["peak_gflops"] = measure_peak_gflops()
    report["archs"] = []
    for arch in list(SPECS) if archs is None else archs:
        row = bench_arch(arch, size, repeats)
        timed = row["step_xla"] or row["window"]  # the runner the daemon uses
        flops = row["step_flops"] or row["window_flops"]
        if flops:
            seconds = timed["p50_ms"] / 1000.0
            row["step_fraction_of_peak"] = flops / seconds / 1e9 / report["peak_gflops"]
        report["archs"].append(row)
    if archs is None or archs:  # the step by runtime goes with the archs (--skip-archs: not)
        from forecaster.bench.runtimes import bench_runtimes

        report["runtimes"] = bench_runtimes(repeats)
    from forecaster.bench.scoring import bench_scoring

    report["scoring"] = bench_scoring()
    if video is not None and video.exists() and not cameras:
        report["replay"] = bench_replay(video)
    if daemon_rates:
        report["daemon"] = bench_daemon(daemon_rates, daemon_frames, daemon_scene)
    if overload:
        report["overload"] = bench_overload(daemon_frames)
    if web:
        from forecaster.bench.web import bench_web

        report["web"] = bench_web()
    if cameras and video is not None:  # real cameras: each one plays the video
        from forecaster.bench.cameras import bench_video_cameras

        capture: dict[str, Any] = {}
        if capture_nice is not None:
            capture["nice"] = capture_nice
        if cameras_per_process is not None:
            capture["cameras_per_process"] = cameras_per_process
        extra: dict[str, dict[str, Any]] = {"capture": capture} if capture else {}
        if camera_model is not None:
            extra["model"] = {"path": str(camera_model.resolve())}
        report["video_cameras"] = bench_video_cameras(cameras, video, fps=camera_fps,
                                                      seconds=camera_seconds, rtsp=rtsp,
                                                      extra=extra)
    elif cameras:
        report["cameras"] = bench_cameras(cameras, seconds=camera_seconds,
                                          per_process=cameras_per_process)
    if soak_ticks:
        report["soak"] = bench_soak(soak_ticks)
    if recording:
        from forecaster.bench.recording import bench_recording

        report["recording"] = bench_recording()
    report["memory"] = peak_rss_mb()
    return report


def format_cameras(rows: list[dict[str, Any]]) -> list[str]:
    """The many-cameras table, and the resident memory each camera adds."""
    nan = float("nan")
    lines = [
        f"{'cameras':>8}{'start':>7}{'ms/cam-frame':>14}{'frames/call':>13}{'busy':>7}"
        f"{'dropped':>9}{'slowest cam/s':>15}{'p99 worst':>11}{'p99 median':>12}"
        f"{'captures':>10}{'RSS':>9}{'PSS':>9}",
    ]
    for row in rows:
        memory = row.get("memory") or {}
        lines.append(
            f"{row['cameras']:>8}{row['startup_s'] or nan:>6.0f}s"
            f"{row['model_ms_per_camera_frame'] or nan:>14.2f}"
            f"{row['frames_per_call'] or nan:>13.1f}"
            f"{100 * (row['worker_busy_fraction'] or 0):>6.0f}%"
            f"{row['dropped_worker_behind']:>9.0f}{row['slowest_camera_scores_per_s']:>15.1f}"
            f"{row['latency_p99_ms_worst_camera'] or nan:>9.1f}ms"
            f"{row['latency_p99_ms_median_camera'] or nan:>10.1f}ms"
            f"{memory.get('capture_processes', 0):>10}"
            f"{memory.get('rss_mb', nan):>6.0f} MB{memory.get('pss_mb', nan):>6.0f} MB"
        )
    steady_rows = [row for row in rows if row.get("steady")]
    if steady_rows:
        lines += ["steady state (from 5 s after every camera first scored):",
                  f"{'cameras':>8}{'seconds':>9}{'ms/cam-frame':>14}{'busy':>7}{'dropped':>9}"
                  f"{'slowest cam/s':>15}{'p99 worst':>11}{'p99 median':>12}"]
        for row in steady_rows:
            steady = row["steady"]
            lines.append(
                f"{row['cameras']:>8}{steady['seconds']:>8.0f}s"
                f"{steady['model_ms_per_camera_frame'] or nan:>14.2f}"
                f"{100 * (steady['worker_busy_fraction'] or 0):>6.0f}%"
                f"{steady['dropped_worker_behind']:>9.0f}"
                f"{steady['slowest_camera_scores_per_s']:>15.1f}"
                f"{steady['latency_p99_ms_worst_camera'] or nan:>9.1f}ms"
                f"{steady['latency_p99_ms_median_camera'] or nan:>10.1f}ms"
            )
    # rows whose daemon scored, with its memory taken (not one that kept restarting)
    measured = [row for row in rows
                if row["cameras_scoring"] and (row.get("memory") or {}).get("rss_mb")]
    if len(measured) > 1:
        low = min(measured, key=lambda row: row["cameras"])
        high = max(measured, key=lambda row: row["cameras"])
        if high["cameras"] > low["cameras"]:
            extra = high["cameras"] - low["cameras"]
            rss = (high["memory"]["rss_mb"] - low["memory"]["rss_mb"]) / extra
            pss = (high["memory"]["pss_mb"] - low["memory"]["pss_mb"]) / extra
            lines.append(f"resident memory per additional camera ({low['cameras']} -> "
                         f"{high['cameras']} cameras): {rss:.1f} MB RSS, {pss:.1f} MB PSS")
    return lines


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"machine: {report['machine'].get('cpu', '?')} x{report['machine']['cpus']}, "
        f"{report['machine']['device']}, TensorFlow {report['machine']['tensorflow']}",
        f"measured peak (fp32 matmul): {report['peak_gflops']:.1f} GFLOP/s",
    ]
    if report["archs"]:
        lines += [
            "",
            f"{'arch':<20}{'params':>10}{'step p50':>10}{'p99':>8}{'window p50':>12}{'p99':>8}"
            f"{'ratio':>7}{'MFLOP/tick':>12}{'% peak':>8}",
        ]
    for row in report["archs"]:
        flops = row["step_flops"] or row["window_flops"]
        step = row["step_xla"]
        step_text = (
            f"{step['p50_ms']:>8.2f}ms{step['p99_ms']:>6.2f}ms" if step else f"{'-':>10}{'-':>8}"
        )
        ratio = row["window_over_step_p50"]
        lines.append(
            f"{row['arch']:<20}{row['parameters']:>10,}{step_text}"
            f"{row['window']['p50_ms']:>10.2f}ms{row['window']['p99_ms']:>6.2f}ms"
            + (f"{ratio:>6.1f}x" if ratio else f"{'-':>7}")
            + f"{(flops or 0) / 1e6:>12.1f}"
            f"{100 * row.get('step_fraction_of_peak', 0):>7.1f}%"
        )
    if report.get("scoring"):
        from forecaster.bench.scoring import format_scoring

        lines += ["", *format_scoring(report["scoring"])]
    if report.get("runtimes"):
        from forecaster.bench.runtimes import format_runtimes

        lines += format_runtimes(report["runtimes"])
    replay = report.get("replay")
    if replay:
        lines.append("")
        chunked = replay.get("chunked", {})
        per_frame = replay.get("per_frame", {})
        lines.append(
            f"replay {Path(replay['video']).name} end to end: chunked {chunked.get('fps', '?')} "
            f"frames/s, one call per frame {per_frame.get('fps', '?')} frames/s"
            + (f" ({replay['chunked_over_per_frame']:.1f}x)" if "chunked_over_per_frame" in replay else "")
            + f"; reading alone {replay['read_ms_per_frame']:.2f} ms/frame"
        )
        against = replay.get("against_decode")
        if against:
            lines.append(
                f"replay against decoding + gray + resize alone ({against['rounds']} alternating "
                f"rounds; decoding {against['decode_fps_median']:.0f} frames/s, "
                f"{against['decode_cpu_ms_per_frame']:.2f} ms of CPU per frame):"
            )
            for mode in ("fused", "global"):
                if mode not in against:
                    continue
                row = against[mode]
                lines.append(
                    f"  scorer {mode:<7}{row['replay_fps_median']:>6.0f} frames/s, ratio "
                    f"{row['ratio_median']:.2f} (per round "
                    + ", ".join(f"{r:.2f}" for r in row["ratios"])
                    + f"), {row['cpu_ms_per_frame']:.2f} ms of CPU per frame"
                )
        engine = replay.get("engine")
        if engine:
            lines.append(
                f"replay model + scoring on decoded frames: chunks of 128 "
                f"{engine['chunk_128_fps']:.0f} frames/s, one call per frame "
                f"{engine['chunk_1_fps']:.0f} frames/s ({engine['ratio']:.1f}x)"
            )
    for row in report.get("daemon", []):
        latency = row["latency_ms"] or {}
        lines.append(
            f"daemon at {row['source_fps']:g} fps: {row['scored_per_s']:.0f} scored/s, "
            f"dropped {row['dropped']}, resets {row['state_resets']}, latency p50 "
            f"{latency.get('p50_ms', float('nan')):.1f} ms p99 {latency.get('p99_ms', float('nan')):.1f} ms"
            + (f", false alarms {row['false_events']} ({row['false_flagged']} frames flagged)"
               if row["scene"] == CALIBRATED_SCENE else "")
        )
    if report.get("overload"):
        over = report["overload"]
        twice, once = over["at_twice"], over["at_capacity"]
        lines.append(
            f"overload: capacity {over['capacity']:.0f} frames run/s (source at "
            f"{over['probe']['source_fps']:g} fps); at {once['source_fps']:g} fps "
            f"{once['scored_per_s']:.0f} scored/s, at {twice['source_fps']:g} fps "
            f"{twice['scored_per_s']:.0f} scored/s ({over['ratio']:.2f}x), dropped "
            f"{twice['dropped']}, resets {twice['state_resets']}, false alarms "
            f"{twice['false_events']} ({twice['false_flagged']} frames flagged; at capacity "
            f"{once['false_events']}, {once['false_flagged']}; {over['probe']['scene']} scene)"
        )
    if report.get("web"):
        from forecaster.bench.web import format_web

        lines += format_web(report["web"])
    if report.get("cameras"):
        lines += ["", *format_cameras(report["cameras"])]
    if report.get("video_cameras"):
        from forecaster.bench.cameras import format_video_cameras

        lines += ["", *format_video_cameras(report["video_cameras"])]
    soak = report.get("soak")
    if soak:
        lines += ["", f"soak: {soak['ticks_processed']:.0f} ticks at {soak['source_fps']:g} fps "
                  f"in {soak['seconds']:.0f} s (exit {soak['exit_code']}); resident memory after "
                  f"the first 10%:"]
        for role, row in soak["processes"].items():
            slope = row["slope_mb_per_100k_ticks"]
            lines.append(
                f"  {role:<11}{row['rss_after_warmup_mb']:>8.1f} MB -> {row['rss_end_mb']:>7.1f} MB"
                f" (max {row['rss_max_mb']:.1f}), slope "
                + (f"{slope:+.2f} MB per 100,000 ticks" if slope is not None else "n/a")
            )
    if report.get("recording"):
        from forecaster.bench.recording import format_recording

        lines += ["", *format_recording(report["recording"])]
    memory = report["memory"]
    lines.append(
        f"peak RSS: bench process {memory['bench_process_mb']:.0f} MB, "
        f"largest child {memory['largest_child_mb']:.0f} MB"
    )
    return "\n".join(lines)
