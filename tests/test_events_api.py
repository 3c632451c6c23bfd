"""The JSON API of the events and cameras over a real HTTP server (the live page's process,
in a thread), a real event index and real files; the camera's display name in the config."""

from __future__ import annotations

import http.client
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from forecaster.config import RecordingConfig, parse_config
from forecaster.errors import ConfigError
from forecaster.ipc.ring import FrameRing
from forecaster.recording.event_index import EventIndex
from forecaster.recording.recorder import Recorder
from forecaster.web.api import parse_time
from forecaster.web.live import EventLog
from forecaster.web.process import WebSpec
from tests.conftest import free_port
from tests.web_harness import serving

pytestmark = pytest.mark.timeout(60)
TOKEN = "s3cret-token-for-the-events-api"


@dataclass
class Server:
    port: int
    token: str | None = None

    def call(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        sent = dict(headers or {})
        if self.token:
            sent.setdefault("Authorization", f"Bearer {self.token}")
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        try:
            connection.request(method, path, body=data, headers=sent)
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw.decode(errors="replace")

    def get(self, path: str) -> Any:
        status, answer = self.call("GET", path)
        assert status == 200, answer
        return answer


@contextmanager
def api_server(tmp_path: Path, events_dir: Path | None, token: str | None = None,
               names: tuple[tuple[str, str], ...] = (("cam0", "Front door"),)
               ) -> Iterator[Server]:
    rings = [FrameRing.create(f"forecaster_apitest_{uuid.uuid4().hex[:8]}", 64, 64, slots=4)
             for _ in range(2)]
    port = free_port()
    spec = WebSpec(cameras=(("cam0", rings[0].name), ("cam1", rings[1].name)),
                   feed_endpoint=f"ipc://{tmp_path}/feed.sock", address="127.0.0.1", port=port,
                   threshold_on=3.0, threshold_off=2.0, token=token,
                   events_dir=str(events_dir) if events_dir else None, names=names)
    try:
        with serving(spec, name="api-server"):
            yield Server(port, token)
    finally:
        for ring in rings:
            ring.close()
            ring.unlink()


def fill(folder: Path, count: int = 7) -> EventIndex:
    """``count`` finished events, alternating cam1/cam0, a second apart from 1e9 s; the
    last with a clip and a snapshot on disk."""
    index = EventIndex(folder)
    for n in range(count):
        camera = "cam1" if n % 2 else "cam0"
        stem = f"{camera}/20010909-014{n}00-{n}"
        record = {"camera": camera, "start_ts": 1e9 + n, "end_ts": 1e9 + n + 0.5,
                  "start_seq": 10 * n, "end_seq": 10 * n + 5, "peak_score": 4.0 + n,
                  "peak_seq": 10 * n + 2, "peak_ts": 1e9 + n + 0.2,
                  "first_ts": 1e9 + n - 1, "last_ts": 1e9 + n + 1}
        if n == count - 1:
            (folder / camera).mkdir(parents=True, exist_ok=True)
            for suffix in (".mp4", ".jpg", ".json"):
                (folder / f"{stem}{suffix}").write_bytes(b"x")
            record |= {"clip": f"{stem}.mp4", "snapshot": f"{stem}.jpg"}
        index.finished(stem, record, "ready" if n == count - 1 else "none")
    return index


def test_events_page_filter_and_fields(tmp_path: Path) -> None:
    fill(tmp_path)
    with api_server(tmp_path, tmp_path) as server:
        first = server.get("/api/events?limit=3")
        assert [e["start_ts"] for e in first["events"]] == [1e9 + 6, 1e9 + 5, 1e9 + 4]
        newest = first["events"][0]
        assert newest["camera"] == "cam0" and newest["name"] == "Front door"
        assert newest["clip_url"] == "/events/cam0/20010909-014600-6.mp4"
        assert newest["snapshot_url"] == "/events/cam0/20010909-014600-6.jpg"
        assert newest["sidecar_url"] == "/events/cam0/20010909-014600-6.json"
        assert (newest["clip_state"], newest["peak"], newest["peak_ts"]) == ("ready", 10.0,
                                                                             1e9 + 6.2)
        assert (newest["clip_start_ts"], newest["clip_end_ts"]) == (1e9 + 5, 1e9 + 7)
        assert newest["acked_by"] is None and newest["dismissed"] is False
        assert first["events"][1]["name"] == "cam1"  # no name: the id
        assert first["events"][1]["clip_url"] is None
        assert first["tz"]
        # paging backwards until the end
        seen = [e["id"] for e in first["events"]]
        before = first["next_before"]
        while before is not None:
            page = server.get(f"/api/events?limit=3&before={before}")
            seen += [e["id"] for e in page["events"]]
            before = page["next_before"]
        assert len(seen) == len(set(seen)) == 7
        # a camera, a date range (numbers, or ISO 8601 dates with a time zone)
        page = server.get("/api/events?camera=cam1&since=1000000002&until=1000000005")
        assert [e["start_ts"] for e in page["events"]] == [1e9 + 3]
        page = server.get("/api/events?since=2001-09-09T01:46:44Z&until=2001-09-09T01:46:46%2B00:00")
        assert [e["start_ts"] for e in page["events"]] == [1e9 + 5, 1e9 + 4]
        # the recording itself is served where clip_url says
        status, _ = server.call("GET", newest["clip_url"])
        assert status == 200
        # the index itself is not a recording
        for name in ("events.db", "events.db-wal", "events.db-shm"):
            assert server.call("GET", f"/events/{name}")[0] == 404
        status, answer = server.call("GET", f"/api/events/{newest['id']}")
        assert status == 200 and answer["event"]["id"] == newest["id"]
        assert server.call("GET", "/api/events/99999")[0] == 404
        # an id no SQLite row can have is no event either, not a server error
        assert server.call("GET", "/api/events/" + "9" * 25)[0] == 404
        assert server.call("POST", "/api/events/" + "9" * 25 + "/ack")[0] == 404


@pytest.mark.parametrize(("query", "expected"), [
    ("limit=0", "limit: must be 1-500 (got 0)"),
    ("limit=x", "limit: not a whole number ('x')"),
    ("since=yesterday", "since: not a time"),
    ("since=0001-01-01", "since: a time out of range"),
    ("camera=../x", "camera: not a camera id ('../x')"),
    ("include_dismissed=maybe", "include_dismissed: must be 0 or 1"),
    ("colour=red", "unknown parameter 'colour'"),
])
def test_bad_parameters_are_a_400_naming_them(tmp_path: Path, query: str, expected: str) -> None:
    with api_server(tmp_path, tmp_path) as server:
        status, answer = server.call("GET", f"/api/events?{query}")
    assert status == 400 and expected in answer["error"], answer


def test_ack_and_dismiss_one_event_or_a_camera(tmp_path: Path) -> None:
    fill(tmp_path)
    with api_server(tmp_path, tmp_path) as server:
        cameras = server.get("/api/cameras")
        assert cameras["unacked_total"] == 7 and cameras["tz"]
        assert cameras["cameras"] == [
            {"id": "cam0", "name": "Front door", "unacked": 4, "last_event_ts": 1e9 + 6},
            {"id": "cam1", "name": "cam1", "unacked": 3, "last_event_ts": 1e9 + 5}]
        newest = server.get("/api/events")["events"][0]
        status, answer = server.call("POST", f"/api/events/{newest['id']}/ack", {"by": "ann"})
        assert status == 200 and answer["changed"] == 1
        assert answer["event"]["acked_by"] == "ann" and answer["event"]["acked_at"] > 0
        assert server.get("/api/cameras")["unacked_total"] == 6
        # without a body: the default name; acknowledged twice: the first stays
        status, answer = server.call("POST", f"/api/events/{newest['id']}/ack")
        assert status == 200 and answer["changed"] == 0 and answer["event"]["acked_by"] == "ann"
        # all of a camera
        status, answer = server.call("POST", "/api/events/ack?camera=cam1", {"by": "bob"})
        assert status == 200 and answer == {"changed": 3, "camera": "cam1"}
        assert [c["unacked"] for c in server.get("/api/cameras")["cameras"]] == [3, 0]
        # dismissed: acknowledged, and out of the listing unless asked for
        status, answer = server.call("POST", "/api/events/dismiss?camera=cam0")
        assert status == 200 and answer["changed"] == 4
        assert {e["camera"] for e in server.get("/api/events")["events"]} == {"cam1"}
        every = server.get("/api/events?include_dismissed=1")["events"]
        assert len(every) == 7 and every[0]["dismissed"] is True
        assert every[0]["acked_by"] == "ann" and every[2]["acked_by"] == "operator"
        assert server.get("/api/cameras")["unacked_total"] == 0
        status, answer = server.call("POST", f"/api/events/{every[1]['id']}/dismiss")
        assert status == 200 and answer["event"]["dismissed"] is True
        # bad requests
        assert server.call("POST", "/api/events/99999/ack")[0] == 404
        status, answer = server.call("POST", "/api/events/ack")
        assert status == 400 and "camera: required" in answer["error"]
        status, answer = server.call("POST", "/api/events/ack?camera=cam0", b"{nope")
        assert status == 400 and "body: not JSON" in answer["error"]
        status, answer = server.call("POST", "/api/events/ack?camera=cam0", {"by": "x" * 65})
        assert status == 400 and "by: 1-64 printable characters" in answer["error"]
        status, answer = server.call("POST", "/api/events/ack?camera=cam0", b"x" * 5000)
        assert status == 400 and "more than 4096 bytes" in answer["error"]


def test_access_rules_hold_for_the_api(tmp_path: Path) -> None:
    fill(tmp_path)
    with api_server(tmp_path, tmp_path, token=TOKEN) as server:
        assert server.get("/api/cameras")["unacked_total"] == 7  # Bearer token
        anonymous = Server(server.port)
        assert anonymous.call("GET", "/api/events")[0] == 401
        assert anonymous.call("POST", "/api/events/ack?camera=cam0")[0] == 401
        assert anonymous.call("GET", "/api/events", headers={
            "Authorization": "Bearer wrong-token-wrong-token"})[0] == 403
        # a loopback page answers only loopback Host names (DNS rebinding)
        status, _ = server.call("GET", "/api/cameras", headers={"Host": "evil.example:80"})
        assert status == 403
        # a POST from another site, through a visitor's browser
        status, _ = server.call("POST", "/api/events/ack?camera=cam0",
                                headers={"Origin": "http://evil.example"})
        assert status == 403
        origin = f"http://127.0.0.1:{server.port}"
        status, answer = server.call("POST", "/api/events/ack?camera=cam0",
                                     headers={"Origin": origin})
        assert status == 200 and answer["changed"] == 4


def test_without_recordings_the_api_is_a_404(tmp_path: Path) -> None:
    with api_server(tmp_path, None) as server:
        status, answer = server.call("GET", "/api/cameras")
        assert status == 404 and "recording is off" in answer["error"]
        assert server.call("GET", "/api/events")[0] == 404


def test_parse_time_takes_numbers_and_iso_dates() -> None:
    assert parse_time("since", "1000000000.5") == 1000000000.5
    assert parse_time("since", "2001-09-09T01:46:40Z") == 1e9
    assert parse_time("since", "2001-09-09 03:46:40+02:00") == 1e9


def test_camera_name_in_the_config() -> None:
    config = parse_config({"cameras": [{"id": "cam0", "name": " Front door "},
                                       {"id": "cam1"}]})
    assert [c.name for c in config.cameras] == ["Front door", ""]
    with pytest.raises(ConfigError, match=r"cameras\.0\.name: camera name must be at most 80 "
                                          r"printable characters \(got 'a\\nb'\)"):
        parse_config({"cameras": [{"id": "cam0", "name": "a\nb"}]})


def test_live_cards_take_their_clip_state_from_the_index(tmp_path: Path) -> None:
    index = EventIndex(tmp_path)
    log = EventLog(tmp_path)
    for seq, stem in ((5, "cam0/20010909-014640-5"), (50, "cam0/20010909-014650-50")):
        for state in ("start", "end"):
            log.add("cam0", {"state": state, "seq": seq + (state == "end"), "ts": 1e9,
                             "clip": f"{stem}.mp4", "snapshot": f"{stem}.jpg"})
    skipped, recording = log.listing()[1], log.listing()[0]
    assert skipped["clip_state"] is None and skipped["clip"]
    index.opened("cam0", "cam0/20010909-014640-5", 5, 1e9)
    index.opened("cam0", "cam0/20010909-014650-50", 50, 1e9)
    assert log.refresh()
    assert [item["clip_state"] for item in log.listing()] == ["recording", "recording"]
    # one was not recorded (free space), the other is finished
    index.finished("cam0/20010909-014640-5", {"camera": "cam0"}, "none")
    (tmp_path / "cam0").mkdir()
    for suffix in (".mp4", ".jpg", ".json"):
        (tmp_path / f"cam0/20010909-014650-50{suffix}").write_bytes(b"x")
    index.finished("cam0/20010909-014650-50", {"camera": "cam0", "clip": recording["clip"],
                                               "snapshot": recording["snapshot"]}, "ready")
    assert log.refresh()
    newest, oldest = log.listing()
    assert (newest["clip_state"], newest["clip_ready"], newest["clip"]) == (
        "ready", True, recording["clip"])
    assert (oldest["clip_state"], oldest["clip"], oldest["snapshot"]) == ("none", None, None)
    assert not log.refresh()  # settled: nothing more to ask


def test_a_broken_index_is_a_503_and_recordings_go_on(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "events.db").write_bytes(b"this is not a database" * 100)
    with api_server(tmp_path, tmp_path) as server:
        status, answer = server.call("GET", "/api/events")
        assert status == 503 and "the event index cannot be used" in answer["error"]
        assert server.call("POST", "/api/events/ack?camera=cam0")[0] == 503
    assert "cannot be used" in caplog.text and "Traceback" not in caplog.text
    # the recorder writes its files all the same, and says once why the index is not kept
    index = EventIndex(tmp_path)
    recorder = Recorder("cam", tmp_path, RecordingConfig(pre_s=0.1, post_s=0.1, max_width=64),
                        model="m", index=index)
    rng = np.random.default_rng(0)
    for seq in range(20):
        recorder.on_frame(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), seq, seq * 0.04)
        if seq == 5:
            recorder.start(5, 5 * 0.04, 4.0)
        if seq == 10:
            recorder.end(8, 8 * 0.04, 5.0)
    recorder.close()
    assert len(list(tmp_path.glob("cam/*.json"))) == 1
    assert caplog.text.count("event index") >= 1 and "the recordings go on" in caplog.text
