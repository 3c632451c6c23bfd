"""The live page's cost to the worker: ``forecaster bench --web``.

One daemon with its live page, on ``cameras`` paced synthetic cameras (640x360: each tile
shows the camera's own picture). Periods with no viewer and with ``viewers`` pages open
alternate (0, N, 0, N, ...), so that the machine's drift falls on both alike. A viewer is
a real WebSocket client of ``/feed`` that says what the page says (the tiles of every
camera, no detail view open), takes every message and acknowledges every image, as the
page's script does. Per period: the worker's CPU time (``/proc``) per frame it processed,
its model time per frame (its own histogram, from ``/metrics``), the CPU of the web
process and of the capture processes (which encode the pictures while a page is open),
and the tiles each viewer received.
"""

from __future__ import annotations

import asyncio
import json
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from forecaster.bench.daemon import _children, _cpu_s, _free_port, _scrape
from forecaster.bench.daemon_process import Daemon, config_text, wait_for


class Viewers:
    """``count`` WebSocket clients of the page's feed, in a thread of their own."""

    def __init__(self, url: str, count: int) -> None:
        self.url = url
        self.count = count
        self.images = [0] * count
        self.image_bytes = [0] * count
        self.texts = [0] * count
        self._stop = threading.Event()
        self._connected = threading.Semaphore(0)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()),
                                        name="bench-viewers", daemon=True)

    async def _viewer(self, index: int) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session, session.ws_connect(self.url) as ws:
            self._connected.release()
            while not self._stop.is_set():
                try:
                    message = await ws.receive(timeout=0.2)
                except asyncio.TimeoutError:
                    continue
                if message.type == aiohttp.WSMsgType.BINARY:
                    (length,) = struct.unpack(">I", message.data[:4])
                    header = json.loads(message.data[4:4 + length])
                    self.images[index] += 1
                    self.image_bytes[index] += len(message.data)
                    await ws.send_json({"ack": header.get("ack", header["camera"])})
                elif message.type == aiohttp.WSMsgType.TEXT:
                    self.texts[index] += 1
                    if json.loads(message.data).get("type") == "hello":
                        await ws.send_json({"view": {"tiles": True, "detail": None}})
                else:
                    break

    async def _main(self) -> None:
        await asyncio.gather(*(self._viewer(i) for i in range(self.count)))

    def __enter__(self) -> Viewers:
        self._thread.start()
        for _ in range(self.count):
            if not self._connected.acquire(timeout=30):
                raise TimeoutError(f"a viewer could not connect to {self.url}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def bench_web(viewers: int = 3, fps: float = 5.0, seconds: float = 20.0,
              rounds: int = 3, cameras: int = 9) -> dict[str, Any]:
    """The worker's cost per tick with no viewer and with ``viewers`` pages open."""
    port, metrics_port = _free_port(), _free_port()
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    sources = [(f"cam{i}", f"synthetic:?fps={fps:g}&width=640&height=360&anomaly_rate=0.01"
                f"&seed={i}") for i in range(cameras)]
    sections: dict[str, dict[str, Any]] = {"publish": {"sndhwm": 100000}, "worker": {"startup_timeout_s": 600.0},
                "metrics": {"enabled": True, "port": metrics_port},
                "web": {"enabled": True, "port": port}}
    periods: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        config = config_text(endpoint, sources, sections, log_level="info")
        with Daemon(Path(tmp), config) as daemon:
            daemon.wait_log(rf"serving {cameras} camera", timeout=600)
            def children() -> dict[int, str] | None:
                found = _children(daemon.pid)
                return found if "fc-web" in found.values() else None

            names = wait_for(children, 30, "the web process")
            worker = next(pid for pid, name in names.items() if name == "fc-worker")
            web = next(pid for pid, name in names.items() if name == "fc-web")
            captures = [pid for pid, name in names.items() if name.startswith("fc-cap")]
            wait_for(lambda: _scrape(metrics_port).get("forecaster_frames_processed_total", 0)
                     > 2 * fps * cameras, 120, "frames to flow")
            for _ in range(rounds):
                for count in (0, viewers):
                    periods.append(_period(daemon, worker, web, captures, metrics_port,
                                           f"ws://127.0.0.1:{port}/feed", count, seconds))
            daemon.stop(timeout=60)
    result: dict[str, Any] = {"viewers": viewers, "cameras": cameras, "source_fps": fps,
                              "seconds": seconds, "rounds": rounds, "periods": periods}
    for count in (0, viewers):
        rows = [p for p in periods if p["viewers"] == count]
        frames = sum(p["frames"] for p in rows)
        summary = {
            "frames": frames,
            "worker_cpu_ms_per_tick": 1000 * sum(p["worker_cpu_s"] for p in rows) / frames
            if frames else None,
            "model_ms_per_tick": 1000 * sum(p["model_s"] for p in rows) / frames
            if frames else None,
            "web_cpu_percent": 100 * sum(p["web_cpu_s"] for p in rows)
            / sum(p["seconds"] for p in rows),
            "capture_cpu_percent": 100 * sum(p["capture_cpu_s"] for p in rows)
            / sum(p["seconds"] for p in rows),
            "image_sets_per_viewer_per_s": sum(p["image_sets_per_viewer_per_s"] for p in rows)
            / len(rows),
        }
        result[f"with_{count}"] = summary
    base = result["with_0"]["worker_cpu_ms_per_tick"]
    loaded = result[f"with_{viewers}"]["worker_cpu_ms_per_tick"]
    result["ratio"] = loaded / base if base and loaded else None
    return result


def _period(daemon: Daemon, worker: int, web: int, captures: list[int], metrics_port: int,
            url: str, count: int, seconds: float) -> dict[str, Any]:
    def measure(viewing: Viewers | None) -> dict[str, Any]:
        time.sleep(2.0)  # settle: subscriptions made, first images sent
        before = _scrape(metrics_port)
        cpu0, web0, began = _cpu_s(worker), _cpu_s(web), time.monotonic()
        capture0 = sum(_cpu_s(pid) for pid in captures)
        images0 = sum(viewing.images) if viewing else 0
        time.sleep(seconds)
        after = _scrape(metrics_port)
        elapsed = time.monotonic() - began
        images = (sum(viewing.images) - images0) if viewing else 0
        return {
            "viewers": count,
            "seconds": elapsed,
            "frames": after["forecaster_frames_processed_total"]
            - before["forecaster_frames_processed_total"],
            "worker_cpu_s": _cpu_s(worker) - cpu0,
            "model_s": after["forecaster_inference_duration_seconds_sum"]
            - before["forecaster_inference_duration_seconds_sum"],
            "web_cpu_s": _cpu_s(web) - web0,
            "capture_cpu_s": sum(_cpu_s(pid) for pid in captures) - capture0,
            "image_sets_per_viewer_per_s": images / count / elapsed if count else 0.0,
        }

    if daemon.proc.poll() is not None:
        raise RuntimeError(f"the daemon exited ({daemon.proc.returncode}): {daemon.log()[-500:]}")
    if not count:
        return measure(None)
    with Viewers(url, count) as viewing:
        return measure(viewing)


def format_web(row: dict[str, Any]) -> list[str]:
    n = row["viewers"]
    idle, busy = row["with_0"], row[f"with_{n}"]
    ratio = row["ratio"]
    return [
        f"live page, {row.get('cameras', 1)} cameras at {row['source_fps']:g} fps "
        f"({row['rounds']} x {row['seconds']:g} s each): "
        f"worker CPU per tick {idle['worker_cpu_ms_per_tick']:.2f} ms with no viewer, "
        f"{busy['worker_cpu_ms_per_tick']:.2f} ms with {n}"
        + (f" ({ratio:.2f}x)" if ratio else ""),
        f"  model per tick {idle['model_ms_per_tick']:.2f} / {busy['model_ms_per_tick']:.2f} ms; "
        f"web process CPU {idle['web_cpu_percent']:.1f}% / {busy['web_cpu_percent']:.1f}%; "
        f"capture processes CPU {idle.get('capture_cpu_percent', 0):.1f}% / "
        f"{busy.get('capture_cpu_percent', 0):.1f}%; "
        f"tiles per viewer {busy['image_sets_per_viewer_per_s']:.1f}/s",
    ]
