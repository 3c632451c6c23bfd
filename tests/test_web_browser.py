"""The live page in a real headless browser (Chromium driven by selenium), on a real daemon
running a synthetic scene with many anomalies. Saves a screenshot of the page to
``test-output/web-page.png`` for a person to look at."""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest

from tests.browser import start_browser, wait_until
from tests.conftest import ROOT, free_port
from tests.daemon_harness import Daemon, config_text

SCREENSHOT = ROOT / "test-output" / "web-page.png"

pytestmark = pytest.mark.timeout(150)

#: a fingerprint of each of a camera's three images, as the browser shows them
PANEL_PRINTS = """
const card = document.querySelector('#detail');
if (!card || card.hidden || !card.dataset.seq) return null;
return Array.from(card.querySelectorAll('img.panel')).map((img) => {
  if (!img.complete || !img.naturalWidth) return null;
  const canvas = document.createElement('canvas');
  canvas.width = 32; canvas.height = 32;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(img, 0, 0, 32, 32);
  const data = ctx.getImageData(0, 0, 32, 32).data;
  let sum = 0;
  for (let i = 0; i < data.length; i += 4) sum = (sum * 31 + data[i] + data[i + 1] + data[i + 2]) % 1000000007;
  return sum;
});
"""

#: how many pixels of the score chart differ from its background, and the points drawn
CHART_INK = """
const canvas = document.querySelector('canvas.chart');
if (!canvas || !canvas.width) return [0, 0];
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let ink = 0;
for (let i = 0; i < data.length; i += 4) if (data[i] !== 17 || data[i + 1] !== 17 || data[i + 2] !== 17) ink++;
return [ink, Number(canvas.dataset.drawn || 0)];
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = start_browser()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def page(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    """A daemon with its live page, and a browser showing it."""
    driver = browser
    folder = tmp_path_factory.mktemp("web-daemon")
    port = free_port()
    config = config_text(
        f"tcp://127.0.0.1:{free_port()}",
        [("cam0", "synthetic:?fps=20&anomaly_rate=0.08&seed=5")],
        {"web": {"enabled": True, "port": port, "image_fps": 8.0}},
    )
    with Daemon(folder, config) as daemon:
        daemon.wait_log(r"live page on http://127\.0\.0\.1:\d+/", timeout=60)
        daemon.wait_log(r"worker ready", timeout=120)
        url = f"http://127.0.0.1:{port}/"
        driver.get(url + "#camera=cam0")  # the detail view: frame, forecast, error, chart
        yield driver, url
        assert "Traceback" not in daemon.log()


def test_images_change_chart_draws_and_events_appear(page: tuple[Any, str]) -> None:
    driver, _url = page
    first = wait_until(driver, lambda d: (p := d.execute_script(PANEL_PRINTS)) and all(
        v is not None for v in p) and p, 60, "the three images to show")
    wait_until(driver, lambda d: all(
        a != b for a, b in zip(first, d.execute_script(PANEL_PRINTS) or first, strict=True)),
        30, "each of the three images to change")
    ink, _drawn = wait_until(driver, lambda d: (c := d.execute_script(CHART_INK))[1] > 20 and c,
                             30, "the score chart to draw")
    assert ink > 500, ink
    text = wait_until(driver, lambda d: d.execute_script(
        "const e = document.querySelector('#events li.event'); return e && e.textContent"),
        60, "an anomaly event on the page")
    assert "cam0" in text and "peak" in text
    state = driver.find_element("css selector", "#detail .health").text
    assert "fps" in state and "dropped" in state and "state resets" in state
    assert driver.find_element("css selector", "#detail .source").text == "live"
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOT))


def _download_and_count_frames(driver: Any, url: str, folder: Path) -> None:
    """The first finished clip on the page downloads and decodes with the number of frames
    its sidecar says (when it says)."""
    href = wait_until(driver, lambda d: d.execute_script(
        "const a = document.querySelector('#events a.clip'); return a && a.href"),
        60, "a finished clip")
    assert href.startswith(url + "events/")
    clip = folder / Path(href).name
    with urllib.request.urlopen(href, timeout=10) as response, clip.open("wb") as out:
        shutil.copyfileobj(response, out)
    capture = cv2.VideoCapture(str(clip))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    assert frames > 0, f"{href} does not decode"
    sidecar = href.rsplit(".", 1)[0] + ".json"
    with urllib.request.urlopen(sidecar, timeout=10) as response:
        expected = json.loads(response.read()).get("frames")
    if isinstance(expected, int):
        assert frames == expected


def test_event_cards_show_snapshot_and_clip_of_finished_recordings(
    browser: Any, tmp_path: Path
) -> None:
    """The page's event cards with recordings, on the page server fed event messages that
    name a snapshot and a clip (as the recorder's do), from a real recordings folder."""
    import numpy as np

    from tests.test_web import page_server

    events = tmp_path / "events"
    (events / "cam0").mkdir(parents=True)
    picture = np.full((120, 160, 3), 80, np.uint8)
    cv2.rectangle(picture, (40, 30), (100, 90), (0, 0, 255), 3)
    cv2.imwrite(str(events / "cam0" / "e1.jpg"), picture)
    writer = cv2.VideoWriter(str(events / "cam0" / "e1.mp4"), cv2.VideoWriter_fourcc(*"mp4v"),
                             10, (160, 120))
    for _ in range(12):
        writer.write(picture)
    writer.release()
    (events / "cam0" / "e1.json").write_text(json.dumps({"frames": 12}))
    with page_server(tmp_path, events_dir=events) as server:
        browser.get(server.url())
        wait_until(browser, lambda d: d.execute_script(
            "return document.querySelector('#connection').textContent === 'live'"), 20,
            "the page to connect")
        for state, seq, more in (("start", 10, {}),
                                 ("end", 40, {"clip": "cam0/e1.mp4", "snapshot": "cam0/e1.jpg"}),
                                 ("start", 60, {"clip": "cam0/e2.mp4"})):
            header = {"v": 1, "camera": "cam0", "seq": seq, "ts": 1.0e9 + seq, "state": state,
                      "peak_score": 5.0, **more}
            server.xpub.send_multipart([b"event/cam0", json.dumps(header).encode()])
        cards = wait_until(browser, lambda d: (c := d.execute_script(
            "return Array.from(document.querySelectorAll('#events li.event')).map((e) => "
            "[e.textContent, Boolean(e.querySelector('img.snapshot') && "
            "e.querySelector('img.snapshot').naturalWidth)])")) and len(c) == 2 and c[1][1]
            and c, 20, "two event cards, the finished one with its snapshot")
        assert "clip: recording" in cards[0][0]  # no sidecar yet
        _download_and_count_frames(browser, server.url(), tmp_path)


def test_event_clip_downloads_and_decodes(page: tuple[Any, str], tmp_path: Path) -> None:
    driver, url = page
    driver.get(url)  # the events so far come with the page's first feed message
    # the event list is redrawn on every change: ask the page, never hold its elements
    has_clip = wait_until(driver, lambda d: d.execute_script(
        "const e = document.querySelector('#events li.event.closed');"
        "return e && [Boolean(e.querySelector('a.clip, .muted'))]"),
        60, "an anomaly event that ended")[0]
    assert has_clip, "the daemon's ended event names no clip"
    _download_and_count_frames(driver, url, tmp_path)
    driver.save_screenshot(str(SCREENSHOT))  # now with an event's snapshot and clip link
