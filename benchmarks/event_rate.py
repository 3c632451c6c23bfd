"""How many events a minute does ``forecaster run`` make on its default camera?

    python benchmarks/event_rate.py [--seconds 300] [--source SOURCE] [--merge-gap-s S]

Starts the daemon on its built-in defaults (the default camera, or ``--source``; the live
page off, recordings in a temporary folder, a free port), subscribes, and counts the
``event`` starts over ``--seconds`` of scoring from the first score on. Prints the events
a minute, the frames scored and dropped, and the recording files written.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--source", help="the camera's source (default: the default camera)")
    parser.add_argument("--merge-gap-s", type=float, help="scorer.merge_gap_s (default: its "
                        "default)")
    args = parser.parse_args()

    from forecaster.client import Subscriber

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="event-rate-") as temp:
        folder = Path(temp)
        text = (f'[publish]\nendpoint = "{endpoint}"\n[web]\nenabled = false\n'
                f'[recording]\ndir = "{folder / "events"}"\n')
        if args.merge_gap_s is not None:
            text += f"[scorer]\nmerge_gap_s = {args.merge_gap_s}\n"
        (folder / "config.toml").write_text(text)
        command = [sys.executable, "-m", "forecaster", "run", "--config",
                   str(folder / "config.toml")]
        if args.source:
            command += ["--source", args.source]
        starts = scored = dropped = 0
        with Subscriber(endpoint, kinds=["score", "event", "status"]) as sub, \
                open(folder / "daemon.log", "w") as log:
            daemon = subprocess.Popen(command, stderr=log, env=os.environ.copy())
            began: float | None = None
            ended = 0.0
            deadline = time.monotonic() + args.seconds + 180.0
            try:
                while time.monotonic() < deadline:
                    message = sub.recv(timeout=1.0)
                    if message is None:
                        if daemon.poll() is not None:
                            print(f"the daemon ended early (exit {daemon.returncode}); its "
                                  f"log: {(folder / 'daemon.log').read_text()[-2000:]}")
                            return 1
                        continue
                    if began is None and message.kind == "score":
                        began = time.monotonic()
                    if began is None:
                        continue
                    ended = time.monotonic()
                    if ended - began > args.seconds:
                        break
                    if message.kind == "score":
                        scored += 1
                    elif message.kind == "event" and getattr(message, "state", "") == "start":
                        starts += 1
                    elif message.kind == "status":
                        dropped = int(getattr(message, "frames_dropped", 0))
            finally:
                daemon.send_signal(signal.SIGINT)
                daemon.wait(60)
        if began is None:
            print("no score within the time allowed")
            return 1
        span = max(ended - began, 1e-9)
        files = len(list((folder / "events").glob("*/*.mp4")))
        print(f"{starts} events started in {span:.0f} s of scoring: {starts / span * 60:.2f} a "
              f"minute; {scored} frames scored ({scored / span:.1f} a second), {dropped} "
              f"dropped; {files} clips written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
