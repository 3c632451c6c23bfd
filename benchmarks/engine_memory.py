"""Memory of the inference engine alone over many ticks, in one process.

    python benchmarks/engine_memory.py [--ticks 120000] [--every 10000] [--model M]

Feeds the daemon's :class:`~forecaster.detection.engine.InferenceEngine` (the bundled model unless
``--model``, the default scorer) one synthetic 64x64 frame per call, as fast as it goes,
and prints every ``--every`` ticks the process's resident memory (``VmRSS``) and the
Python heap traced by ``tracemalloc`` (which slows the run by about a third). With
``--top N`` it also prints the N allocation sites whose traced size grew most between the
first report after warm-up and the last. ``forecaster bench --soak-ticks N`` measures the
whole daemon (supervisor, capture and worker processes); this one tells whether growth
seen there comes from the engine's own Python code.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--ticks", type=int, default=120_000)
    parser.add_argument("--every", type=int, default=10_000)
    parser.add_argument("--model", help="model file (default: the bundled model)")
    parser.add_argument("--top", type=int, default=0, help="print the N fastest-growing sites")
    args = parser.parse_args()

    from forecaster.config import ScorerConfig
    from forecaster.detection.engine import load, model_path
    from forecaster.sources.preprocess import to_gray_resized
    from forecaster.sources.readers import open_source

    model = load(model_path(args.model, None))
    engine = model.engine(ScorerConfig())
    engine.add_camera("soak")
    tracemalloc.start(8 if args.top else 1)
    first: tracemalloc.Snapshot | None = None
    last: tracemalloc.Snapshot | None = None
    ticks: list[int] = []
    rss: list[float] = []
    started = time.perf_counter()
    with open_source("synthetic:?fps=0&width=64&height=64") as source:
        for tick in range(args.ticks + 1):
            frame = source.read()
            assert frame is not None
            image = to_gray_resized(frame.image, model.size)[None]
            engine.process("soak", image, [tick], [frame.ts])
            if tick % args.every == 0:
                gc.collect()
                heap, _ = tracemalloc.get_traced_memory()
                ticks.append(tick)
                rss.append(rss_mb())
                print(f"{tick:>8} ticks {time.perf_counter() - started:7.0f} s  rss {rss[-1]:8.1f} MB"
                      f"  python heap {heap / 1e6:6.2f} MB", flush=True)
                if args.top and tick == args.every:
                    first = tracemalloc.take_snapshot()
                elif args.top and tick + args.every > args.ticks:
                    last = tracemalloc.take_snapshot()
    if len(ticks) >= 3:
        warm = len(ticks) // 10 + 1  # leave out the first tenth
        slope = np.polyfit(ticks[warm:], rss[warm:], 1)[0] * 100_000 if len(ticks) - warm >= 2 else 0.0
        print(f"resident memory after warm-up: {rss[warm]:.1f} -> {rss[-1]:.1f} MB, "
              f"slope {slope:+.2f} MB per 100,000 ticks")
    if first is not None and last is not None:
        for stat in last.compare_to(first, "traceback")[: args.top]:
            print(stat)
            for line in stat.traceback.format()[-6:]:
                print("   ", line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
