"""The live page as an operator's console, in headless Chromium (selenium) on a real daemon
with nine synthetic cameras, anomalies on two of them: those two come first and are
marked, acknowledging clears the alarm bar, a tile opens its detail view, nine tiles fit
a 1400x1000 screen and a phone gets one column, and the tiles go grey once the daemon
stops. Screenshots go to ``test-output/console-*.png`` for a person to look at."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser import start_browser, wait_until
from tests.conftest import ROOT, free_port
from tests.daemon_harness import Daemon, config_text

OUTPUT = ROOT / "test-output"
ALARMING = ("gate", "yard")
QUIET = tuple(f"quiet{i}" for i in range(7))
#: display names ([[cameras]] name); the others show their id
NAMES = {"gate": "Front gate"}

pytestmark = pytest.mark.timeout(180)

#: each tile: camera, marks, box, picture, where it is on the screen
TILES = """
return Array.from(document.querySelectorAll('#grid .tile')).map((t) => {
  const r = t.getBoundingClientRect();
  const img = t.querySelector('img.frame');
  return {camera: t.dataset.camera, name: t.querySelector('.name').textContent, alarm: t.classList.contains('alarm'),
          unacked: t.classList.contains('unacked'), stale: t.classList.contains('stale'),
          note: t.querySelector('.stale-note').textContent,
          badge: t.querySelector('.source').textContent,
          box: t.dataset.box || '', picture: t.dataset.picture || '',
          width: img.naturalWidth, left: r.left, top: r.top, right: r.right, bottom: r.bottom};
});
"""


def _viewport(driver: Any, width: int, height: int, mobile: bool = False) -> None:
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Daemon, str]]:
    driver = start_browser()
    folder = tmp_path_factory.mktemp("console-daemon")
    port = free_port()
    # one episode each early on (the scene is a pure function of its seed), then none for
    # a minute: a large object from frame 31 on gate, a fast one from frame 148 on yard
    cameras: list[Any] = [
        (name, f"synthetic:?fps=10&width=320&height=180&anomaly_rate=0.005&seed={seed}",
         {"name": NAMES[name]} if name in NAMES else {})
        for name, seed in zip(ALARMING, (6, 176), strict=True)]
    # the quiet ones: a still scene (no walkers), nothing to alarm on
    cameras += [(name, f"synthetic:?fps=4&width=320&height=180&anomaly_rate=0&objects=0"
                 f"&seed={i + 10}") for i, name in enumerate(QUIET)]
    config = config_text(f"tcp://127.0.0.1:{free_port()}", cameras,
                         {"web": {"enabled": True, "port": port, "image_fps": 4.0}})
    try:
        with Daemon(folder, config) as daemon:
            daemon.wait_log(r"live page on http://127\.0\.0\.1:\d+/", timeout=60)
            daemon.wait_log(r"worker ready", timeout=120)
            url = f"http://127.0.0.1:{port}/"
            _viewport(driver, 1400, 1000)
            driver.get(url)
            yield driver, daemon, url
            assert "Traceback" not in daemon.log()
    finally:
        driver.quit()


def test_alarming_cameras_come_first_marked_and_acknowledging_clears_the_bar(
    console: tuple[Any, Daemon, str],
) -> None:
    driver, daemon, url = console
    OUTPUT.mkdir(exist_ok=True)

    def marked(tiles: list[dict[str, Any]]) -> set[str]:
        return {t["camera"] for t in tiles if t["alarm"] or t["unacked"]}

    # the anomalous region is boxed on the picture while the episode is open
    boxed = wait_until(driver, lambda d: next(
        (t for t in d.execute_script(TILES) if t["box"]), None),
        90, "a box around an anomalous region")
    assert boxed["camera"] in ALARMING and boxed["alarm"], boxed
    driver.save_screenshot(str(OUTPUT / "console-box.png"))
    tiles = wait_until(driver, lambda d: (t := d.execute_script(TILES)) and len(t) == 9
                       and set(ALARMING) <= {x["camera"] for x in t if x["unacked"]} and t, 90,
                       "both alarming cameras marked with unacknowledged events")
    tiles = wait_until(driver, lambda d: (t := d.execute_script(TILES))
                       and all(x["picture"] == "source" and x["width"] == 320 for x in t) and t, 30,
                       "every tile showing its camera's own 320-pixel picture")
    assert {t["camera"] for t in tiles[:2]} == set(ALARMING), [t["camera"] for t in tiles]
    assert marked(tiles) == set(ALARMING), tiles
    assert {t["camera"]: t["name"] for t in tiles}["gate"] == "Front gate"
    assert {t["camera"]: t["name"] for t in tiles}["yard"] == "yard"
    # nine cameras on a 1400x1000 screen, all live
    for tile in tiles:
        assert tile["right"] <= 1400 and tile["bottom"] <= 1000, tile
        assert not tile["stale"] and tile["badge"] == "live", tile
    bar = driver.find_element("id", "alarm-bar")
    assert bar.is_displayed() and "unacknowledged" in bar.text, bar.text
    driver.save_screenshot(str(OUTPUT / "console-1400x1000.png"))

    clicked = time.time()
    driver.find_element("id", "ack-all").click()
    # the count goes to zero, and the marks of unacknowledged events with it (until the
    # next event); the bar itself stays only while an episode is still open
    wait_until(driver, lambda d: d.execute_script(
        "const bar = document.getElementById('alarm-bar');"
        "const unacked = document.querySelectorAll('#grid .tile.unacked').length;"
        "return (bar.hidden || bar.dataset.count === '0') && !unacked"),
        15, "the unacknowledged alarms to clear once acknowledged")
    with urllib.request.urlopen(f"{url}api/events?limit=500", timeout=10) as response:
        listed = json.loads(response.read())["events"]
    before = [e for e in listed if e["start_ts"] < clicked - 1.0]
    assert before and all(e["acked_by"] for e in before), before
    # the event history holds both cameras' events, under their display names
    wait_until(driver, lambda d: {"Front gate", "yard"} <= set(d.execute_script(
        "return Array.from(document.querySelectorAll('#history li.history-event .camera-name'))"
        ".map((e) => e.textContent)")), 30, "both cameras' events in the history")

    # a tile opens the detail view: frame, forecast, error and the chart
    driver.find_element("css selector", f'#grid .tile[data-camera="{ALARMING[0]}"]').click()
    wait_until(driver, lambda d: d.execute_script(
        "const d = document.getElementById('detail');"
        "return !d.hidden && d.dataset.seq && Number(d.querySelector('canvas.chart').dataset.drawn) > 5"
        " && Array.from(d.querySelectorAll('img.panel')).every((i) => i.naturalWidth > 0)"),
        30, "the detail view's panels and chart")
    assert driver.find_element("css selector", "#detail .name").text == "Front gate"
    driver.save_screenshot(str(OUTPUT / "console-detail.png"))
    driver.find_element("css selector", "#detail .close").click()
    wait_until(driver, lambda d: d.execute_script(
        "return document.getElementById('detail').hidden"), 5, "the detail view to close")

    # a phone: one column
    _viewport(driver, 390, 844, mobile=True)
    tiles = wait_until(driver, lambda d: (t := d.execute_script(TILES))
                       and len({round(x["left"]) for x in t}) == 1 and t, 10, "one column")
    assert all(t["right"] <= 390 for t in tiles), tiles
    driver.save_screenshot(str(OUTPUT / "console-390x844.png"))
    _viewport(driver, 1400, 1000)

    # honest state: once the daemon is gone, no tile claims to be live
    assert daemon.stop(timeout=30) == 0
    tiles = wait_until(driver, lambda d: (t := d.execute_script(TILES))
                       and all(x["stale"] and "last frame" in x["note"] for x in t) and t, 15,
                       "every tile grey with the time since its last frame")
    assert not any(t["badge"] == "live" for t in tiles), tiles
    driver.save_screenshot(str(OUTPUT / "console-stopped.png"))
