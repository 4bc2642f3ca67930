"""A real headless Chromium for the console tests: Debian's ``chromium`` driven by its ``chromedriver``
through Selenium (no browser download; imported by name from tests/attacker/console/**).

``start_browser`` skips the calling test, with the reason, where either binary is missing; ``.ci/run``
installs both (``apt-get install chromium chromium-driver``).
"""

from __future__ import annotations

import shutil

import pytest

BROWSER_NAMES = ("chromium", "chromium-browser")
DRIVER_NAMES = ("chromedriver",)
PAGE_LOAD_TIMEOUT_S = 60


def _which(names: tuple[str, ...]) -> str | None:
    return next((path for name in names if (path := shutil.which(name))), None)


def start_browser(width: int = 1280, height: int = 900):  # -> selenium WebDriver (imported lazily)
    """A headless Chromium session; the caller quits it."""
    browser, driver = _which(BROWSER_NAMES), _which(DRIVER_NAMES)
    if browser is None or driver is None:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver (.ci/run does) to run the "
                    "console's browser tests")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-extensions", "--no-first-run", "--password-store=basic", f"--window-size={width},{height}"):
        options.add_argument(flag)
    session = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    session.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)
    return session
