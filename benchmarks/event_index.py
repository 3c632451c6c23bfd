"""What the event index costs: a row written per event, the reconcile at start, the API's
queries.

    python benchmarks/event_index.py [--events 10000] [--cameras 9]

Fills an index (in a temporary folder) with ``--events`` finished events as the clip
writer does (a row at the clip's start, updated once its files are finished), gives each
its three files, then times the reconcile at start over that folder (nothing to change,
then with 1% of the events left unfinished by a crash), a page of 50 events (newest, and
one camera's from the middle), the cameras' summary, and acknowledging a camera's events.
Prints the median of 5 rounds where it repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def timed(call: Callable[[], object], rounds: int = 5) -> float:
    """Median seconds of ``rounds`` calls."""
    spans = []
    for _ in range(rounds):
        began = time.perf_counter()
        call()
        spans.append(time.perf_counter() - began)
    return statistics.median(spans)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--cameras", type=int, default=9)
    args = parser.parse_args()

    from forecaster.recording.event_board import event_stem
    from forecaster.recording.event_index import EventIndex, reconcile

    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        index = EventIndex(folder)
        stems = []
        began = time.perf_counter()
        for n in range(args.events):
            camera = f"cam{n % args.cameras}"
            ts = 1.7e9 + 10.0 * n
            stem = event_stem(camera, n, ts)
            stems.append(stem)
            index.opened(camera, stem, n, ts, 4.0)
            index.finished(stem, {"camera": camera, "start_ts": ts, "end_ts": ts + 1.0,
                                  "start_seq": n, "end_seq": n + 25, "peak_score": 5.0,
                                  "clip": f"{stem}.mp4", "snapshot": f"{stem}.jpg",
                                  "first_ts": ts - 5.0, "last_ts": ts + 3.0}, "ready")
        write = (time.perf_counter() - began) / args.events
        for stem in stems:
            (folder / stem).parent.mkdir(exist_ok=True)
            for suffix in (".mp4", ".jpg"):
                (folder / f"{stem}{suffix}").write_bytes(b"x")
            (folder / f"{stem}.json").write_text(json.dumps(
                {"camera": stem.split("/")[0], "clip": f"{stem}.mp4",
                 "snapshot": f"{stem}.jpg"}))
        settled = timed(lambda: reconcile(folder, index))
        crashed = stems[:: 100]
        for stem in crashed:  # open at a crash: a row 'recording', a clip without sidecar
            index.opened(stem.split("/")[0], stem, 0, 0.0)
            (folder / f"{stem}.json").unlink()
            (folder / f"{stem}.jpg").unlink()
        began = time.perf_counter()
        result = reconcile(folder, index)
        after_crash = time.perf_counter() - began
        assert result.interrupted == len(crashed), result
        newest = timed(lambda: index.page(limit=50))
        middle = index.page(limit=1, camera="cam1").events[0]["id"] // 2
        paged = timed(lambda: index.page(limit=50, camera="cam1", before=middle))
        summary = timed(index.summary)
        ack = timed(lambda: index.ack(by="bench", camera="cam2"), rounds=1)
        index.close()

    print(f"events in the index: {args.events} ({args.cameras} cameras)")
    print(f"row written per event (start, then files finished): {write * 1000:.2f} ms")
    print(f"reconcile at start, nothing to change: {settled * 1000:.0f} ms")
    print(f"reconcile after a crash ({len(crashed)} events unfinished): "
          f"{after_crash * 1000:.0f} ms")
    print(f"page of 50, newest: {newest * 1000:.2f} ms")
    print(f"page of 50, one camera, from the middle: {paged * 1000:.2f} ms")
    print(f"cameras' summary: {summary * 1000:.2f} ms")
    print(f"acknowledge a camera's {args.events // args.cameras} events: {ack * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
