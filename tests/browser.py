"""Headless Chromium driven by selenium, for the tests that show a page in a real browser.
A test that asks for one is skipped, saying what to install, where selenium, chromium or
chromedriver is missing."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def start_browser(extra_arguments: Iterable[str] = ()) -> Any:
    """A headless Chromium with a 1400x1000 window, and ``extra_arguments`` on its command
    line; skips the test where selenium, chromium or chromedriver is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                    "(pip install '.[test]')")
    for program, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not program.exists():
            pytest.skip(f"{program} not found: install the Debian package {package} to run "
                        f"the live page in a headless browser")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1400,1000", *extra_arguments):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


def wait_until(driver: Any, condition: Any, seconds: float, what: str) -> Any:
    """The first true value of ``condition(driver)`` within ``seconds`` (polled every
    0.2 s); fails saying ``what`` did not happen."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.2).until(condition, message=what)
