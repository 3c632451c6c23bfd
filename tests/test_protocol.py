"""Wire protocol v1: encoding, decoding and every malformed case."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from forecaster.protocol import (
    KINDS,
    PROTOCOL_VERSION,
    Event,
    Forecast,
    Message,
    ProtocolError,
    Score,
    Status,
    decode,
    encode,
    topic,
)

pytestmark = pytest.mark.timeout(30)


def _frame(height: int = 64, width: int = 80) -> np.ndarray:
    return (np.arange(height * width, dtype=np.int64) % 251).astype(np.uint8).reshape(height, width)


def _strict_json(raw: bytes) -> dict[str, Any]:
    def reject(token: str) -> None:
        raise AssertionError(f"invalid JSON constant {token} in header")

    return json.loads(raw.decode("utf-8"), parse_constant=reject)


SAMPLES: list[Message] = [
    Forecast(camera="cam0", seq=41, ts=1700000000.25, target_seq=42, frame=_frame()),
    Score(
        camera="lobby-1",
        seq=42,
        ts=1700000000.29,
        mse=0.00123,
        psnr=29.1,
        score=1.5,
        anomaly=False,
        latency_ms=12.5,
    ),
    Event(camera="gate_2.east", seq=99, ts=1700000004.0, state="start", peak_score=4.25),
    Event(camera="gate_2.east", seq=140, ts=1700000005.6, state="end", peak_score=7.0),
    Status(
        camera="cam0",
        seq=500,
        ts=1700000020.0,
        fps=24.9,
        frames_captured=501,
        frames_dropped=3,
        state_resets=1,
        connected=True,
        ended=False,
    ),
    Status(
        camera="cam0",
        seq=900,
        ts=1700000036.0,
        fps=0.0,
        frames_captured=901,
        frames_dropped=3,
        state_resets=2,
        connected=False,
        ended=True,
        reason="end of stream",
    ),
    # before the first frame is processed
    Status(
        camera="cam1",
        seq=-1,
        ts=1700000001.0,
        fps=0.0,
        frames_captured=0,
        frames_dropped=0,
        state_resets=0,
        connected=False,
        ended=False,
        reason="source disconnected; reconnecting",
    ),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: f"{m.kind}-{m.seq}")
def test_round_trip(msg: Message) -> None:
    parts = encode(msg)
    assert all(isinstance(p, bytes) for p in parts)
    assert parts[0] == f"{msg.kind}/{msg.camera}".encode()
    header = _strict_json(parts[1])
    assert header["v"] == PROTOCOL_VERSION
    assert header["camera"] == msg.camera
    assert header["seq"] == msg.seq
    assert header["ts"] == msg.ts
    back = decode(parts)
    assert type(back) is type(msg)
    assert back == msg


def test_forecast_wire_format() -> None:
    frame = _frame(3, 4)
    parts = encode(Forecast(camera="c", seq=7, ts=1.5, target_seq=8, frame=frame))
    assert len(parts) == 3
    header = _strict_json(parts[1])
    assert header["shape"] == [3, 4]
    assert header["dtype"] == "uint8"
    assert header["target_seq"] == 8
    assert parts[2] == frame.tobytes()
    back = decode(parts)
    assert isinstance(back, Forecast)
    assert back.frame.dtype == np.uint8
    assert back.frame.shape == (3, 4)
    np.testing.assert_array_equal(back.frame, frame)


def test_forecast_non_contiguous_frame_is_sent_row_major() -> None:
    frame = _frame(8, 8)[:, ::2]
    back = decode(encode(Forecast(camera="c", seq=0, ts=0.0, target_seq=1, frame=frame)))
    assert isinstance(back, Forecast)
    np.testing.assert_array_equal(back.frame, frame)


def test_score_and_status_headers_have_documented_fields() -> None:
    score = _strict_json(encode(SAMPLES[1])[1])
    assert set(score) == {
        "v",
        "camera",
        "seq",
        "ts",
        "mse",
        "psnr",
        "score",
        "anomaly",
        "latency_ms",
    }
    assert score["anomaly"] is False
    status = _strict_json(encode(SAMPLES[5])[1])
    assert set(status) == {
        "v", "camera", "seq", "ts", "fps", "frames_captured", "frames_dropped",
        "state_resets", "connected", "ended", "reason",
    }  # fmt: skip
    assert status["reason"] == "end of stream"
    event = _strict_json(encode(SAMPLES[2])[1])
    assert set(event) == {"v", "camera", "seq", "ts", "state", "peak_score"}


def test_non_finite_floats_are_null_and_decode_to_nan() -> None:
    msg = Score(
        camera="cam0",
        seq=1,
        ts=2.0,
        mse=math.nan,
        psnr=math.inf,
        score=-math.inf,
        anomaly=False,
        latency_ms=1.0,
    )
    parts = encode(msg)
    header = _strict_json(parts[1])  # strict: no NaN/Infinity tokens
    assert header["mse"] is None and header["psnr"] is None and header["score"] is None
    back = decode(parts)
    assert isinstance(back, Score)
    assert math.isnan(back.mse) and math.isnan(back.psnr) and math.isnan(back.score)
    assert back.latency_ms == 1.0


def test_numpy_scalars_are_encoded_as_plain_json() -> None:
    msg = Score(
        camera="cam0",
        seq=np.int64(5),  # type: ignore[arg-type]
        ts=np.float64(1.0),  # type: ignore[arg-type]
        mse=np.float32(0.25),  # type: ignore[arg-type]
        psnr=np.float32(6.0),  # type: ignore[arg-type]
        score=np.float64(2.0),  # type: ignore[arg-type]
        anomaly=np.bool_(True),  # type: ignore[arg-type]
        latency_ms=3,
    )
    back = decode(encode(msg))
    assert isinstance(back, Score)
    assert back.seq == 5 and back.mse == 0.25 and back.anomaly is True and back.latency_ms == 3.0


def test_unknown_header_fields_are_ignored() -> None:
    parts = encode(SAMPLES[1])
    header = json.loads(parts[1])
    header["future_field"] = {"nested": [1, 2]}
    back = decode([parts[0], json.dumps(header).encode()])
    assert back == SAMPLES[1]


def test_status_reason_may_be_absent() -> None:
    parts = encode(SAMPLES[4])
    header = json.loads(parts[1])
    del header["reason"]
    back = decode([parts[0], json.dumps(header).encode()])
    assert isinstance(back, Status) and back.reason is None


def test_decode_accepts_buffers() -> None:
    parts = encode(SAMPLES[0])
    back = decode([bytearray(parts[0]), memoryview(parts[1]), memoryview(parts[2])])
    assert back == SAMPLES[0]


def test_topic() -> None:
    assert topic("score", "cam0") == b"score/cam0"
    assert topic("forecast", "A-b_c.9") == b"forecast/A-b_c.9"
    assert set(KINDS) == {"forecast", "score", "event", "status"}
    for camera in ["", "cam 0", "cam/0", "kamera-ü", "cam*"]:
        with pytest.raises(ProtocolError, match="camera"):
            topic("score", camera)
    with pytest.raises(ProtocolError, match="kind"):
        topic("scores", "cam0")
    assert issubclass(ProtocolError, ValueError)


# ----------------------------------------------------------------------- malformed input


def _score_parts(**changes: Any) -> list[bytes]:
    parts = encode(SAMPLES[1])
    header = json.loads(parts[1])
    for key, value in changes.items():
        if value is _DELETE:
            del header[key]
        else:
            header[key] = value
    return [parts[0], json.dumps(header).encode()]


_DELETE = object()


@pytest.mark.parametrize(
    ("parts", "match"),
    [
        ([], "2 or 3 parts"),
        ([b"score/cam0"], "2 or 3 parts"),
        ([b"a", b"b", b"c", b"d"], "2 or 3 parts"),
        ([*encode(SAMPLES[1]), b"extra"], "score message must have 2 parts"),
        (encode(SAMPLES[0])[:2], "forecast message must have 3 parts"),
    ],
    ids=["zero", "one", "four", "score-with-payload", "forecast-without-payload"],
)
def test_wrong_part_count(parts: list[bytes], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode(parts)


@pytest.mark.parametrize(
    ("raw_topic", "match"),
    [
        (b"scorecam0", "is not '<kind>/<camera>'"),
        (b"scores/cam0", "unknown kind 'scores'"),
        (b"score/", "invalid camera id ''"),
        (b"score/cam 0", "invalid camera id"),
        (b"score/cam0/x", "invalid camera id"),
        ("score/cämera".encode(), "not ASCII"),
    ],
)
def test_bad_topic(raw_topic: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode([raw_topic, encode(SAMPLES[1])[1]])


def test_topic_camera_must_match_header() -> None:
    with pytest.raises(ProtocolError, match="does not match topic camera"):
        decode([b"score/other", encode(SAMPLES[1])[1]])


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (b"{not json", "not valid UTF-8 JSON"),
        (b"\xff\xfe", "not valid UTF-8 JSON"),
        (b"", "not valid UTF-8 JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
    ],
)
def test_non_json_header(header: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode([b"score/lobby-1", header])


@pytest.mark.parametrize("version", [2, 0, "1", 1.0, 1.5, True, None, _DELETE])
def test_wrong_version(version: Any) -> None:
    with pytest.raises(ProtocolError, match="protocol version"):
        decode(_score_parts(v=version))


@pytest.mark.parametrize(
    "field", ["camera", "seq", "ts", "mse", "psnr", "score", "anomaly", "latency_ms"]
)
def test_missing_field(field: str) -> None:
    with pytest.raises(ProtocolError, match=f"missing field '{field}'"):
        decode(_score_parts(**{field: _DELETE}))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("seq", "42", "'seq' must be an integer"),
        ("seq", 42.0, "'seq' must be an integer"),
        ("seq", True, "'seq' must be an integer"),
        ("ts", "now", "'ts' must be a number"),
        ("ts", False, "'ts' must be a number"),
        ("mse", [0.1], "'mse' must be a number"),
        ("anomaly", 1, "'anomaly' must be true or false"),
        ("anomaly", "yes", "'anomaly' must be true or false"),
        ("anomaly", None, "'anomaly' must be true or false"),
    ],
)
def test_ill_typed_score_field(field: str, value: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode(_score_parts(**{field: value}))


def test_ill_typed_event_and_status_fields() -> None:
    event_parts = encode(SAMPLES[2])
    header = json.loads(event_parts[1])
    header["state"] = "middle"
    with pytest.raises(ProtocolError, match="'state' must be 'start' or 'end'"):
        decode([event_parts[0], json.dumps(header).encode()])

    status_parts = encode(SAMPLES[4])
    for field, value, match in [
        ("frames_dropped", 1.5, "'frames_dropped' must be an integer"),
        ("connected", "true", "'connected' must be true or false"),
        ("reason", 5, "'reason' must be a string or null"),
        ("fps", "fast", "'fps' must be a number"),
    ]:
        header = json.loads(status_parts[1])
        header[field] = value
        with pytest.raises(ProtocolError, match=match):
            decode([status_parts[0], json.dumps(header).encode()])


def _forecast_parts(payload: bytes | None = None, **changes: Any) -> list[bytes]:
    parts = encode(Forecast(camera="cam0", seq=1, ts=0.5, target_seq=2, frame=_frame(4, 5)))
    header = json.loads(parts[1])
    for key, value in changes.items():
        if value is _DELETE:
            del header[key]
        else:
            header[key] = value
    return [parts[0], json.dumps(header).encode(), parts[2] if payload is None else payload]


@pytest.mark.parametrize(
    ("payload", "changes", "match"),
    [
        (b"\x00" * 19, {}, "payload is 19 bytes but shape \\[4, 5\\] needs 20"),
        (b"\x00" * 21, {}, "payload is 21 bytes"),
        (b"", {}, "payload is 0 bytes"),
        (None, {"shape": [5, 5]}, "needs 25"),
        (None, {"shape": [20]}, "'shape' must be \\[height, width\\]"),
        (None, {"shape": [4, 5, 1]}, "'shape' must be"),
        (None, {"shape": [4, -5]}, "'shape' must be"),
        (None, {"shape": "4x5"}, "'shape' must be"),
        (None, {"shape": _DELETE}, "missing field 'shape'"),
        (None, {"dtype": "float32"}, "'dtype' must be 'uint8'"),
        (None, {"target_seq": "2"}, "'target_seq' must be an integer"),
        (None, {"target_seq": _DELETE}, "missing field 'target_seq'"),
    ],
)
def test_bad_forecast(payload: bytes | None, changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode(_forecast_parts(payload, **changes))


def test_encode_rejects_invalid_messages() -> None:
    with pytest.raises(ProtocolError, match="uint8"):
        encode(
            Forecast(camera="c", seq=0, ts=0.0, target_seq=1, frame=np.zeros((4, 4), np.float32))
        )
    with pytest.raises(ProtocolError, match="uint8"):
        encode(
            Forecast(camera="c", seq=0, ts=0.0, target_seq=1, frame=np.zeros((4, 4, 1), np.uint8))
        )
    with pytest.raises(ProtocolError, match="camera"):
        encode(Event(camera="bad camera", seq=0, ts=0.0, state="start", peak_score=1.0))
    with pytest.raises(ProtocolError, match="'state'"):
        encode(Event(camera="c", seq=0, ts=0.0, state="begin", peak_score=1.0))  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="'seq' must be an integer"):
        encode(Event(camera="c", seq=1.5, ts=0.0, state="end", peak_score=1.0))  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="'anomaly' must be a bool"):
        encode(
            Score(
                camera="c", seq=0, ts=0.0, mse=0.0, psnr=0.0, score=0.0, anomaly=1, latency_ms=0.0
            )  # type: ignore[arg-type]
        )
    with pytest.raises(ProtocolError, match="not a protocol message"):
        encode({"camera": "c"})  # type: ignore[arg-type]
