"""`lava-allnet report`: one self-contained report.html, opened in a real headless Chromium.

Chromium and ChromeDriver come from Debian's packages (chromium, chromium-driver), which the CI
setup (.ci/run) installs; selenium drives them.
"""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXE = str(Path(sys.executable).parent / "lava-allnet")
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def report_dir(calibrated):
    out = calibrated["root"] / "report"
    r = subprocess.run([EXE, "report", str(calibrated["model"]), str(calibrated["data"]), "--split",
                        str(calibrated["split"]), "--out", str(out), "--robustness-images", "8", "--gallery", "2",
                        "--json"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout)


def test_report_is_one_self_contained_page(report_dir):
    out, rep = report_dir
    assert [p.name for p in out.iterdir()] == ["report.html"] and rep["written"] == [str(out / "report.html")]
    page = (out / "report.html").read_text()
    # nothing to fetch: every image is a data: URI, no script, style sheet or link elsewhere
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "<script" not in page and "@import" not in page
    for section in ("Model", "Metrics", "Robustness", "Activity and energy", "Grad-CAM"):
        assert f"<h2>{section}</h2>" in page, section
    assert page.count("not a diagnostic device") == 2
    assert f"{rep['accuracy']:.4f}" in page and "Wilson" in page and "expected calibration error" in page
    # confusion, reliability, risk-coverage, 6 robustness curves, spikes, energy, and the gallery
    assert page.count("<img ") >= 3 + 6 + 2 + 1


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="no Chromium: install Debian's chromium and chromium-driver (.ci/run does)")
def test_report_opens_in_headless_chromium_without_errors(report_dir, tmp_path):
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    out, _ = report_dir
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.get((out / "report.html").as_uri())
        # polled with a deadline: get() can return while the page's many embedded images still decode
        WebDriverWait(driver, 120, poll_frequency=0.1).until(
            lambda d: d.execute_script("return document.readyState") == "complete")
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt]);")
        assert len(images) >= 12
        bad = [alt for ok, w, h, alt in images if not (ok and w > 0 and h > 0)]
        assert not bad, f"images that did not decode: {bad}"
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert not errors, errors
        shot = Image.open(io.BytesIO(base64.b64decode(driver.get_screenshot_as_base64()))).convert("L")
        pixels = np.asarray(shot, dtype=np.float64)
        assert pixels.std() > 20 and (pixels < 128).mean() > 0.005, "the screenshot is blank"
        text = driver.find_element("tag name", "body").text
        assert "not a diagnostic device" in text and "accuracy" in text
    finally:
        driver.quit()
