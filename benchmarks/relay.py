"""What ``forecaster relay`` adds: latency at a daemon's rate, and messages per second flat out.

    python benchmarks/relay.py [--daemons 3] [--rate 25] [--seconds 10]

Stand-ins for the daemons (one process each, no model) publish on loopback what a daemon
publishes per frame of one camera: a ``score/<cam>`` message (2 parts, ~200 bytes) and a
``forecast/<cam>`` message (3 parts, a 64x64 frame), each header carrying the time it was
sent (``time.time_ns()``). A real relay (``python -m forecaster relay``, a subprocess)
connects to all of them.

1. Latency: every stand-in publishes ``--rate`` frames per second for ``--seconds``; one
   subscriber connected to the stand-ins directly and one connected through the relay, in
   one receiving loop, time every message from send to receipt. The relay's cost is the
   difference between the two.
2. Throughput: every stand-in publishes as fast as it can for ``--seconds``; the subscriber
   of the relay counts the messages that arrive within those seconds (parsing nothing).
   ZeroMQ drops at a full queue (1000 messages per queue), so the report gives what was
   sent and what arrived; a Python subscriber may well be the slowest part.

All processes run at the lowest CPU priority (nice 19), to stay out of the way of other
work on the machine; on a busy machine the numbers are lower bounds.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import zmq

ROOT = Path(__file__).resolve().parents[1]
FRAME = bytes(64 * 64)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def publisher(endpoint: str, camera: str, rate: float, start_at: float, stop_at: float,
              sent: mp.Queue) -> None:
    """Publish score + forecast per frame at ``rate`` (0: flat out) until ``stop_at``."""
    os.nice(19)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    score_topic, forecast_topic = f"score/{camera}".encode(), f"forecast/{camera}".encode()
    count = seq = 0
    start_ns = int(start_at * 1e9)
    interval = 1.0 / rate if rate else 0.0
    next_at = time.time()
    while (now := time.time()) < stop_at:
        if interval:
            if now < next_at:
                time.sleep(next_at - now)
            next_at += interval
        ns = time.time_ns()
        base = {"v": 1, "camera": camera, "seq": seq, "ts": ns / 1e9, "sent_ns": ns}
        for parts in ([score_topic, json.dumps({**base, "score": 0.1}).encode()],
                      [forecast_topic, json.dumps({**base, "target_seq": seq + 1,
                                                   "shape": [64, 64], "dtype": "uint8"}
                                                  ).encode(), FRAME]):
            try:
                sock.send_multipart(parts, zmq.NOBLOCK)
                if ns >= start_ns:
                    count += 1
            except zmq.Again:
                pass
        seq += 1
    sent.put(count)
    sock.close(linger=0)
    ctx.term()


def _sub(ctx: zmq.Context, endpoints: list[str]) -> zmq.Socket:
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    for prefix in (b"score/", b"forecast/"):
        sock.setsockopt(zmq.SUBSCRIBE, prefix)
    for endpoint in endpoints:
        sock.connect(endpoint)
    return sock


def run_phase(upstreams: list[str], bind: str, rate: float, seconds: float,
              direct: bool) -> dict[str, object]:
    """Start the stand-ins, wait until every camera arrives, measure for ``seconds``."""
    spawn = mp.get_context("spawn")
    sent: mp.Queue = spawn.Queue()
    warmup = 4.0
    t0 = time.time()
    start_at, stop_at = t0 + warmup, t0 + warmup + seconds
    procs = [spawn.Process(target=publisher, args=(e, f"cam{i}", rate, start_at, stop_at, sent))
             for i, e in enumerate(upstreams)]
    for proc in procs:
        proc.start()
    ctx = zmq.Context()
    subs = {"relay": _sub(ctx, [bind])}
    if direct:
        subs["direct"] = _sub(ctx, upstreams)
    poller = zmq.Poller()
    for sock in subs.values():
        poller.register(sock, zmq.POLLIN)
    names = {sock: name for name, sock in subs.items()}
    latencies: dict[str, list[float]] = {name: [] for name in subs}
    received = dict.fromkeys(subs, 0)
    start_ns, stop_ns = int(start_at * 1e9), int(stop_at * 1e9)
    while time.time() < stop_at + 1.0:
        for sock, _ in poller.poll(100):
            while True:
                try:
                    parts = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                now_ns = time.time_ns()
                name = names[sock]
                if not direct:  # throughput: count what arrives in the window, parse nothing
                    received[name] += start_ns <= now_ns < stop_ns
                    continue
                sent_ns = json.loads(parts[1])["sent_ns"]
                if sent_ns >= start_ns:
                    received[name] += 1
                    latencies[name].append((now_ns - sent_ns) / 1e6)
    total_sent = sum(sent.get(timeout=30) for _ in procs)
    for proc in procs:
        proc.join(timeout=10)
    for sock in subs.values():
        sock.close(linger=0)
    ctx.term()
    result: dict[str, object] = {"sent": total_sent, "sent_per_s": total_sent / seconds}
    for name in subs:
        values = sorted(latencies[name])
        result[name] = {
            "received": received[name], "received_per_s": received[name] / seconds,
            "median_ms": statistics.median(values) if values else None,
            "p99_ms": values[int(0.99 * (len(values) - 1))] if values else None,
        }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--daemons", type=int, default=3)
    parser.add_argument("--rate", type=float, default=25.0,
                        help="frames per second per stand-in in the latency phase")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    os.nice(19)
    upstreams = [f"tcp://127.0.0.1:{free_port()}" for _ in range(args.daemons)]
    bind = f"tcp://127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "forecaster", "relay", "--bind", bind,
               "--log-level", "warning"]
    for endpoint in upstreams:
        command += ["--upstream", endpoint]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    relay = subprocess.Popen(["nice", "-n", "19", *command], env=env)
    try:
        latency = run_phase(upstreams, bind, args.rate, args.seconds, direct=True)
        throughput = run_phase(upstreams, bind, 0.0, args.seconds, direct=False)
    finally:
        relay.send_signal(signal.SIGTERM)
        code = relay.wait(timeout=10)
    report = {"daemons": args.daemons, "rate": args.rate, "seconds": args.seconds,
              "cpus": os.cpu_count(), "load_average": os.getloadavg(),
              "latency": latency, "throughput": throughput, "relay_exit": code}
    print(json.dumps(report, indent=2))
    relayed, direct = latency["relay"], latency["direct"]
    assert isinstance(relayed, dict) and isinstance(direct, dict)
    if relayed["median_ms"] is not None and direct["median_ms"] is not None:
        print(f"latency at {args.rate:g} frames/s x {args.daemons} (2 messages a frame): "
              f"direct median {direct['median_ms']:.2f} ms (p99 {direct['p99_ms']:.2f}), "
              f"through the relay {relayed['median_ms']:.2f} ms (p99 {relayed['p99_ms']:.2f})")
    flat = throughput["relay"]
    assert isinstance(flat, dict)
    print(f"flat out: {throughput['sent_per_s']:.0f} messages/s sent by {args.daemons} "
          f"stand-ins, {flat['received_per_s']:.0f}/s received through the relay")
    return 0


if __name__ == "__main__":
    sys.exit(main())
