"""Where the CPU goes when one camera's frames come faster than the worker runs them.

    python benchmarks/overload_cpu.py [--rate FPS ...] [--frames N] [--rounds R]

Runs the daemon rows of ``forecaster bench --daemon-fps`` (one synthetic camera on the
160x120 scene the bundled model was calibrated on, ``scorer.mode = "global"``) at each
rate, R rounds in turn, and while each runs samples the CPU time of the daemon's processes
from ``/proc`` over a window of ``--window`` seconds starting ``--delay`` seconds in. Per
row: frames scored and frames run per second, the share of the frames run that were scored
(the rest bring the state up to date after a gap), and the cores each process used, by
its name (``/proc/PID/comm``), the bench's own process (its subscriber, which receives
and decodes every message) among them. Linux only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from forecaster.bench.daemon import (  # noqa: E402
    CALIBRATED_SCENE,
    SCORER_MODE,
    _children,
    _cpu_s,
    bench_daemon,
)


def _descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid`` and its name (``/proc/PID/comm``)."""
    found = _children(pid)
    for child in list(found):
        found.update(_descendants(child))
    return found


def row(rate: float, frames: int, delay: float, window: float) -> dict[str, Any]:
    result: dict[str, Any] = {}

    def run() -> None:
        result["row"] = bench_daemon([rate], frames, CALIBRATED_SCENE)[0]

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(delay)
    names = {os.getpid(): "bench (subscriber)", **_descendants(os.getpid())}
    before: dict[int, float] = {}
    for pid in names:
        with contextlib.suppress(OSError):  # gone meanwhile
            before[pid] = _cpu_s(pid)
    began = time.monotonic()
    time.sleep(window)
    cores: dict[str, float] = {}
    elapsed = time.monotonic() - began
    for pid, start in before.items():
        try:
            used = _cpu_s(pid) - start
        except OSError:  # gone before the window ended (the row finished early)
            continue
        cores[names[pid]] = cores.get(names[pid], 0.0) + used / elapsed
    thread.join()
    return {**result["row"], "cores": cores}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, action="append",
                        help="source frames per second (repeatable; default 850 and 1700)")
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--delay", type=float, default=5.0)
    parser.add_argument("--window", type=float, default=5.0)
    args = parser.parse_args()
    rates = args.rate or [850.0, 1700.0]
    SCORER_MODE["mode"] = "global"
    for round_ in range(1, args.rounds + 1):
        for rate in rates:
            got = row(rate, args.frames, args.delay, args.window)
            scored, run = got["scored_per_s"], got["processed_per_s"]
            share = scored / run if run else 0.0
            cores = ", ".join(f"{name} {value:.2f}" for name, value in
                              sorted(got["cores"].items(), key=lambda i: -i[1]) if value >= 0.01)
            print(f"round {round_}, {rate:g} fps: {scored:.0f} scored/s, {run:.0f} run/s "
                  f"(share scored {share:.2f}); cores: {cores or 'none sampled'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
