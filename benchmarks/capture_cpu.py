"""What one capture process of many cameras costs in CPU, per frame and per camera.

    python benchmarks/capture_cpu.py [--cameras N] [--seconds S] [--cue-height ROWS]

Runs N synthetic 64x64 cameras at 10 fps in this process, one thread each, exactly as a
capture process of the daemon does (:class:`forecaster.daemon.capture_group.CaptureProcess`,
real rings in shared memory; no worker, so the wake-ups go nowhere), for S seconds, and
prints the frames written, the CPU time the process used (user + system) per frame, and
its share of one core. ``--cue-height 0`` leaves out the fused scorer's motion cue.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from forecaster.daemon.capture import CaptureSpec  # noqa: E402
from forecaster.daemon.capture_group import CaptureGroup, CaptureProcess  # noqa: E402
from forecaster.ipc.channels import Flag, Outbox, channel_address  # noqa: E402
from forecaster.ipc.health import Health  # noqa: E402
from forecaster.ipc.ring import FrameRing  # noqa: E402


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--cue-height", type=int, default=64,
                        help="rows of the motion cue (0: no cue, as scorer.mode = global)")
    args = parser.parse_args()
    if args.cameras < 1 or args.seconds <= 0 or args.cue_height < 0:
        parser.error("--cameras and --seconds must be positive, --cue-height at least 0")
    ctx = mp.get_context("spawn")
    rings = [FrameRing.create(f"forecaster_{os.getpid()}_bench{index}", 64, 64, slots=10)
             for index in range(args.cameras)]
    try:
        specs = tuple(
            CaptureSpec(camera=f"cam{index}", index=index, ring=ring.name, size=(64, 64),
                        source=f"synthetic:?fps=10&width=64&height=64&anomaly_rate=0"
                        f"&seed={index + 1}", cue_height=args.cue_height or None)
            for index, ring in enumerate(rings)
        )
        stop, go = Flag(ctx), Flag(ctx)
        go.set()
        control = Outbox(channel_address(str(os.getpid()), "nobody"))  # drops every message
        process = CaptureProcess(CaptureGroup(specs), channel_address(str(os.getpid()), "none"),
                                 control, stop, go, Health(args.cameras, ctx))
        thread = threading.Thread(target=process.run)
        cpu, began = _cpu_s(), time.monotonic()
        thread.start()
        time.sleep(args.seconds)
        stop.set()
        thread.join()
        cpu, wall = _cpu_s() - cpu, time.monotonic() - began
        frames = sum(ring.stats().frames_captured for ring in rings)
    finally:
        for ring in rings:
            ring.close()
            ring.unlink()
    cue = f"cue at {args.cue_height} rows" if args.cue_height else "no cue"
    print(f"{args.cameras} cameras at 10 fps ({cue}): {frames} frames in {wall:.1f} s "
          f"({frames / wall:.0f} per s), CPU {cpu:.2f} s = {100 * cpu / wall:.0f}% of a core, "
          f"{1000 * cpu / max(frames, 1):.3f} ms per frame")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
