"""The benchmarks that run the daemon: paced rates, overload, many cameras, a memory soak.

Each starts ``forecaster run`` through :class:`~forecaster.bench.daemon_process.Daemon` on
synthetic cameras and reads what it publishes and, where it needs the worker's own
figures, its Prometheus ``/metrics``.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from forecaster.bench.daemon_process import Daemon, config_text
from forecaster.errors import ChildFailed


def percentiles(samples: list[float]) -> dict[str, float]:
    values = np.asarray(samples) * 1000.0
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "mean_ms": float(values.mean()),
    }


def _free_port() -> int:
    """A TCP port on the loopback interface that is free now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: ``[scorer] mode`` of every daemon a benchmark starts (``forecaster bench --scorer-mode``)
SCORER_MODE = {"mode": "auto"}


def _config(endpoint: str, cameras: dict[str, str], metrics_port: int | None = None,
            per_process: int | None = None) -> str:
    """The daemon config of a benchmark run: quiet logs, the publisher on ``endpoint`` with
    a deep send queue, a long start-up allowance, the benchmark's scorer mode, ``cameras``
    (id -> source), with ``metrics_port`` the Prometheus endpoint and with ``per_process``
    ``capture.cameras_per_process``."""
    sections: dict[str, dict[str, Any]] = {
        "publish": {"sndhwm": 100000},
        "worker": {"startup_timeout_s": 600.0},
        "scorer": {"mode": SCORER_MODE["mode"]},
    }
    if metrics_port is not None:
        sections["metrics"] = {"enabled": True, "port": metrics_port}
    if per_process is not None:
        sections["capture"] = {"cameras_per_process": per_process}
    return config_text(endpoint, cameras.items(), sections, log_level="warning")


#: the synthetic scenes of the daemon rows (name -> size options): "64x64" rendered at the
#: model's size (cheapest: the throughput rows); "160x120" at the scene's own size, resized
#: to 64x64 by capture, as the bundled model's calibration footage was made (the rows that
#: count false alarms: the natively rendered 64x64 scene is sharper, and the global score
#: calls all of it anomalous)
SCENES = {"64x64": "width=64&height=64", "160x120": ""}
#: the scene whose false alarms count
CALIBRATED_SCENE = "160x120"


def bench_daemon(rates: list[float], frames: int, scene: str = "64x64"
                 ) -> list[dict[str, Any]]:
    """The whole daemon (capture -> worker -> publish) on a synthetic source without
    anomalies (``scene``: one of :data:`SCENES`) paced at each rate: frames scored per second,
    drops, capture-to-publish latency, and the false alarms: frames flagged anomalous and
    events started."""

    from forecaster.client import Subscriber
    from forecaster.protocol import Event, Forecast, Score, Status

    rows = []
    for rate in rates:
        endpoint = f"tcp://127.0.0.1:{_free_port()}"
        with tempfile.TemporaryDirectory() as tmp:
            config = _config(
                endpoint, {"bench": "&".join(filter(None, (
                    f"synthetic:?fps={rate:g}", SCENES[scene], "anomaly_rate=0")))}
            )
            with (
                Subscriber(endpoint, rcvhwm=0) as sub,
                Daemon(Path(tmp), config, args=["--max-frames", str(frames)]) as daemon,
            ):
                proc = daemon.proc
                latencies: list[float] = []
                forecast_stamps: list[float] = []
                last_status = None
                flagged = events = 0
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:
                    msg = sub.recv(timeout=1.0)
                    if msg is None:
                        if proc.poll() is not None:
                            break
                        continue
                    if isinstance(msg, Score):
                        latencies.append(msg.latency_ms)
                        flagged += msg.anomaly
                    elif isinstance(msg, Event):
                        events += msg.state == "start"
                    elif isinstance(msg, Forecast):
                        forecast_stamps.append(time.monotonic())
                    elif isinstance(msg, Status):
                        last_status = msg
                proc.wait(timeout=30)
                if proc.returncode != 0:
                    lines = daemon.log().strip().splitlines() or ["no output"]
                    raise ChildFailed(f"daemon at {rate:g} fps exited with code "
                                     f"{proc.returncode}: {lines[-1]}")
        span = forecast_stamps[-1] - forecast_stamps[0] if len(forecast_stamps) > 1 else 0.0
        rows.append(
            {
                "source_fps": rate,
                "frames": frames,
                "scored": len(latencies),
                "scored_per_s": len(latencies) / span if span else 0.0,
                #: frames the worker ran (scored, or bringing the state up to date)
                "processed_per_s": ((frames - last_status.frames_dropped) / span
                                    if span and last_status else 0.0),
                "dropped": last_status.frames_dropped if last_status else None,
                "state_resets": last_status.state_resets if last_status else None,
                "latency_ms": percentiles([v / 1000.0 for v in latencies]) if latencies else None,
                "scene": scene,
                #: the scene has no anomalies: frames flagged anomalous, events started
                "false_flagged": flagged,
                "false_events": events,
            }
        )
    return rows


#: source rate of the run that finds the worker's capacity (far above it on a CPU)
OVERLOAD_PROBE_FPS = 1000.0


def bench_overload(frames: int) -> dict[str, Any]:
    """Graceful overload: the frames the worker runs per second with the source far too
    fast (its capacity C, as it sheds load: scored frames and those that bring the state up
    to date after a gap), then the scored rate with the source paced at C and at 2C. A
    worker that sheds load scores about C at C and most of C at 2C; one that collapses
    scores a fraction of it. The scene is the one the bundled model was calibrated on, so
    the false alarms of the frames scored after the shed ones are counted too."""
    probe = bench_daemon([OVERLOAD_PROBE_FPS], frames, CALIBRATED_SCENE)[0]
    capacity = max(1.0, probe["processed_per_s"])
    at_capacity, at_twice = bench_daemon([round(capacity), round(2 * capacity)], frames,
                                         CALIBRATED_SCENE)
    return {
        "probe": probe,
        "capacity": capacity,
        "at_capacity": at_capacity,
        "at_twice": at_twice,
        #: scored at 2C against the capacity
        "ratio": at_twice["scored_per_s"] / capacity,
    }


def _scrape(port: int) -> dict[str, float]:
    """Sum the samples of a Prometheus text page by sample name (labels added up, but for
    ``reason``: ``name{reason}``)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if "reason" in sample.labels:
                name += "{" + sample.labels["reason"] + "}"
            totals[name] = totals.get(name, 0.0) + sample.value
    return totals


#: seconds after every camera first scored before a many-camera run's steady window
SETTLE_S = 5.0


def bench_cameras(counts: list[int], fps: float = 10.0, seconds: float = 30.0,
                  per_process: int | None = None) -> list[dict[str, Any]]:
    """Many cameras in one worker: each a 64x64 synthetic scene at ``fps``, run by capture
    processes of ``per_process`` cameras (None: the config's default). Per count: the time
    from launch to the first score, the model time per camera-frame (from the worker's
    inference histogram), frames the worker had to skip, each camera's capture-to-publish
    latency, and the resident memory of the daemon's processes at the end: from the first
    score on, and (``steady``) over ``seconds`` starting :data:`SETTLE_S` after every
    camera first scored, once the start-up backlog is worked off."""
    from forecaster.client import Subscriber
    from forecaster.protocol import Score

    rows = []
    for count in counts:
        endpoint = f"tcp://127.0.0.1:{_free_port()}"
        metrics_port = _free_port()
        with tempfile.TemporaryDirectory() as tmp:
            sources = {
                f"cam{index:02d}": f"synthetic:?fps={fps:g}&width=64&height=64&anomaly_rate=0"
                f"&seed={index + 1}"
                for index in range(count)
            }
            config = _config(endpoint, sources, metrics_port, per_process)
            launched = time.monotonic()
            memory: dict[str, Any] = {}
            with (
                Subscriber(endpoint, kinds=["score"], rcvhwm=0) as sub,
                Daemon(Path(tmp), config) as daemon,
            ):
                proc = daemon.proc
                try:
                    latencies: dict[str, list[float]] = {}
                    steady: dict[str, list[float]] = {}
                    started: float | None = None
                    baseline: dict[str, float] = {}
                    settle_at: float | None = None
                    steady_started: float | None = None
                    steady_base: dict[str, float] = {}
                    deadline = time.monotonic() + 600
                    while time.monotonic() < deadline and proc.poll() is None:
                        msg = sub.recv(timeout=0.5)
                        now = time.monotonic()
                        if started is None:
                            if msg is not None:  # scores flow: measure from here on
                                started = now
                                baseline = _scrape(metrics_port)
                            continue
                        if isinstance(msg, Score):
                            latencies.setdefault(msg.camera, []).append(msg.latency_ms)
                            if steady_started is not None:
                                steady.setdefault(msg.camera, []).append(msg.latency_ms)
                        if settle_at is None and len(latencies) == count:
                            settle_at = now + SETTLE_S  # every camera scores: settle
                        if steady_started is None and settle_at is not None and now >= settle_at:
                            steady_started = now
                            steady_base = _scrape(metrics_port)
                        if steady_started is not None and now - steady_started >= seconds:
                            break
                        if steady_started is None and now - started >= 2 * seconds + 30:
                            break  # not every camera scores: no steady window
                    final = _scrape(metrics_port) if proc.poll() is None else {}
                    if proc.poll() is None:
                        memory = daemon_memory(proc.pid)
                finally:
                    daemon.stop(timeout=60)
        ended = time.monotonic()
        elapsed = ended - started if started else 0.0
        steady_s = ended - steady_started if steady_started else 0.0

        def delta(name: str, base: dict[str, float] = baseline,
                  final: dict[str, float] = final) -> float:
            return final.get(name, 0.0) - base.get(name, 0.0)

        processed = delta("forecaster_frames_processed_total")
        model_s = delta("forecaster_inference_duration_seconds_sum")
        calls = delta("forecaster_inference_duration_seconds_count")
        p99s = [float(np.percentile(v, 99)) for v in latencies.values() if v]
        rates = [len(v) / elapsed for v in latencies.values()] if elapsed else []
        steady_p99s = [float(np.percentile(v, 99)) for v in steady.values() if v]
        steady_processed = delta("forecaster_frames_processed_total", steady_base)
        steady_model_s = delta("forecaster_inference_duration_seconds_sum", steady_base)
        steady_row: dict[str, Any] | None = None
        if steady_started is not None and steady_s > 0:
            steady_row = {
                "seconds": steady_s,
                "dropped_worker_behind": delta(
                    "forecaster_frames_dropped_total{worker_behind}", steady_base),
                "model_ms_per_camera_frame": (1000.0 * steady_model_s / steady_processed
                                              if steady_processed else None),
                "worker_busy_fraction": steady_model_s / steady_s,
                "slowest_camera_scores_per_s": min(
                    (len(steady.get(camera, [])) / steady_s for camera in latencies),
                    default=0.0),
                "latency_p99_ms_worst_camera": max(steady_p99s) if steady_p99s else None,
                "latency_p99_ms_median_camera": (float(np.median(steady_p99s))
                                                 if steady_p99s else None),
            }
        rows.append(
            {
                "cameras": count,
                "fps_per_camera": fps,
                "cameras_per_process": per_process,
                "startup_s": started - launched if started else None,
                "seconds": elapsed,
                "cameras_scoring": len(latencies),
                "frames_processed": processed,
                "model_calls": calls,
                "frames_per_call": processed / calls if calls else None,
                "model_ms_per_camera_frame": 1000.0 * model_s / processed if processed else None,
                "worker_busy_fraction": model_s / elapsed if elapsed else None,
                "dropped_worker_behind": delta("forecaster_frames_dropped_total{worker_behind}"),
                "slowest_camera_scores_per_s": min(rates) if rates else 0.0,
                "latency_p99_ms_worst_camera": max(p99s) if p99s else None,
                "latency_p99_ms_median_camera": float(np.median(p99s)) if p99s else None,
                #: the same figures over ``seconds`` from SETTLE_S after every camera
                #: first scored (None: not every camera scored)
                "steady": steady_row,
                "memory": memory,
            }
        )
    return rows


def _pss_mb(pid: int) -> float | None:
    """Proportional set size of a process in MB (shared pages split among their users)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        return None
    return None


def daemon_memory(pid: int) -> dict[str, Any]:
    """Resident memory of a running daemon: the supervisor ``pid`` and its children, summed
    (RSS counts the pages processes share once per process, PSS splits them), and per role
    (supervisor, worker, capture: all capture processes together)."""
    roles = {pid: "supervisor"}
    for child, name in _children(pid).items():
        roles[child] = ("worker" if name == "fc-worker" else
                        "capture" if name.startswith("fc-cap:") else "other")
    result: dict[str, Any] = {
        "rss_mb": 0.0, "pss_mb": 0.0, "processes": 0, "capture_processes": 0, "rss_by_role_mb": {},
    }
    for process, role in roles.items():
        rss = _rss_mb(process)
        if rss is None:
            continue
        result["rss_mb"] += rss
        result["pss_mb"] += _pss_mb(process) or 0.0
        result["processes"] += 1
        result["capture_processes"] += role == "capture"
        by_role = result["rss_by_role_mb"]
        by_role[role] = by_role.get(role, 0.0) + rss
    return result


def _rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MB (``VmRSS``), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        return None
    return None


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux ``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> dict[int, str]:
    """The direct children of ``pid`` and their process names (Linux ``/proc``)."""
    found: dict[int, str] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            text = (task / "children").read_text()
        except OSError:
            continue
        for child in text.split():
            try:
                found[int(child)] = Path(f"/proc/{child}/comm").read_text().strip()
            except OSError:
                continue
    return found


def _slope(ticks: list[float], values: list[float]) -> float | None:
    """Least-squares slope of ``values`` against ``ticks``, in units per 100,000 ticks."""
    if len(ticks) < 3 or max(ticks) - min(ticks) <= 0:
        return None
    return float(np.polyfit(np.asarray(ticks), np.asarray(values), 1)[0]) * 100_000.0


def bench_soak(
    ticks: int, fps: float = 300.0, warmup: float = 0.1, interval: float | None = None
) -> dict[str, Any]:
    """Resident memory over a long run: the daemon on one 64x64 synthetic camera paced at
    ``fps`` for ``ticks`` frames. RSS of the supervisor, the capture and the worker is
    sampled every ``interval`` seconds (default: 2 s, or about 50 samples in a short run)
    against the frames the worker processed; the slope after the first ``warmup``
    fraction of the run (MB per 100,000 ticks) shows growth."""
    if interval is None:
        interval = min(2.0, max(0.1, ticks / fps / 50.0))

    metrics_port = _free_port()
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    samples: list[dict[str, Any]] = []
    roles: dict[int, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = _config(endpoint, {"soak": f"synthetic:?fps={fps:g}&width=64&height=64"},
                         metrics_port)
        daemon = Daemon(Path(tmp), config, args=["--max-frames", str(ticks)])
        proc = daemon.proc
        started = time.monotonic()
        try:
            deadline = started + ticks / fps * 3 + 300
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(interval)
                try:
                    processed = _scrape(metrics_port).get("forecaster_frames_processed_total")
                except OSError:
                    continue  # not serving yet, or already stopping
                if processed is None:
                    continue
                for pid, name in _children(proc.pid).items():
                    if name == "fc-worker":
                        roles[pid] = "worker"
                    elif name.startswith("fc-cap:"):
                        roles[pid] = "capture"
                row: dict[str, Any] = {"t": time.monotonic() - started, "ticks": processed,
                                       "supervisor": _rss_mb(proc.pid)}
                for pid, role in roles.items():
                    rss = _rss_mb(pid)
                    if rss is not None:
                        row[role] = rss
                samples.append(row)
        finally:
            daemon.stop(timeout=60)
    total = max((row["ticks"] for row in samples), default=0.0)
    steady = [row for row in samples if row["ticks"] >= warmup * total]
    result: dict[str, Any] = {
        "ticks_requested": ticks,
        "ticks_processed": total,
        "source_fps": fps,
        "seconds": samples[-1]["t"] if samples else 0.0,
        "exit_code": proc.returncode,
        "samples": samples,
        "processes": {},
    }
    for role in ("supervisor", "capture", "worker"):
        points = [(row["ticks"], row[role]) for row in steady if row.get(role) is not None]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        result["processes"][role] = {
            "rss_after_warmup_mb": ys[0],
            "rss_end_mb": ys[-1],
            "rss_max_mb": max(ys),
            "slope_mb_per_100k_ticks": _slope(list(xs), list(ys)),
        }
    return result
