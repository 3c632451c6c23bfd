"""The events view in a real headless browser (Chromium driven by selenium), on a real
daemon (two synthetic cameras with anomalies, recordings on, the daemon in another time
zone): the history pages, filters by camera, shows dates with their time zone,
acknowledges and dismisses, and plays a clip inline. Screenshots at 1400x1000 and 390x844
go to ``test-output/``."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from forecaster.recording.event_board import event_stem
from forecaster.recording.event_index import EventIndex, index_path
from tests.browser import start_browser, wait_until
from tests.conftest import ROOT, free_port
from tests.daemon_harness import Daemon, config_text, wait_for

OUTPUT = ROOT / "test-output"
#: events the view shows per page (events.js)
PAGE = 20

pytestmark = pytest.mark.timeout(240)


def api(url: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path.lstrip("/"), data=data,
                                     method="GET" if body is None else "POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str, Path]]:
    """A daemon (TZ=Europe/Paris) with recordings and its page, a recorded clip in its
    index, older events added to the index so that the history has pages, and a browser."""
    folder = tmp_path_factory.mktemp("events-daemon")
    events = folder / "events"
    port = free_port()
    config = config_text(
        f"tcp://127.0.0.1:{free_port()}",
        [("cam0", "synthetic:?fps=20&anomaly_rate=0.08&seed=5", {"name": "Front door"}),
         ("cam1", "synthetic:?fps=20&anomaly_rate=0.08&seed=7")],
        {"web": {"enabled": True, "port": port, "image_fps": 4.0},
         "recording": {"dir": str(events), "pre_s": 1.0, "post_s": 0.5}},
    )
    with Daemon(folder, config, env={"TZ": "Europe/Paris"}) as daemon:
        daemon.wait_log(r"live page on http://127\.0\.0\.1:\d+/", timeout=60)

        def recorded() -> bool:
            if not index_path(events).is_file():
                return False
            return any(r["clip_state"] == "ready" and r["clip"]
                       for r in EventIndex(events).all_rows())

        wait_for(recorded, 180, "a recorded clip in the index")
        index = EventIndex(events)
        now = time.time()
        for n in range(PAGE + 5):  # older events, without files, an hour ago and before
            ts = now - 3600 - 60 * n
            camera = f"cam{n % 2}"
            index.finished(event_stem(camera, 100_000 + n, ts),
                           {"camera": camera, "start_ts": ts, "end_ts": ts + 1.0,
                            "peak_score": 5.0}, "none")
        index.close()
        driver = start_browser(("--mute-audio", "--autoplay-policy=no-user-gesture-required"))
        try:
            url = f"http://127.0.0.1:{port}/"
            driver.get(url)
            yield driver, url, events
        finally:
            driver.quit()
        assert "Traceback" not in daemon.log()


def click(driver: Any, selector: str) -> None:
    """Click the element ``selector`` names now (the list is redrawn as it reloads)."""
    found = driver.execute_script("const e = document.querySelector(arguments[0]); "
                                  "if (e) e.click(); return e !== null", selector)
    assert found, f"nothing to click at {selector}"


def shown_ids(driver: Any) -> list[int]:
    return [int(x) for x in driver.execute_script(
        "return Array.from(document.querySelectorAll('#history li.history-event'))"
        ".map((li) => li.dataset.id)")]


def test_history_pages_and_shows_dates_with_their_time_zone(
        site: tuple[Any, str, Path]) -> None:
    driver, url, _ = site
    wait_until(driver, lambda d: len(shown_ids(d)) == PAGE, 30, "a first page of events")
    assert api(url, "/api/cameras")["tz"] == "Europe/Paris"
    first = shown_ids(driver)
    times = driver.execute_script(
        "return Array.from(document.querySelectorAll('#history li time.start'))"
        ".map((t) => t.textContent)")
    for text in times:  # the date, the time and the zone (Paris: CET or CEST, or GMT+1/+2)
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} (CES?T|GMT\+[12])", text), text
    zone = driver.execute_script("return document.querySelector('#history .zone').textContent")
    assert zone == "times in Europe/Paris"
    names = driver.execute_script(
        "return Array.from(document.querySelectorAll('#history .camera-name'))"
        ".map((n) => n.textContent)")
    assert "Front door" in names and "cam0" not in names
    # older, older again, then back
    click(driver, "#history button.older")
    wait_until(driver, lambda d: shown_ids(d) and shown_ids(d)[0] not in first, 15, "page 2")
    second = shown_ids(driver)
    assert not set(second) & set(first)
    assert driver.execute_script(
        "return document.querySelector('#history .page-number').textContent") == "page 2"
    every = api(url, "/api/events?limit=500")["events"]
    if len(every) > 2 * PAGE:
        click(driver, "#history button.older")
        wait_until(driver, lambda d: shown_ids(d) and shown_ids(d)[0] not in second, 15, "page 3")
    assert driver.execute_script("return document.querySelector('#history button.older')"
                                 ".disabled") is True
    assert len(first) + len(second) + (len(shown_ids(driver)) if len(every) > 2 * PAGE
                                       else 0) >= len(every) - 2  # a few new ones meanwhile
    click(driver, "#history button.newer")
    if len(every) > 2 * PAGE:
        click(driver, "#history button.newer")
    wait_until(driver, lambda d: d.execute_script(
        "return document.querySelector('#history .page-number').textContent") == "page 1",
        15, "back on page 1")
    OUTPUT.mkdir(exist_ok=True)
    driver.execute_script("document.getElementById('history').scrollIntoView()")
    driver.save_screenshot(str(OUTPUT / "events-view.png"))
    # the header's link leads to the history
    assert driver.execute_script(
        "return document.querySelector('header a.history-link').getAttribute('href')") == "#history"


def test_camera_filter_date_range_ack_and_dismiss(site: tuple[Any, str, Path]) -> None:
    from selenium.webdriver.support.ui import Select

    driver, url, _ = site
    Select(driver.find_element("css selector", "#history select.camera-filter")) \
        .select_by_value("cam1")
    click(driver, "#history button.apply")
    cameras = "return Array.from(document.querySelectorAll('#history li.history-event'))" \
        ".map((li) => li.dataset.camera)"
    wait_until(driver, lambda d: d.execute_script(cameras) and set(d.execute_script(cameras))
               == {"cam1"}, 15, "only cam1's events")
    # acknowledge one event
    target = shown_ids(driver)[0]
    click(driver, f"#history li[data-id='{target}'] button.ack")
    wait_until(driver, lambda d: d.execute_script(
        f"return document.querySelector(\"#history li[data-id='{target}']\")"
        ".classList.contains('acked')"), 15, "the event acknowledged")
    event = api(url, f"/api/events/{target}")["event"]
    assert event["acked_by"] == "live page" and event["acked_at"] > 0
    text = driver.execute_script(
        f"return document.querySelector(\"#history li[data-id='{target}'] .ack-state\")"
        ".textContent")
    assert text.startswith("acknowledged by live page at 20"), text
    # all of the camera: nothing of cam1 left unacknowledged
    click(driver, "#history button.ack-camera")
    wait_for(lambda: next(c for c in api(url, "/api/cameras")["cameras"]
                          if c["id"] == "cam1")["unacked"] == 0, 15, "cam1 acknowledged")
    # dismiss one: it leaves the list
    target = shown_ids(driver)[0]
    click(driver, f"#history li[data-id='{target}'] button.dismiss")
    wait_until(driver, lambda d: target not in shown_ids(d), 15, "the dismissed event gone")
    assert api(url, f"/api/events/{target}")["event"]["dismissed"] is True
    # a date range: the events from 2 hours ago to 1 hour ago (the older ones added)
    stamp = "return arguments[0].value = arguments[1]"
    # the inputs are in the daemon's time zone
    paris = ZoneInfo("Europe/Paris")
    since = dt.datetime.fromtimestamp(time.time() - 7200, paris).strftime("%Y-%m-%dT%H:%M:%S")
    until = dt.datetime.fromtimestamp(time.time() - 3000, paris).strftime("%Y-%m-%dT%H:%M:%S")
    driver.execute_script(stamp, driver.find_element("css selector", "#history input[name=since]"),
                          since)
    driver.execute_script(stamp, driver.find_element("css selector", "#history input[name=until]"),
                          until)
    Select(driver.find_element("css selector", "#history select.camera-filter")) \
        .select_by_value("")
    click(driver, "#history button.apply")
    expected = [e["id"] for e in api(
        url, f"/api/events?since={since}&until={until}&limit={PAGE}")["events"]]
    assert len(expected) == PAGE  # the older events added: PAGE + 5 in that hour
    wait_until(driver, lambda d: shown_ids(d) == expected, 15, "the date range's events")
    click(driver, "#history button.clear")
    wait_until(driver, lambda d: len(shown_ids(d)) == PAGE, 15, "the filters cleared")


def test_a_clip_plays_inline_from_its_pre_roll(site: tuple[Any, str, Path]) -> None:
    driver, url, events = site
    event = next(e for e in api(url, "/api/events?limit=500&include_dismissed=1")["events"]
                 if e["clip_state"] == "ready" and e["clip_url"])
    sidecar = json.loads((events / event["clip_url"].removeprefix("/events/"))
                         .with_suffix(".json").read_text())
    assert sidecar["codec"] == "avc1", "clips must be H.264 for a browser to play them"
    # show the event: newest first, it is on the first page (cam0 and cam1 both may have it)
    driver.execute_script("window.forecasterHistory.state.filter = {camera: arguments[0], "
                          "since: '', until: '', dismissed: true}; "
                          "window.forecasterHistory.state.pages = [null]; "
                          "window.forecasterHistory.state.page = 0; "
                          "return window.forecasterHistory.reload()", event["camera"])
    wait_until(driver, lambda d: event["id"] in shown_ids(d), 15, "the event with a clip")
    row = f"#history li[data-id='{event['id']}']"
    href = driver.find_element("css selector", f"{row} a.download").get_attribute("href")
    assert href == url.rstrip("/") + event["clip_url"]
    click(driver, f"{row} button.play")
    video = wait_until(driver, lambda d: d.find_element("css selector", f"{row} video"), 10,
                       "the player")
    state = wait_until(driver, lambda d: d.execute_script(
        "const v = arguments[0]; return v.readyState >= 2 ? "
        "[v.readyState, v.duration, v.currentTime, v.error && v.error.message] : null", video),
        30, "the clip loaded in the player")
    duration = sidecar["frames"] / sidecar["fps"]
    assert abs(state[1] - duration) <= 0.1 * duration, (state, sidecar)
    assert state[2] == 0.0 and state[3] is None  # it starts at the pre-roll
    marks = driver.execute_script(
        f"return [document.querySelector(\"{row} .peak-mark\") !== null, "
        f"document.querySelector(\"{row} .event-span\") !== null]")
    assert marks == [True, True]
    driver.execute_script("arguments[0].play()", video)
    wait_until(driver, lambda d: d.execute_script("return arguments[0].currentTime", video) > 0.2,
               15, "the clip playing")
    # the phone width: one column, the player fits
    driver.set_window_size(390, 844)
    try:
        width = driver.execute_script("return arguments[0].getBoundingClientRect().width",
                                      video)
        assert 0 < width <= 390
        OUTPUT.mkdir(exist_ok=True)
        driver.execute_script("arguments[0].scrollIntoView()", video)
        driver.save_screenshot(str(OUTPUT / "events-view-phone.png"))
    finally:
        driver.set_window_size(1400, 1000)
