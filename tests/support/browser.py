"""Headless Chromium for the status page's browser tests: Debian's `chromium` and
`chromium-driver` packages (.ci/run installs them), driven by selenium. Nothing is
downloaded: the driver's path is given, so selenium's manager never looks for one.

When either is missing the test is skipped with the reason, except under CI=true, where a
missing tool is a failure (README), as for PostgreSQL and Dovecot.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver

CHROMIUM = ("chromium", "chromium-browser")


def _require(names: tuple[str, ...], package: str) -> str:
    for name in names:
        found = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/bin:/usr/lib/chromium")
        if found:
            return found
    reason = f"{names[0]} not found: apt-get install {package} (Debian)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: a missing tool is a failure)")
    pytest.skip(reason)


@contextmanager
def chromium(width: int = 1280, height: int = 1000) -> Iterator[WebDriver]:
    """A headless Chromium WebDriver (selenium), quit on exit."""
    binary = _require(CHROMIUM, "chromium")
    driver_path = _require(("chromedriver",), "chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
