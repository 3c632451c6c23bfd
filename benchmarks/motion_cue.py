"""What the fused scorer's motion cue costs a capture process, per frame.

    python benchmarks/motion_cue.py [--frames N] [--cue-height ROWS]

For each source (a synthetic scene, a Ped2 video, vtest.avi when ../shared/data is there)
it decodes the frames once, then times, in alternating rounds on the same decoded frames,
what capture does per frame without the cue (gray + resize to 64x64) and with it (the same
plus :class:`forecaster.detection.flow.MotionCue`: resize to the cue size, Farneback flow, windows).
Prints ms per frame, the ratio, and the share of one core at 10 and 25 frames per second.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from forecaster.detection.flow import MotionCue, cue_size  # noqa: E402
from forecaster.detection.fused import DEFAULT_FUSED  # noqa: E402
from forecaster.sources.preprocess import to_gray, to_gray_resized  # noqa: E402
from forecaster.sources.readers import open_source  # noqa: E402

DATA = ROOT / ".." / "shared" / "data"


def decode(uri: str, frames: int) -> list[np.ndarray]:
    out = []
    with open_source(uri) as source:
        while len(out) < frames and (frame := source.read()) is not None:
            out.append(frame.image)
    return out


def per_frame_ms(images: list[np.ndarray], cue_height: int | None) -> float:
    cue = None if cue_height is None else MotionCue(cue_height)
    began = time.perf_counter()
    for image in images:  # as the capture process does
        gray = to_gray(image)
        to_gray_resized(gray, (64, 64))
        if cue is not None:
            cue(gray)
    return (time.perf_counter() - began) / len(images) * 1000.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--cue-height", type=int, default=DEFAULT_FUSED.cue_height)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    sources = {"synthetic 160x120": "synthetic:?seed=1&fps=0&frames=400"}
    if (DATA / "ped2").is_dir():
        sources["Ped2 240x360"] = str(DATA / "ped2" / "testing" / "01")
    if (DATA / "vtest.avi").is_file():
        sources["vtest.avi 1280x720"] = str(DATA / "vtest.avi")
    print(f"{'source':<20} {'cue size':>9} {'without':>9} {'with cue':>9} {'ratio':>6} "
          f"{'cue':>8} {'core@10fps':>11} {'core@25fps':>11}")
    for name, uri in sources.items():
        images = decode(uri, args.frames)
        without, with_cue = [], []
        for _ in range(args.rounds):
            without.append(per_frame_ms(images, None))
            with_cue.append(per_frame_ms(images, args.cue_height))
        base, cost = float(np.median(without)), float(np.median(with_cue))
        rows, cols = cue_size(*images[0].shape[:2], args.cue_height)
        extra = cost - base  # ms per frame; at F frames/s that is F * extra / 1000 of a core
        print(f"{name:<20} {rows:>4}x{cols:<4} {base:>7.2f}ms {cost:>7.2f}ms {cost / base:>5.1f}x "
              f"{extra:>6.2f}ms {extra:>10.1f}% {2.5 * extra:>10.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
