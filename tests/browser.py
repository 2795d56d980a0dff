"""Headless Chromium driven by Selenium, offline: pages people look at are tested in a real browser.

Debian's `chromium` and `chromium-driver` packages (`apt-get install chromium chromium-driver`) and Selenium (the
`dev` extra). Where one is missing the browser tests are skipped with the reason, except where
MINIGPT_REQUIRE_BROWSER=1 (CI sets it): there they fail, so a broken install cannot pass as a skip.
"""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

REQUIRE = "MINIGPT_REQUIRE_BROWSER"
BROWSERS = ("chromium", "chromium-browser")
DRIVERS = ("chromedriver",)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # no host name resolves: nothing can be fetched
)


def missing() -> str:
    """Why the browser cannot run here, or "" when it can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return 'Selenium is not installed: pip install -e ".[dev]"'
    if not any(shutil.which(name) for name in BROWSERS) or not any(shutil.which(name) for name in DRIVERS):
        return "chromium or chromedriver is not on PATH: apt-get install chromium chromium-driver"
    return ""


def browser_or_skip() -> None:
    """Skip the calling test module where the browser is missing; fail instead where MINIGPT_REQUIRE_BROWSER is
    set."""
    import pytest

    reason = missing()
    if reason and os.environ.get(REQUIRE):
        pytest.fail(f"{REQUIRE} is set but the browser tests cannot run: {reason}", pytrace=False)
    if reason:
        pytest.skip(reason, allow_module_level=True)


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 900, scale: float = 1.0) -> Iterator:
    """A Selenium driver for headless Chromium with a fresh profile, collecting the console (`get_log("browser")`)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = next(shutil.which(name) for name in BROWSERS if shutil.which(name))
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        # The driver's path given: Selenium does not look for (or download) one.
        service = Service(next(shutil.which(name) for name in DRIVERS if shutil.which(name)))
        driver = webdriver.Chrome(options=options, service=service)
        # The viewport itself this size (--window-size counts the window's frame too).
        metrics = {"width": width, "height": height, "deviceScaleFactor": scale, "mobile": False}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        try:
            yield driver
        finally:
            driver.quit()
