"""Headless Chromium (Debian's chromium and chromium-driver) through Selenium, for tests of vitkit's pages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def headless_chromium(width: int = 1280, height: int = 1000):
    """A Selenium driver for headless Chromium (the caller quits it); skips the test when Selenium or
    Chromium is not installed."""
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        pytest.skip("Debian chromium and chromium-driver are not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path="/usr/bin/chromedriver"), options=options)


def artifacts_dir() -> Path:
    """Where tests leave screenshots to look at: $VITKIT_TEST_ARTIFACTS, else test-artifacts/."""
    artifacts = Path(os.environ.get("VITKIT_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    return artifacts
