"""What an event clip costs per frame in each encoder: libx264's presets and OpenCV's mp4v.

    python benchmarks/clip_presets.py [--video ../shared/data/vtest.avi] [--frames 150]

Reads the video's first frames scaled to 640 pixels wide (the clips' default
``max_width``), then writes them as a clip with each encoder of
:mod:`forecaster.recording.h264`, twice in alternating rounds, and prints the CPU time per
frame (the lower of the two) and the bytes per frame of each.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--video", default=str(Path(__file__).resolve().parents[1].parent
                                                / "shared" / "data" / "vtest.avi"))
    parser.add_argument("--frames", type=int, default=150)
    args = parser.parse_args()

    from forecaster.recording import h264

    capture = cv2.VideoCapture(args.video)
    images = []
    while len(images) < args.frames:
        ok, image = capture.read()
        if not ok:
            break
        height, width = image.shape[:2]
        size = h264.even_size(640, round(height * 640 / width))
        images.append(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
    capture.release()
    if not images:
        print(f"no frame read from {args.video}")
        return 1
    size = (images[0].shape[1], images[0].shape[0])
    encoders = ["ultrafast", "superfast", "veryfast", "mp4v"]
    best: dict[str, float] = {}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="clip-presets-") as temp:
        for _ in range(2):
            for name in encoders:
                path = Path(temp) / f"{name}.mp4"
                started = time.process_time()
                if name == "mp4v":
                    writer: h264.VideoWriter = h264.Mp4vWriter(path, 25.0, size)
                else:
                    writer = h264.H264Writer(path, 25.0, size, preset=name)
                for image in images:
                    writer.write(image)
                writer.close()
                cpu = (time.process_time() - started) / len(images) * 1000.0
                best[name] = min(best.get(name, cpu), cpu)
                sizes[name] = path.stat().st_size
    print(f"{len(images)} frames of {args.video} at {size[0]}x{size[1]}:")
    for name in encoders:
        label = name if name == "mp4v" else f"libx264 {name}"
        print(f"  {label:<18} {best[name]:5.2f} ms CPU per frame, "
              f"{sizes[name] / len(images) / 1024:5.1f} KB per frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
