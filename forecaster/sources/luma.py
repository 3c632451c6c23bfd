"""Decoding video files and network streams: to the luma plane with PyAV, else with OpenCV.

Most cameras and files carry YUV video. Its first plane, the luma (Y), is the gray frame
the model and the motion cue need, so PyAV hands it over as decoded: a view of the
decoder's plane with its line stride, with no colour conversion (limited-range luma, the
usual, goes through a 256-entry table to the full range). Decoded fully, it differs from
OpenCV's decode-to-BGR then BGR-to-gray by a few grey levels at most (the two round
differently), at about two thirds of the CPU per frame. A frame in a
format without a luma plane (RGB, palette, more than 8 bits) is converted to gray by
FFmpeg's swscale instead.

The decoder skips H.264's (and HEVC's) deblocking filter (:data:`DETECTION_DECODING`),
13-41% of its CPU on ``vtest.avi`` here: at the sizes the model and the cue see, the frames
differ from deblocked ones by under a grey level on average, and on the four labelled Ped2
dev videos encoded as H.264 the default score's AUC moved by at most 0.001. Every PyAV decode does the same, so live,
replayed and evaluated scores agree. A camera's clips copy its packets, which players
deblock as usual.

A source whose frames are also encoded into clips or shown (``color=True``) is decoded to
BGR as well, so that clips, snapshots and the page's picture keep the camera's colours; its
gray frame is still the luma plane.

Where PyAV cannot open a source, :func:`open_decoder` falls back to OpenCV's FFmpeg
backend, which decodes to BGR.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Protocol

import cv2
import numpy as np

log = logging.getLogger("forecaster.sources")

#: pixel formats whose first plane is 8-bit luma
LUMA_FORMATS = frozenset({
    "yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "yuv440p",
    "yuvj440p", "yuv411p", "yuv410p", "nv12", "nv21", "nv16", "gray", "yuva420p",
})


#: a decoded frame: its image, its position in seconds, and its luma plane where the image
#: is in colour and the decoder has one (None: the gray frame is the image made gray)
Decoded = tuple[np.ndarray, float | None, np.ndarray | None]


class PacketTap(Protocol):
    """Told of a PyAV decoder's stream, of each packet it demuxes (before decoding it) and of
    each frame it decodes, in the order they come (a recorder that copies the camera's
    compressed video into clips: :mod:`forecaster.recording.packets`)."""

    def opened(self, stream: Any) -> None: ...

    def packet(self, packet: Any) -> None: ...

    def frame(self, frame: Any) -> None: ...

    def closed(self) -> None: ...


class Decoder(Protocol):
    """An open video: ``read()`` gives :data:`Decoded` frames until None at the end."""

    backend: str
    nominal_fps: float | None

    def read(self) -> Decoded | None: ...

    def close(self) -> None: ...


#: limited-range luma (16-235, video's usual "TV" range) to the full range of a gray image
#: (0-255), as OpenCV's decode to BGR then BGR-to-gray gives it
TV_TO_FULL = np.clip(np.round((np.arange(256) - 16) * 255 / 219), 0, 255).astype(np.uint8)
#: ``color_range`` of a frame whose values use the full range (AVCOL_RANGE_JPEG)
FULL_RANGE = 2


#: decoder options of every PyAV decode: H.264's and HEVC's deblocking filter is skipped. At
#: the sizes the model and the cue see (64x64, 120 rows) the frames differ from fully decoded
#: ones by under one grey level on average; a camera's clips copy its packets, which players
#: deblock as usual
DETECTION_DECODING = {"skip_loop_filter": "all"}


def luma(frame: Any) -> np.ndarray:
    """The gray image of a decoded PyAV frame: its luma plane where it has one (stretched to
    the full range where it uses the limited one), else FFmpeg's conversion to gray."""
    name = frame.format.name
    if name not in LUMA_FORMATS:
        return frame.to_ndarray(format="gray")
    plane = frame.planes[0]
    rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
    image = rows[:, :plane.width]
    if name == "gray" or name.startswith("yuvj") or frame.color_range == FULL_RANGE:
        return image
    return cv2.LUT(image, TV_TO_FULL)


def _plane(frame: Any, index: int, height: int, width: int) -> np.ndarray:
    plane = frame.planes[index]
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:height, :width]


def colour(frame: Any, max_width: int | None = None) -> np.ndarray:
    """The BGR image of a decoded PyAV frame, at most ``max_width`` wide (aspect kept).

    A 4:2:0 frame in the limited range (H.264's usual) wider than that is shrunk plane by
    plane and converted at the smaller size by OpenCV: at 720p to 640 wide, half the CPU
    of FFmpeg's full-size conversion (and no BGR resize after it); the pixels differ from
    that conversion then a resize by under one level on average. Any other frame is
    converted by FFmpeg at its own size."""
    width, height = frame.width, frame.height
    if (max_width is not None and width > max_width and frame.format.name == "yuv420p"
            and frame.color_range != FULL_RANGE and width % 2 == 0 and height % 2 == 0):
        rows = max(2, round(height * max_width / width))
        if rows % 2 == 0 and max_width % 2 == 0:
            cols = max_width
            planes = np.empty(rows * cols * 3 // 2, np.uint8)
            luma_size, chroma_size = rows * cols, rows * cols // 4
            planes[:luma_size] = cv2.resize(
                _plane(frame, 0, height, width), (cols, rows),
                interpolation=cv2.INTER_AREA).ravel()
            for index in (1, 2):
                start = luma_size + (index - 1) * chroma_size
                planes[start:start + chroma_size] = cv2.resize(
                    _plane(frame, index, height // 2, width // 2), (cols // 2, rows // 2),
                    interpolation=cv2.INTER_AREA).ravel()
            return cv2.cvtColor(planes.reshape(rows * 3 // 2, cols), cv2.COLOR_YUV2BGR_I420)
    return frame.to_ndarray(format="bgr24")


def _fps(value: float | None) -> float | None:
    return float(value) if value and math.isfinite(value) and 0 < value < 1000 else None


class LumaDecoder:
    """A video file or stream decoded by PyAV, one decoder thread, to gray frames (to BGR
    frames with ``color``)."""

    backend = "pyav"

    def __init__(self, uri: str, *, timeout_s: tuple[float, float] | None = None,
                 options: dict[str, str] | None = None, color: bool = False,
                 color_width: int | None = None, tap: PacketTap | None = None) -> None:
        import av

        self.color = color
        #: told of the stream, its packets and its frames (None: nobody)
        self.tap = tap
        #: colour frames are at most this wide (None: the frame's own size)
        self.color_width = color_width

        self._av = av
        self.container = av.open(uri, timeout=timeout_s, options=options or {})
        try:
            if not self.container.streams.video:
                raise ValueError("no video stream")
            stream = self.container.streams.video[0]
            # one thread a camera: with many cameras the cores are shared already, and a
            # decoder's own threads add CPU per frame
            stream.thread_type = "NONE"
            stream.codec_context.thread_count = 1
            # the decoder skips its deblocking filter (see the module's docstring)
            stream.codec_context.options = dict(DETECTION_DECODING)
            self.stream = stream
            rate = stream.average_rate or stream.guessed_rate
            self.nominal_fps = _fps(float(rate)) if rate else None
            self._frames = self._decode()
            self._index = 0
            if tap is not None:
                tap.opened(stream)
        except BaseException:
            self.container.close()
            raise

    def _decode(self) -> Any:
        av = self._av
        tap = self.tap
        for packet in self.container.demux(self.stream):
            if tap is not None and packet.size:
                tap.packet(packet)
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                continue  # a damaged packet: the next keyframe decodes again
            yield from frames

    def read(self) -> Decoded | None:
        """The next frame and its position: its index at the nominal frame rate (containers
        such as AVI give B-frames no usable time of their own), else the frame's time."""
        frame = next(self._frames, None)
        if frame is None:
            return None
        index, self._index = self._index, self._index + 1
        if self.tap is not None:
            self.tap.frame(frame)
        pos = index / self.nominal_fps if self.nominal_fps else frame.time
        gray = luma(frame)  # the same gray frame with colour or without
        if self.color:
            return colour(frame, self.color_width), pos, gray
        return gray, pos, None

    def close(self) -> None:
        self.container.close()
        if self.tap is not None:
            self.tap.closed()


class OpenCvDecoder:
    """A video file or stream decoded by OpenCV's FFmpeg backend, to BGR frames."""

    backend = "opencv"

    def __init__(self, uri: str, *, timeout_s: tuple[float, float] | None = None) -> None:
        params = [] if timeout_s is None else [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, round(timeout_s[0] * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, round(timeout_s[1] * 1000),
        ]
        self.capture = cv2.VideoCapture(uri, cv2.CAP_FFMPEG, params)
        if not self.capture.isOpened():
            self.capture.release()
            raise ValueError("OpenCV cannot open it")
        self.nominal_fps = _fps(self.capture.get(cv2.CAP_PROP_FPS))

    def read(self) -> Decoded | None:
        ok, image = self.capture.read()
        if not ok or image is None:
            return None
        pos = self.capture.get(cv2.CAP_PROP_POS_MSEC)
        return image, (pos / 1000.0 if math.isfinite(pos) else None), None

    def close(self) -> None:
        self.capture.release()


#: the backends in the order they are tried
BACKENDS = ("pyav", "opencv")
#: seconds of a network stream FFmpeg reads to learn its format
PROBE_S = 1.0
#: OpenCV is not tried with less of the open timeout left than this
MIN_OPEN_S = 0.5


def open_decoder(uri: str, *, timeout_s: tuple[float, float] | None = None,
                 backend: str | None = None, color: bool = False,
                 color_width: int | None = None, tap: PacketTap | None = None) -> Decoder:
    """``uri`` opened by ``backend`` (one of :data:`BACKENDS`; None: PyAV, else OpenCV);
    ValueError when none can open it.

    With ``timeout_s`` (a network stream), both tries share the open timeout: OpenCV gets
    what PyAV left of it, so a stream that is down fails within the timeout once, not twice
    (a capture loop that waits longer would count as stalled). A stream's format is probed
    for at most :data:`PROBE_S`, not FFmpeg's 5 s: a camera's H.264 says what it is in its
    first frames. ``color``: PyAV decodes to BGR, not to the luma plane (OpenCV always
    does), at most ``color_width`` wide (the size the frames are kept at). ``tap``: told of
    what PyAV demuxes and decodes (OpenCV tells it nothing)."""
    reasons = []
    started = time.monotonic()
    if backend in (None, "pyav"):
        options = None
        if timeout_s is not None:
            options = {"analyzeduration": str(round(PROBE_S * 1e6))}
            if uri.lower().startswith("rtsp"):
                options["rtsp_transport"] = "tcp"
        try:
            return LumaDecoder(uri, timeout_s=timeout_s, options=options, color=color,
                               color_width=color_width, tap=tap)
        except Exception as error:  # any FFmpeg error: OpenCV may still read it
            reasons.append(f"PyAV: {type(error).__name__}")
            log.debug("PyAV cannot open a source (%s)", type(error).__name__)
    if backend in (None, "opencv"):
        left = timeout_s
        if timeout_s is not None:
            left = (timeout_s[0] - (time.monotonic() - started), timeout_s[1])
        if left is not None and left[0] < MIN_OPEN_S:
            reasons.append("no time left to try OpenCV")
        else:
            try:
                return OpenCvDecoder(uri, timeout_s=left)
            except ValueError as error:
                reasons.append(str(error))
    raise ValueError("; ".join(reasons))
