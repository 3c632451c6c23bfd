"""``forecaster bench --cameras N --video FILE``: real cameras, each a real video looped.

N cameras, each the same video file looped and paced at ``fps`` (or, with ``rtsp``, each
reading it from an RTSP server started for the run), run through the daemon with the
default scorer and recording on. Measured over ``seconds`` once every camera scores and
the start-up backlog is worked off: frames scored per second, the slowest camera's rate
(and against the mean), frames dropped because the worker was behind, the latency from
capture to this subscriber (p50, p99), the share of the scored frames that were in an event
(recorded into clips), and the CPU each role of process used (cores).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from forecaster.bench.daemon import SCORER_MODE, _children, _cpu_s, _free_port, _scrape
from forecaster.bench.daemon_process import Daemon, config_text
from forecaster.errors import ChildFailed

#: seconds after every camera first scored before the measured window starts
SETTLE_S = 5.0
#: seconds a run waits for every camera to score once
START_S = 300.0


def _role(name: str) -> str:
    if name == "fc-worker":
        return "worker"
    if name.startswith("fc-cap"):
        return "capture"
    return name.removeprefix("fc-") if name.startswith("fc-") else "other"


def _cpu_by_role(pid: int) -> dict[str, float]:
    """CPU seconds so far of the daemon ``pid`` (the supervisor) and its children, by role."""
    roles: dict[str, float] = {}
    for child, name in [(pid, "supervisor"), *_children(pid).items()]:
        try:
            seconds = _cpu_s(child)
        except (OSError, ValueError, IndexError):
            continue
        role = _role(name)
        roles[role] = roles.get(role, 0.0) + seconds
    return roles


def video_config(endpoint: str, sources: list[str], metrics_port: int, recordings: Path,
                 fps: float, loop: bool, extra: dict[str, dict[str, Any]] | None = None) -> str:
    """The daemon config of a real-camera run: ``sources`` as cameras ``cam00``, ... paced at
    ``fps``, the benchmark's scorer mode, recording on into ``recordings``, metrics on."""
    sections: dict[str, dict[str, Any]] = {
        "publish": {"sndhwm": 100000},
        "worker": {"startup_timeout_s": 600.0},
        "scorer": {"mode": SCORER_MODE["mode"]},
        "metrics": {"enabled": True, "port": metrics_port},
        "recording": {"enabled": True, "dir": str(recordings), "min_free_mb": 0.0},
    }
    for name, values in (extra or {}).items():
        sections.setdefault(name, {}).update(values)
    cameras = [(f"cam{index:02d}", source, {"fps": fps, "loop": loop})
               for index, source in enumerate(sources)]
    return config_text(endpoint, cameras, sections, log_level="warning")


def bench_video_cameras(counts: list[int], video: Path, fps: float = 10.0,
                        seconds: float = 30.0, rtsp: bool = False,
                        extra: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per camera count (see the module's docstring); ``extra``: more config keys."""
    rows = []
    for count in counts:
        if rtsp:
            from forecaster.bench.rtsp import RtspServer

            # enough of the video for the start-up and the window (a pass takes ~8 s or more)
            repeats = max(3, math.ceil((START_S / 3 + SETTLE_S + seconds) / 8))
            with RtspServer(video, repeats=repeats) as server:
                rows.append(_run(count, [server.url] * count, fps, seconds, False, extra))
        else:
            rows.append(_run(count, [str(video)] * count, fps, seconds, True, extra))
        capture = (extra or {}).get("capture", {})
        rows[-1].update({"video": str(video), "rtsp": rtsp,
                         "capture_nice": capture.get("nice"),
                         "cameras_per_process": capture.get("cameras_per_process"),
                         "model": (extra or {}).get("model", {}).get("path")})
    return rows


def _run(count: int, sources: list[str], fps: float, seconds: float, loop: bool,
         extra: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    from forecaster.client import Subscriber
    from forecaster.protocol import Score

    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    metrics_port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = video_config(endpoint, sources, metrics_port, folder / "events", fps, loop,
                              extra)
        scored: dict[str, int] = {}
        alarmed = 0
        latencies: list[float] = []
        window: tuple[float, float] | None = None
        with (
            Subscriber(endpoint, kinds=["score"], rcvhwm=0) as sub,
            Daemon(folder, config) as daemon,
        ):
            proc = daemon.proc
            try:
                seen: set[str] = set()
                began: float | None = None
                deadline = time.monotonic() + START_S
                base_metrics: dict[str, float] = {}
                base_cpu: dict[str, float] = {}
                while proc.poll() is None:
                    msg = sub.recv(timeout=0.5)
                    now = time.monotonic()
                    if began is None:
                        if isinstance(msg, Score):
                            seen.add(msg.camera)
                        if len(seen) == count:
                            began = now + SETTLE_S
                        elif now > deadline:
                            lines = daemon.log().strip().splitlines()[-3:]
                            raise ChildFailed(f"{count} cameras: only {len(seen)} scored "
                                              f"within {START_S:g} s; the daemon's log "
                                              f"ends: {' | '.join(lines) or 'empty'}")
                        continue
                    if now < began:
                        continue
                    if window is None:
                        window = (now, now)
                        base_metrics = _scrape(metrics_port)
                        base_cpu = _cpu_by_role(proc.pid)
                        scored = {}
                        alarmed = 0
                        latencies = []
                    if isinstance(msg, Score):
                        scored[msg.camera] = scored.get(msg.camera, 0) + 1
                        alarmed += msg.anomaly
                        latencies.append(time.time() - msg.ts)
                    if now - window[0] >= seconds:
                        window = (window[0], now)
                        break
                if proc.poll() is not None:
                    raise ChildFailed(f"daemon of {count} cameras exited with code "
                                      f"{proc.returncode}: {daemon.log().strip()[-500:]}")
                final_metrics = _scrape(metrics_port)
                final_cpu = _cpu_by_role(proc.pid)
            finally:
                daemon.stop(timeout=60)
    assert window is not None
    span = window[1] - window[0]
    rates = [scored.get(f"cam{index:02d}", 0) / span for index in range(count)]
    mean = float(np.mean(rates))
    def delta(name: str) -> float:
        return final_metrics.get(name, 0.0) - base_metrics.get(name, 0.0)

    lat = np.asarray(latencies) * 1000.0 if latencies else np.asarray([np.nan])
    return {
        "cameras": count,
        "fps_per_camera": fps,
        "seconds": span,
        "scored_per_s": sum(rates),
        "offered_per_s": count * fps,
        "slowest_camera_per_s": min(rates),
        "mean_camera_per_s": mean,
        "slowest_over_mean": min(rates) / mean if mean else 0.0,
        #: frames the worker skipped because it was behind
        "dropped": delta("forecaster_frames_dropped_total{worker_behind}"),
        #: frames of a live stream faster than ``fps``, left out by capture (not a loss)
        "rate_limited": delta("forecaster_frames_dropped_total{rate_limited}"),
        #: share of the scored frames that were in an event (each one recorded into a clip)
        "in_event": alarmed / max(1, sum(scored.values())),
        "latency_p50_ms": float(np.percentile(lat, 50)),
        "latency_p99_ms": float(np.percentile(lat, 99)),
        "cpu_cores_by_role": {role: (final_cpu.get(role, 0.0) - base_cpu.get(role, 0.0)) / span
                              for role in final_cpu},
    }


def format_video_cameras(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    first = rows[0]
    how = "over RTSP" if first["rtsp"] else "looped"
    nice = first.get("capture_nice")
    lines = [
        f"real cameras: {Path(first['video']).name} {how}, {first['fps_per_camera']:g} fps each, "
        f"default scorer, recording on"
        + ("" if nice is None else f", capture.nice = {nice}")
        + ("" if first.get("cameras_per_process") is None
           else f", capture.cameras_per_process = {first['cameras_per_process']}")
        + ("" if first.get("model") is None else f", model {Path(first['model']).name}"),
        f"{'cameras':>8}{'scored/s':>10}{'of':>6}{'slowest/s':>11}{'x mean':>8}{'dropped':>9}"
        f"{'p50':>9}{'p99':>10}{'in event':>10}  CPU cores by role",
    ]
    for row in rows:
        cpu = ", ".join(f"{role} {cores:.2f}" for role, cores in
                        sorted(row["cpu_cores_by_role"].items(), key=lambda item: -item[1]))
        lines.append(
            f"{row['cameras']:>8}{row['scored_per_s']:>10.1f}{row['offered_per_s']:>6.0f}"
            f"{row['slowest_camera_per_s']:>11.2f}{row['slowest_over_mean']:>8.2f}"
            f"{row['dropped']:>9.0f}{row['latency_p50_ms']:>7.0f}ms{row['latency_p99_ms']:>8.0f}ms"
            f"{row.get('in_event', math.nan):>10.0%}  {cpu}"
        )
    return lines


__all__ = ["bench_video_cameras", "format_video_cameras", "video_config"]
