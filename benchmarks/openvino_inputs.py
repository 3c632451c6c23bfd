"""OpenVINO's one-frame step with its inputs copied into the request against read in place.

    python benchmarks/openvino_inputs.py [--calls N] [--rounds R] [--batch B]

The bundled model's one-frame step on OpenVINO (converted into the runtime cache, as the
worker does, when not there yet), called N times per round with random frames and states,
``share_inputs`` off then on, in R alternating rounds: wall and CPU time per call of each,
and the largest difference between their outputs. Needs the ``openvino`` extra.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from forecaster.detection.engine import load  # noqa: E402
from forecaster.model.artifact import bundled_model_path  # noqa: E402
from forecaster.model.lean import lean_runner  # noqa: E402
from forecaster.model.ticks import OpenVINOTick, converted_path, installed  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    if not installed("openvino"):
        print("openvino is not installed (pip install '.[openvino]')", file=sys.stderr)
        return 2
    model = bundled_model_path()
    path = converted_path(model, "openvino")
    if not path.is_file():  # convert it as the worker does
        loaded = load(model, runtime="tensorflow")
        lean_runner(loaded.runner, model, "openvino", loaded.device)
    tick = OpenVINOTick(path)
    request = tick._request(args.batch)
    rng = np.random.default_rng(0)
    inputs = {}
    for port in tick._model.inputs:
        dims = [int(d.get_length()) for d in list(port.get_partial_shape())[1:]]
        inputs[port.get_any_name()] = rng.random((args.batch, *dims), dtype=np.float32)

    def call(share: bool) -> list[np.ndarray]:
        request.infer(inputs, share_inputs=share)
        return [request.get_output_tensor(i).data.copy() for i in range(tick._outputs)]

    wall = {False: 0.0, True: 0.0}
    cpu = {False: 0.0, True: 0.0}
    for share in (False, True):
        for _ in range(20):
            call(share)
    for _ in range(args.rounds):
        for share in (False, True):
            began, began_cpu = time.perf_counter(), time.process_time()
            for _ in range(args.calls):
                call(share)
            wall[share] += time.perf_counter() - began
            cpu[share] += time.process_time() - began_cpu
    difference = max(float(np.abs(a - b).max())
                     for a, b in zip(call(False), call(True), strict=True))
    calls = args.calls * args.rounds
    for share, label in ((False, "inputs copied"), (True, "inputs in place")):
        print(f"{label:16s} wall {1000 * wall[share] / calls:.3f} ms  "
              f"CPU {1000 * cpu[share] / calls:.3f} ms per call (batch {args.batch})")
    print(f"copied / in place (wall): {wall[False] / wall[True]:.2f}x; "
          f"largest output difference {difference:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
