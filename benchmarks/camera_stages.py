"""What each stage of a real camera's frame costs in CPU: decode, gray, resize, cue, clip, model.

    python benchmarks/camera_stages.py [--video vtest.avi] [--frames 200] [--rounds 3]
                                       [--substream 640x360] [--cue-variants]

Reads the first ``--frames`` frames of the video (by default ``../shared/data/vtest.avi``,
1280x720 H.264) and times each stage the daemon runs per frame, in CPU time of this
process (all threads), per frame, the median of ``--rounds`` alternating rounds:

- decoding: OpenCV's FFmpeg into BGR, then BGR-to-gray (the reader before), against PyAV's
  luma plane (the reader with recordings and the page off), with one decoder thread and
  with FFmpeg's own threads, and BGR with the luma plane (the reader when a camera's
  frames are recorded or shown, the default): FFmpeg's BGR at full size (before, then
  scaled to 640 wide by the recorder) against BGR made 640 wide from the planes (now);
- the resizes to the model's 64x64 and to the cue's 120 rows, before and now;
- the motion cue at 120 rows (resize included), the pre-roll's JPEG at 640 pixels wide
  (recording on), a clip's frame in an event (libx264 at 640x360: from the JPEG decoded
  and PyAV's conversion, before; from the frame and OpenCV's conversion, now), and the
  model's one-frame step with the default scorer;
- with ``--substream WxH``: the same frames scaled to WxH and encoded with libx264 (as a
  camera's substream, for ``detect_source``), their decoding and their cue;
- with ``--cue-variants``: the optical flow alone on the cue's frames (120 rows), as the cue
  computes it (Farneback, the default's parameters), the cue before (3 iterations) and
  cheaper candidates (fewer levels, a smaller window, OpenCV's DIS flow): their cost
  only; ``benchmarks/cue_variants.py`` compares them on detection.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _opencv_gray(path: str, count: int) -> Callable[[], None]:
    import cv2

    def run() -> None:
        capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
        for _ in range(count):
            _, image = capture.read()
            cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        capture.release()

    return run


def _pyav_luma(path: str, count: int, threads: bool, deblock: bool = False
               ) -> Callable[[], None]:
    from forecaster.sources.luma import LumaDecoder

    def run() -> None:
        decoder = LumaDecoder(path)
        if threads:  # FFmpeg's own frame threads, as many as it likes
            decoder.stream.thread_type = "AUTO"
            decoder.stream.codec_context.thread_count = 0
        if deblock:  # H.264's deblocking filter as FFmpeg's default has it (before)
            decoder.stream.codec_context.options = {}
        for _ in range(count):
            decoder.read()
        decoder.close()

    return run


def _pyav_colour(path: str, count: int, width: int | None = None) -> Callable[[], None]:
    """PyAV decoding to BGR and the luma plane (a camera whose frames are recorded or
    shown: BGR for them, at most ``width`` wide, the luma plane for the model)."""
    from forecaster.sources.luma import LumaDecoder

    def run() -> None:
        decoder = LumaDecoder(path, color=True, color_width=width)
        for _ in range(count):
            decoder.read()
        decoder.close()

    return run


def _pyav_colour_scaled(path: str, count: int) -> Callable[[], None]:
    """As :func:`_pyav_colour` at full size, then each BGR frame scaled to 640 wide."""
    from forecaster.sources.luma import LumaDecoder
    from forecaster.sources.preprocess import scaled

    def run() -> None:
        decoder = LumaDecoder(path, color=True)
        for _ in range(count):
            item = decoder.read()
            if item is not None:
                scaled(item[0], 640)
        decoder.close()

    return run


def _encode(video: str, path: str, count: int, width: int, height: int) -> None:
    """The first ``count`` frames of ``video`` scaled to ``width`` x ``height``, encoded with
    libx264 into ``path`` (25 fps)."""
    from fractions import Fraction

    import av

    with av.open(video) as source, av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index, frame in enumerate(source.decode(video=0)):
            if index == count:
                break
            small = frame.reformat(width=width, height=height, format="yuv420p")
            small.pts, small.time_base = index, Fraction(1, 25)
            out.mux(stream.encode(small))
        out.mux(stream.encode(None))


def _flow_variants(frames: list[np.ndarray]) -> dict[str, Callable[[], None]]:
    """Optical flows between consecutive ``frames``: the cue's Farneback and candidates."""
    import cv2

    from forecaster.detection.flow import FARNEBACK

    def farneback(levels: int, window: int, iterations: int) -> Callable[[], None]:
        scale, _, _, _, poly_n, poly_sigma = FARNEBACK
        farneback_flow: Any = cv2.calcOpticalFlowFarneback

        def run() -> None:
            for before, after in itertools.pairwise(frames):
                farneback_flow(before, after, None, scale, levels, window, iterations, poly_n,
                               poly_sigma, 0)

        return run

    def dis(preset: int) -> Callable[[], None]:
        flow = cv2.DISOpticalFlow.create(preset)

        def run() -> None:
            for before, after in itertools.pairwise(frames):
                flow.calc(before, after, None)

        return run

    _, levels, window, iterations, _, _ = FARNEBACK
    return {
        f"flow: Farneback {levels} levels, window {window}, {iterations} iterations (the cue's)":
            farneback(levels, window, iterations),
        "flow: Farneback 3 iterations (the cue's before)": farneback(levels, window, 3),
        "flow: Farneback 2 levels": farneback(2, window, iterations),
        "flow: Farneback 1 level": farneback(1, window, iterations),
        "flow: Farneback window 9": farneback(levels, 9, iterations),
        "flow: DIS, medium preset": dis(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM),
        "flow: DIS, fast preset": dis(cv2.DISOPTICAL_FLOW_PRESET_FAST),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", default=str(ROOT.parent / "shared" / "data" / "vtest.avi"))
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--substream", metavar="WxH", help="also time a substream this size")
    parser.add_argument("--cue-variants", action="store_true",
                        help="also time cheaper optical flows than the cue's")
    args = parser.parse_args()
    if not Path(args.video).is_file():
        parser.error(f"video not found: {args.video}")

    import cv2

    from forecaster.config import ScorerConfig
    from forecaster.detection.engine import load
    from forecaster.detection.flow import MotionCue
    from forecaster.logs import import_tensorflow_quietly
    from forecaster.model.artifact import bundled_model_path
    from forecaster.sources.luma import LumaDecoder
    from forecaster.sources.preprocess import scaled, to_gray_resized

    import_tensorflow_quietly()
    decoder = LumaDecoder(args.video)
    grays = []
    while len(grays) < args.frames and (item := decoder.read()) is not None:
        grays.append(np.array(item[0]))
    decoder.close()
    count = len(grays)
    loaded = load(bundled_model_path())
    small = [to_gray_resized(g, loaded.card.size) for g in grays]

    def resize_one_step() -> None:
        for gray in grays:
            cv2.resize(gray, (64, 64), interpolation=cv2.INTER_AREA)

    def resize_two_steps() -> None:
        for gray in grays:
            to_gray_resized(gray, (64, 64))

    def cue() -> None:
        motion = MotionCue(120)
        for gray in grays:
            motion(gray)

    def cue_resize_before() -> None:
        from forecaster.detection.flow import cue_size

        size = cue_size(grays[0].shape[0], grays[0].shape[1], 120)
        for gray in grays:
            to_gray_resized(gray, size)

    def cue_resize() -> None:
        motion = MotionCue(120)
        for gray in grays:
            motion.resize(gray)

    def jpeg() -> None:
        for gray in grays:
            cv2.imencode(".jpg", scaled(gray, 640), [cv2.IMWRITE_JPEG_QUALITY, 80])

    colour_decoder = LumaDecoder(args.video, color=True, color_width=640)
    colours = [np.array(item[0]) for _ in range(count)
               if (item := colour_decoder.read()) is not None]
    colour_decoder.close()
    jpegs = [cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])[1] for image in colours]

    def clip(from_jpeg: bool) -> Callable[[], None]:
        import av

        from forecaster.recording.h264 import DEFAULT_PRESET, X264_OPTIONS

        def run() -> None:
            path = Path(tempfile.mkdtemp()) / "clip.mp4"
            with av.open(str(path), "w") as out:
                stream = out.add_stream("libx264", rate=10)
                stream.width, stream.height = colours[0].shape[1], colours[0].shape[0]
                stream.pix_fmt = "yuv420p"
                stream.options = {**X264_OPTIONS, "preset": DEFAULT_PRESET}
                stream.codec_context.thread_count = 1
                for index, (image, data) in enumerate(zip(colours, jpegs, strict=True)):
                    if from_jpeg:  # before: the JPEG decoded, PyAV's (swscale's) conversion
                        frame = av.VideoFrame.from_ndarray(
                            cv2.imdecode(data, cv2.IMREAD_COLOR), format="bgr24")
                    else:  # now: the frame itself, OpenCV's conversion
                        frame = av.VideoFrame.from_ndarray(
                            cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), format="yuv420p")
                    frame.pts = index
                    out.mux(stream.encode(frame))
                out.mux(stream.encode(None))
            shutil.rmtree(path.parent)

        return run

    def model() -> None:
        engine = loaded.engine(ScorerConfig())
        engine.add_camera("bench")
        for t, frame in enumerate(small):
            engine.process("bench", frame[None], [t], [float(t)], np.asarray([0.0]))

    model()  # compile the step
    extra: dict[str, Callable[[], None]] = {}
    if args.substream:

        width, height = (int(part) for part in args.substream.lower().split("x"))
        path = str(Path(tempfile.mkdtemp()) / "substream.mp4")
        _encode(args.video, path, count, width, height)
        decoder = LumaDecoder(path)
        sub_grays = [np.array(item[0]) for _ in range(count)
                     if (item := decoder.read()) is not None]
        decoder.close()

        def sub_cue() -> None:
            motion = MotionCue(120)
            for gray in sub_grays:
                motion(gray)

        extra = {f"decode to the luma plane, {width}x{height} substream":
                 _pyav_luma(path, len(sub_grays), False),
                 f"motion cue at 120 rows, {width}x{height} substream": sub_cue}
    if args.cue_variants:
        from forecaster.detection.flow import cue_size

        size = cue_size(grays[0].shape[0], grays[0].shape[1], 120)
        extra.update(_flow_variants([to_gray_resized(g, size) for g in grays]))
        from forecaster.detection.calibration import PatchPooler

        pooler = PatchPooler(*size, 8, 4)
        magnitudes = [np.random.default_rng(index).random(size).astype(np.float32)
                      for index in range(count)]

        def windows_numpy() -> None:  # a stack of one map takes NumPy's two passes
            for magnitude in magnitudes:
                pooler(magnitude[None])

        def windows_opencv() -> None:
            for magnitude in magnitudes:
                pooler(magnitude)

        extra["the cue's 8x8 windows: NumPy's sums (before)"] = windows_numpy
        extra["the cue's 8x8 windows: OpenCV's integral image (now)"] = windows_opencv
    stages: dict[str, Callable[[], None]] = {
        "decode + gray, OpenCV (BGR, then gray)": _opencv_gray(args.video, count),
        "decode to the luma plane, PyAV, 1 thread, deblocked (before)":
            _pyav_luma(args.video, count, False, deblock=True),
        "decode to the luma plane, PyAV, 1 thread, no deblocking (now)":
            _pyav_luma(args.video, count, False),
        "decode to the luma plane, PyAV, FFmpeg's threads": _pyav_luma(args.video, count, True),
        "decode to BGR at full size and the luma plane (colour, before)":
            _pyav_colour(args.video, count),
        "the same, then BGR scaled to 640 wide (what the pre-roll did)":
            _pyav_colour_scaled(args.video, count),
        "decode to BGR 640 wide and the luma plane (colour, now)":
            _pyav_colour(args.video, count, 640),
        "resize to 64x64, one area step": resize_one_step,
        "resize to 64x64, two steps (now)": resize_two_steps,
        "resize to the cue's size, all columns (before)": cue_resize_before,
        "resize to the cue's size, whole factors (now)": cue_resize,
        "motion cue at 120 rows (its resize included)": cue,
        "pre-roll JPEG, gray, 640 wide": jpeg,
        "clip frame 640x360 (in an event), before: JPEG decoded, PyAV's I420, libx264":
            clip(True),
        "clip frame 640x360 (in an event), now: the frame, OpenCV's I420, libx264":
            clip(False),
        "model step + score (default scorer)": model,
        **extra,
    }
    samples: dict[str, list[float]] = {name: [] for name in stages}
    for _ in range(args.rounds):
        for name, run in stages.items():
            began = time.process_time()
            run()
            samples[name].append((time.process_time() - began) * 1000.0 / count)
    print(f"{Path(args.video).name}, {grays[0].shape[1]}x{grays[0].shape[0]}, {count} frames, "
          f"CPU ms per frame (median of {args.rounds} alternating rounds):")
    for name, values in samples.items():
        print(f"  {name:<80}{np.median(values):>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
