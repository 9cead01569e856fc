"""The report in a real browser: headless Chromium loads it without errors and draws every image.

Uses the system's ``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` (``make browser`` installs them on
Debian/Ubuntu); Selenium Manager is never asked to download anything. Set ``MEMSCAN_SAVE_SCREENSHOT=1``
to also copy the screenshot to ``docs/report-screenshot.png``.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest

from memscan.report.html import write_report
from memscan.scanning.options import ScanOptions
from memscan.scanning.scanner import scan

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "report-screenshot.png"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason=f"{CHROMIUM} or {CHROMEDRIVER} is missing (run `make browser` as root to install them)",
    ),
]


@pytest.fixture(scope="module")
def report(tmp_path_factory, planted_cohort) -> Path:
    root = planted_cohort(
        tmp_path_factory.mktemp("browser"),
        subjects=3,
        shape=(48, 48, 16),
        size=48,
        n_copies=8,
        n_novel=6,
        seed=2,
    )
    scan(
        root / "ds" / "train",
        root / "syn",
        root / "run",
        ScanOptions(flips=True, max_shift=3, device="cpu", threshold=0.97),
        command="memscan scan ds/train syn --out run --flips --max-shift 3 --threshold 0.97",
    )
    return write_report(root / "run", max_gallery=8, per_page=4)


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
    ):
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        drv.set_window_size(1280, 1000)
        yield drv
    finally:
        drv.quit()


def _distinct_colours(png: bytes) -> int:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    return len(colours) if colours is not None else 1 << 20


def test_report_renders_in_chromium(report, driver, tmp_path):
    driver.get(report.as_uri())
    assert "memscan report" in driver.title
    driver.execute_script("return document.readyState")
    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, severe
    widths = driver.execute_script(
        "return Array.from(document.querySelectorAll('img')).map(i => [i.getAttribute('src'), i.complete, "
        "i.naturalWidth])"
    )
    gallery = [w for w in widths if w[0].startswith("figures/pairs/")]
    assert len(gallery) == 4, widths
    assert all(complete and width > 0 for _, complete, width in widths), widths
    # a full-page screenshot: resize the window to the page
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(1280, min(max(height, 800), 8000))
    png = driver.get_screenshot_as_png()
    shot = tmp_path / "report-screenshot.png"
    shot.write_bytes(png)
    assert png.startswith(b"\x89PNG") and _distinct_colours(png) > 16
    if os.environ.get("MEMSCAN_SAVE_SCREENSHOT"):
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOT)


def test_gallery_page_renders_in_chromium(report, driver):
    driver.set_window_size(1280, 1000)
    driver.get((report.parent / "gallery-2.html").as_uri())
    assert not [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    widths = driver.execute_script(
        "return Array.from(document.querySelectorAll('img')).map(i => i.naturalWidth)"
    )
    assert len(widths) == 4 and all(w > 0 for w in widths), widths
