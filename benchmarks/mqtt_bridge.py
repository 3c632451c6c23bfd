"""What the MQTT bridge costs the worker: the broker up, hung, and gone.

    python benchmarks/mqtt_bridge.py [--fps 25] [--seconds 15] [--rounds 2]

One daemon with ``[mqtt]`` on, on a paced 64x64 synthetic camera with frequent anomalies
(so events, states and snapshots flow), and a real mosquitto on a random port. Periods
alternate, each ``--seconds`` long: the broker up; the broker hung (SIGSTOP: its
connection stays open and nothing answers); the broker gone (killed, then started again
for the next round). Per period: the worker's CPU time (``/proc``) per frame it processed,
its model time per frame (its own histogram, from ``/metrics``), frames dropped because
the worker was behind, the bridge process's CPU, and the MQTT link's state at the end.

If the bridge could slow the worker, the hung and gone periods would show it: more CPU per
tick, or frames dropped. Prints a JSON object, then one line per case.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forecaster.bench.daemon import _children, _cpu_s, _free_port, _scrape  # noqa: E402
from forecaster.bench.daemon_process import Daemon, config_text, wait_for  # noqa: E402

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class Broker:
    """mosquitto on 127.0.0.1:``port``, anonymous, no persistence."""

    def __init__(self, folder: Path) -> None:
        self.port = _free_port()
        self.config = folder / "mosquitto.conf"
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                               f"persistence false\nuser {getpass.getuser()}\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["nice", "-n", "10", MOSQUITTO, "-c", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def accepting() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                return False

        wait_for(accepting, 15, "mosquitto")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)


def link_state(metrics: dict[str, Any], port: int) -> str:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    for state in ("up", "down", "refused"):
        if f'forecaster_mqtt_link{{state="{state}"}} 1.0' in text:
            return state
    return "?"


def measure(case: str, worker: int, bridge: int, metrics_port: int,
            seconds: float) -> dict[str, Any]:
    before = _scrape(metrics_port)
    cpu0, bridge0, began = _cpu_s(worker), _cpu_s(bridge), time.monotonic()
    time.sleep(seconds)
    after = _scrape(metrics_port)
    elapsed = time.monotonic() - began

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    frames = delta("forecaster_frames_processed_total")
    return {
        "case": case,
        "seconds": elapsed,
        "frames": frames,
        "dropped_worker_behind": delta("forecaster_frames_dropped_total{worker_behind}"),
        "worker_cpu_s": _cpu_s(worker) - cpu0,
        "model_s": delta("forecaster_inference_duration_seconds_sum"),
        "bridge_cpu_s": _cpu_s(bridge) - bridge0,
        "mqtt_published": delta("forecaster_mqtt_messages_published_total"),
        "mqtt_events_dropped": delta("forecaster_mqtt_events_dropped_total"),
        "link_at_end": link_state(after, metrics_port),
    }


def bench(fps: float, seconds: float, rounds: int) -> dict[str, Any]:
    metrics_port = _free_port()
    source = f"synthetic:?fps={fps:g}&width=64&height=64&seed=1&anomaly_rate=0.05"
    periods: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(Path(tmp))
        broker.start()
        sections: dict[str, dict[str, Any]] = {
            "worker": {"startup_timeout_s": 600.0},
            "metrics": {"enabled": True, "port": metrics_port},
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": broker.port},
            "recording": {"dir": str(Path(tmp) / "events"), "post_s": 0.5},
        }
        config = config_text(f"tcp://127.0.0.1:{_free_port()}", [("bench", source)], sections)
        try:
            with Daemon(Path(tmp), config, env={"PYTHONPATH": str(ROOT)}) as daemon:
                daemon.wait_log(r"serving 1 camera", timeout=600)

                def children() -> dict[int, str] | None:
                    found = _children(daemon.pid)
                    return found if "fc-mqtt" in found.values() else None

                names = wait_for(children, 60, "the bridge's process")
                worker = next(pid for pid, name in names.items() if name == "fc-worker")
                bridge = next(pid for pid, name in names.items() if name == "fc-mqtt")
                wait_for(lambda: _scrape(metrics_port).get(
                    "forecaster_frames_processed_total", 0) > 2 * fps, 120, "frames to flow")
                for _ in range(rounds):
                    wait_for(lambda: link_state({}, metrics_port) == "up", 90, "the link up")
                    periods.append(measure("up", worker, bridge, metrics_port, seconds))
                    broker.signal(signal.SIGSTOP)
                    periods.append(measure("hung", worker, bridge, metrics_port, seconds))
                    broker.kill()
                    periods.append(measure("gone", worker, bridge, metrics_port, seconds))
                    broker.start()
                daemon.stop(timeout=60)
        finally:
            broker.kill()
    result: dict[str, Any] = {"source_fps": fps, "seconds": seconds, "rounds": rounds,
                              "cpus": os.cpu_count(), "periods": periods}
    for case in ("up", "hung", "gone"):
        rows = [p for p in periods if p["case"] == case]
        frames = sum(p["frames"] for p in rows)
        result[case] = {
            "frames": frames,
            "dropped_worker_behind": sum(p["dropped_worker_behind"] for p in rows),
            "worker_cpu_ms_per_tick": 1000 * sum(p["worker_cpu_s"] for p in rows) / frames
            if frames else None,
            "model_ms_per_tick": 1000 * sum(p["model_s"] for p in rows) / frames
            if frames else None,
            "bridge_cpu_percent": 100 * sum(p["bridge_cpu_s"] for p in rows)
            / sum(p["seconds"] for p in rows),
            "frames_per_s": frames / sum(p["seconds"] for p in rows),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    result = bench(args.fps, args.seconds, args.rounds)
    print(json.dumps(result, indent=2))
    for case in ("up", "hung", "gone"):
        row = result[case]
        print(f"broker {case:4}: worker CPU {row['worker_cpu_ms_per_tick']:.2f} ms/tick, model "
              f"{row['model_ms_per_tick']:.2f} ms/tick, {row['frames_per_s']:.1f} frames/s, "
              f"{row['dropped_worker_behind']:.0f} dropped (worker behind), bridge CPU "
              f"{row['bridge_cpu_percent']:.1f}%")


if __name__ == "__main__":
    main()
