"""Wire protocol v1: the one schema of every message published over ZeroMQ.

A message is multipart: ``[topic, header]`` or ``[topic, header, payload]``.
``topic`` is ASCII ``"<kind>/<camera>"``; ``header`` is a UTF-8 JSON object that always
holds ``"v"`` (1), ``"camera"``, ``"seq"`` (int) and ``"ts"`` (float, UNIX seconds);
only ``forecast`` messages carry a payload (the predicted frame, raw row-major uint8).
Non-finite floats are sent as JSON ``null`` and read back as NaN. Header fields this
version does not know are ignored, so newer publishers stay readable. No pickle.
This module imports neither zmq nor TensorFlow.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

PROTOCOL_VERSION = 1
KINDS: tuple[str, ...] = ("forecast", "score", "event", "status")
#: the characters of a camera id
CAMERA_CHARS = "A-Za-z0-9_.-"
CAMERA_PATTERN = re.compile(f"[{CAMERA_CHARS}]+")
#: the longest camera id a config may name
MAX_CAMERA_ID = 64
#: the longest camera id a reader accepts in a topic (a config's are at most MAX_CAMERA_ID)
MAX_WIRE_CAMERA_ID = 255
#: the largest header a reader decodes (a real one is a few hundred bytes)
MAX_HEADER_BYTES = 64 * 1024
#: the deepest nesting of arrays and objects a reader decodes (a real header has 2)
MAX_HEADER_DEPTH = 16
_CAMERA_UNSAFE = re.compile(f"[^{CAMERA_CHARS}]+")
#: names of a folder itself and of its parent: never a camera id (recordings sit in a
#: folder named after the camera)
DOT_NAMES = frozenset({".", ".."})
EVENT_STATES: tuple[str, ...] = ("start", "end")

Buffer = bytes | bytearray | memoryview


class ProtocolError(ValueError):
    """A message that does not follow wire protocol v1 (or cannot be encoded as one)."""


def is_camera_id(text: object) -> bool:
    """Is ``text`` a camera id: ``[A-Za-z0-9_.-]+``, but not ``.`` or ``..``?"""
    return (isinstance(text, str) and CAMERA_PATTERN.fullmatch(text) is not None
            and text not in DOT_NAMES)


def validate_camera(camera: str) -> str:
    """Return ``camera`` if it is a valid camera id (:func:`is_camera_id`), else raise."""
    if not is_camera_id(camera):
        raise ProtocolError(
            f"invalid camera id {camera!r}: use letters, digits, '_', '.' or '-' only "
            f"(not '.' or '..' alone)"
        )
    return camera


def camera_safe(text: str, limit: int = MAX_CAMERA_ID) -> str:
    """``text`` made a camera id: each run of other characters one ``_``, at most ``limit``
    characters ("" when nothing is left, or only ``.`` or ``..``)."""
    safe = _CAMERA_UNSAFE.sub("_", text).strip("_")[:limit]
    return "" if safe in DOT_NAMES else safe


def validate_kind(kind: str) -> str:
    """Return ``kind`` if it is one of :data:`KINDS`, else raise."""
    if kind not in KINDS:
        raise ProtocolError(f"invalid message kind {kind!r}: expected one of {', '.join(KINDS)}")
    return kind


def topic(kind: str, camera: str) -> bytes:
    """Return the topic frame ``b"<kind>/<camera>"``."""
    return f"{validate_kind(kind)}/{validate_camera(camera)}".encode("ascii")


@dataclass(frozen=True, slots=True, eq=False)
class Forecast:
    """The predicted frame ``target_seq`` made after seeing frame ``seq``."""

    kind: ClassVar[str] = "forecast"
    camera: str
    seq: int
    ts: float
    target_seq: int
    frame: np.ndarray  # uint8 (H, W)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Forecast):
            return NotImplemented
        return (
            self.camera == other.camera
            and self.seq == other.seq
            and self.ts == other.ts
            and self.target_seq == other.target_seq
            and self.frame.shape == other.frame.shape
            and self.frame.dtype == other.frame.dtype
            and bool(np.array_equal(self.frame, other.frame))
        )

    # compared by value (the frame's pixels included), so not hashable
    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Score:
    """Frame ``seq`` scored against the prediction made from frame ``seq - 1``."""

    kind: ClassVar[str] = "score"
    camera: str
    seq: int
    ts: float
    mse: float
    psnr: float
    score: float
    anomaly: bool
    latency_ms: float
    #: where the error was largest, ``(x0, y0, x1, y1)`` in model-frame pixels (``x1`` and
    #: ``y1`` excluded), on frames scoring at or above ``threshold_off``; else None
    box: tuple[int, int, int, int] | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """An anomaly episode starts or ends at frame ``seq``."""

    kind: ClassVar[str] = "event"
    camera: str
    seq: int
    ts: float
    state: Literal["start", "end"]
    peak_score: float
    #: the event's recordings, paths relative to the recording folder (``[recording] dir``);
    #: None when the daemon does not record
    clip: str | None = None
    snapshot: str | None = None


@dataclass(frozen=True, slots=True)
class Status:
    """Periodic health of one camera's pipeline.

    ``seq`` is the last frame processed (-1 before the first), ``ts`` the time of sending.
    """

    kind: ClassVar[str] = "status"
    camera: str
    seq: int
    ts: float
    fps: float
    frames_captured: int
    frames_dropped: int
    state_resets: int
    connected: bool
    ended: bool
    reason: str | None = None
    #: does the model fit this camera: "checking" (its first scores are being counted),
    #: "ok", or "misfit" (most of them were at or above threshold_off); None: not said
    model_fit: str | None = None


MODEL_FIT_VALUES = ("checking", "ok", "misfit")

Message = Forecast | Score | Event | Status


# ---------------------------------------------------------------------------- encode


def _enc_float(name: str, value: Any) -> float | None:
    if isinstance(value, (bool, np.bool_)):
        raise ProtocolError(f"field {name!r} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ProtocolError(f"field {name!r} must be a number, got {value!r}") from None
    return number if math.isfinite(number) else None


def _enc_int(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise ProtocolError(f"field {name!r} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ProtocolError(f"field {name!r} must be an integer, got {value!r}") from None


def _enc_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ProtocolError(f"field {name!r} must be a bool, got {value!r}")
    return bool(value)


def _base_header(msg: Message) -> dict[str, Any]:
    return {
        "v": PROTOCOL_VERSION,
        "camera": msg.camera,
        "seq": _enc_int("seq", msg.seq),
        "ts": _enc_float("ts", msg.ts),
    }


def encode(msg: Message) -> list[bytes]:
    """Return the multipart frames of ``msg``; :class:`ProtocolError` if a field is invalid."""
    if not isinstance(msg, (Forecast, Score, Event, Status)):
        raise ProtocolError(f"cannot encode {type(msg).__name__}: not a protocol message")
    parts = [topic(msg.kind, msg.camera)]
    header = _base_header(msg)
    payload: bytes | None = None
    if isinstance(msg, Forecast):
        frame = msg.frame
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 2:
            got = (
                f"{frame.dtype} array of shape {frame.shape}"
                if isinstance(frame, np.ndarray)
                else type(frame).__name__
            )
            raise ProtocolError(f"forecast frame must be a uint8 (H, W) array, got {got}")
        header["target_seq"] = _enc_int("target_seq", msg.target_seq)
        header["shape"] = [int(frame.shape[0]), int(frame.shape[1])]
        header["dtype"] = "uint8"
        payload = frame.tobytes(order="C")
    elif isinstance(msg, Score):
        header["mse"] = _enc_float("mse", msg.mse)
        header["psnr"] = _enc_float("psnr", msg.psnr)
        header["score"] = _enc_float("score", msg.score)
        header["anomaly"] = _enc_bool("anomaly", msg.anomaly)
        header["latency_ms"] = _enc_float("latency_ms", msg.latency_ms)
        if msg.box is not None:
            header["box"] = _enc_box(msg.box)
    elif isinstance(msg, Event):
        if msg.state not in EVENT_STATES:
            raise ProtocolError(f"field 'state' must be 'start' or 'end', got {msg.state!r}")
        header["state"] = msg.state
        header["peak_score"] = _enc_float("peak_score", msg.peak_score)
        for name in ("clip", "snapshot"):
            value = getattr(msg, name)
            if value is not None:
                if not isinstance(value, str):
                    raise ProtocolError(f"field {name!r} must be a string or None, got {value!r}")
                header[name] = value
    else:
        header["fps"] = _enc_float("fps", msg.fps)
        header["frames_captured"] = _enc_int("frames_captured", msg.frames_captured)
        header["frames_dropped"] = _enc_int("frames_dropped", msg.frames_dropped)
        header["state_resets"] = _enc_int("state_resets", msg.state_resets)
        header["connected"] = _enc_bool("connected", msg.connected)
        header["ended"] = _enc_bool("ended", msg.ended)
        if msg.reason is not None and not isinstance(msg.reason, str):
            raise ProtocolError(f"field 'reason' must be a string or None, got {msg.reason!r}")
        header["reason"] = msg.reason
        if msg.model_fit is not None:
            if msg.model_fit not in MODEL_FIT_VALUES:
                raise ProtocolError(f"field 'model_fit' must be one of {MODEL_FIT_VALUES}, got "
                                    f"{msg.model_fit!r}")
            header["model_fit"] = msg.model_fit
    parts.append(json.dumps(header, allow_nan=False, separators=(",", ":")).encode("utf-8"))
    if payload is not None:
        parts.append(payload)
    return parts


# ---------------------------------------------------------------------------- decode

#: a JSON string (skipped whole) or a bracket (counted); the closing quote is optional,
#: so that a string never closed matches to the end at once instead of being tried again
#: from every later quote (quadratic time on ``"\\"\\"\\...``)
_JSON_NESTING = re.compile(rb'"(?:[^"\\]|\\.)*"?|[\[\]{}]')


def _depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in the JSON text ``data`` (brackets
    inside strings do not count)."""
    depth = deepest = 0
    for match in _JSON_NESTING.finditer(data):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in (b"]", b"}"):
            depth -= 1
    return deepest


def loads_bounded(data: Buffer | str, what: str, *, max_bytes: int = MAX_HEADER_BYTES,
                  max_depth: int = MAX_HEADER_DEPTH) -> Any:
    """``json.loads`` of ``data``, refused with :class:`ProtocolError` naming ``what`` when
    it is larger than ``max_bytes`` or nested deeper than ``max_depth``, before decoding.

    Every reader of JSON from the network goes through this: Python's decoder recurses
    once per level, so ``[[[...`` of 100,000 brackets would raise RecursionError.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise ProtocolError(f"{what} is {len(raw)} bytes, more than the {max_bytes} allowed")
    # a bracket count within the limit cannot nest deeper; count precisely only above it
    if raw.count(b"[") + raw.count(b"{") > max_depth and _depth(raw) > max_depth:
        raise ProtocolError(f"{what} nests arrays and objects deeper than {max_depth} levels")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"{what} is not valid UTF-8 JSON: {exc}") from None


def _field(header: Mapping[str, Any], kind: str, name: str) -> Any:
    try:
        return header[name]
    except KeyError:
        raise ProtocolError(f"{kind} header is missing field {name!r}") from None


def _dec_float(header: Mapping[str, Any], kind: str, name: str) -> float:
    value = _field(header, kind, name)
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"{kind} header field {name!r} must be a number, got {value!r}")
    return float(value)


def _dec_int(header: Mapping[str, Any], kind: str, name: str) -> int:
    value = _field(header, kind, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{kind} header field {name!r} must be an integer, got {value!r}")
    return value


def _dec_bool(header: Mapping[str, Any], kind: str, name: str) -> bool:
    value = _field(header, kind, name)
    if not isinstance(value, bool):
        raise ProtocolError(f"{kind} header field {name!r} must be true or false, got {value!r}")
    return value


def _dec_forecast(camera: str, h: Mapping[str, Any], payload: Buffer | None) -> Forecast:
    kind = "forecast"
    shape = _field(h, kind, "shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
    ):
        raise ProtocolError(
            f"forecast header field 'shape' must be [height, width] of positive ints, got {shape!r}"
        )
    dtype = _field(h, kind, "dtype")
    if dtype != "uint8":
        raise ProtocolError(f"forecast header field 'dtype' must be 'uint8', got {dtype!r}")
    if payload is None:
        raise ProtocolError("forecast message has no payload")
    expected = shape[0] * shape[1]
    size = memoryview(payload).nbytes
    if size != expected:
        raise ProtocolError(f"forecast payload is {size} bytes but shape {shape} needs {expected}")
    frame = np.frombuffer(payload, dtype=np.uint8).reshape(shape[0], shape[1])
    return Forecast(
        camera=camera,
        seq=_dec_int(h, kind, "seq"),
        ts=_dec_float(h, kind, "ts"),
        target_seq=_dec_int(h, kind, "target_seq"),
        frame=frame,
    )


def _box_ok(box: Any) -> bool:
    return (isinstance(box, (list, tuple)) and len(box) == 4
            and all(type(v) is int and 0 <= v <= 1 << 16 for v in box)
            and box[0] < box[2] and box[1] < box[3])


def _enc_box(box: Any) -> list[int]:
    if not _box_ok(box):
        raise ProtocolError(f"field 'box' must be [x0, y0, x1, y1] integers with x0 < x1 and "
                            f"y0 < y1, got {box!r}")
    return [int(v) for v in box]


def _dec_score(camera: str, h: Mapping[str, Any], payload: Buffer | None) -> Score:
    kind = "score"
    box = h.get("box")
    if box is not None and not _box_ok(box):
        raise ProtocolError(f"score header field 'box' must be [x0, y0, x1, y1] integers, "
                            f"got {box!r}")
    return Score(
        camera=camera,
        seq=_dec_int(h, kind, "seq"),
        ts=_dec_float(h, kind, "ts"),
        mse=_dec_float(h, kind, "mse"),
        psnr=_dec_float(h, kind, "psnr"),
        score=_dec_float(h, kind, "score"),
        anomaly=_dec_bool(h, kind, "anomaly"),
        latency_ms=_dec_float(h, kind, "latency_ms"),
        box=tuple(box) if box is not None else None,
    )


def _dec_event(camera: str, h: Mapping[str, Any], payload: Buffer | None) -> Event:
    kind = "event"
    state = _field(h, kind, "state")
    if state not in EVENT_STATES:
        raise ProtocolError(f"event header field 'state' must be 'start' or 'end', got {state!r}")
    paths = {}
    for name in ("clip", "snapshot"):
        value = h.get(name)
        if value is not None and not isinstance(value, str):
            raise ProtocolError(f"event header field {name!r} must be a string or null, got "
                                f"{value!r}")
        paths[name] = value
    return Event(
        camera=camera,
        seq=_dec_int(h, kind, "seq"),
        ts=_dec_float(h, kind, "ts"),
        state=state,
        peak_score=_dec_float(h, kind, "peak_score"),
        clip=paths["clip"],
        snapshot=paths["snapshot"],
    )


def _dec_status(camera: str, h: Mapping[str, Any], payload: Buffer | None) -> Status:
    kind = "status"
    reason = h.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise ProtocolError(
            f"status header field 'reason' must be a string or null, got {reason!r}"
        )
    model_fit = h.get("model_fit")
    if model_fit is not None and not isinstance(model_fit, str):
        raise ProtocolError(
            f"status header field 'model_fit' must be a string or null, got {model_fit!r}"
        )
    return Status(
        camera=camera,
        seq=_dec_int(h, kind, "seq"),
        ts=_dec_float(h, kind, "ts"),
        fps=_dec_float(h, kind, "fps"),
        frames_captured=_dec_int(h, kind, "frames_captured"),
        frames_dropped=_dec_int(h, kind, "frames_dropped"),
        state_resets=_dec_int(h, kind, "state_resets"),
        connected=_dec_bool(h, kind, "connected"),
        ended=_dec_bool(h, kind, "ended"),
        reason=reason,
        model_fit=model_fit,
    )


_DECODERS: dict[str, Callable[[str, Mapping[str, Any], Buffer | None], Message]] = {
    "forecast": _dec_forecast,
    "score": _dec_score,
    "event": _dec_event,
    "status": _dec_status,
}


def parse_topic(raw: Buffer) -> tuple[str, str]:
    """Split a topic frame into ``(kind, camera)``; :class:`ProtocolError` if malformed."""
    size = memoryview(raw).nbytes
    if size > len("forecast/") + MAX_WIRE_CAMERA_ID:
        raise ProtocolError(f"topic is {size} bytes, longer than any valid one: "
                            f"{bytes(raw)[:40]!r}...")
    try:
        text = bytes(raw).decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(f"topic is not ASCII: {bytes(raw)[:80]!r}") from None
    kind, sep, camera = text.partition("/")
    if not sep:
        raise ProtocolError(f"topic {text!r} is not '<kind>/<camera>'")
    if kind not in KINDS:
        raise ProtocolError(
            f"topic {text!r} has unknown kind {kind!r}: expected one of {', '.join(KINDS)}"
        )
    if len(camera) > MAX_WIRE_CAMERA_ID:
        raise ProtocolError(f"topic {kind}/{camera[:40]}... has a camera id of {len(camera)} "
                            f"characters, more than {MAX_WIRE_CAMERA_ID}")
    if not is_camera_id(camera):
        raise ProtocolError(f"topic {text!r} has invalid camera id {camera!r}")
    return kind, camera


def decode(parts: Sequence[Buffer]) -> Message:
    """Parse the multipart frames of one message; :class:`ProtocolError` if malformed.

    ``parts`` may be ``bytes``, ``bytearray``, ``memoryview`` or anything exposing the
    buffer protocol (such as ``zmq.Frame``). A forecast's ``frame`` is a read-only view
    of the payload buffer.
    """
    if len(parts) not in (2, 3):
        raise ProtocolError(
            f"message must have 2 or 3 parts (topic, header[, payload]), got {len(parts)}"
        )
    kind, camera = parse_topic(parts[0])
    expected_parts = 3 if kind == "forecast" else 2
    if len(parts) != expected_parts:
        raise ProtocolError(f"{kind} message must have {expected_parts} parts, got {len(parts)}")
    header = loads_bounded(parts[1], f"{kind}/{camera} header")
    if not isinstance(header, dict):
        raise ProtocolError(
            f"{kind}/{camera} header must be a JSON object, got {type(header).__name__}"
        )
    version = header.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"{kind}/{camera} header has protocol version {version!r}, expected {PROTOCOL_VERSION}"
        )
    header_camera = _field(header, kind, "camera")
    if header_camera != camera:
        raise ProtocolError(
            f"{kind} header camera {header_camera!r} does not match topic camera {camera!r}"
        )
    payload = memoryview(parts[2]) if expected_parts == 3 else None
    return _DECODERS[kind](camera, header, payload)
