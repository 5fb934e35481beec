"""End to end in headless Chromium: ``python app.py`` in a subprocess, driven with Playwright.

Needs the system Chromium at /usr/bin/chromium (nothing is installed by the test). Screenshots go to
artifacts/screenshots/.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "artifacts" / "screenshots"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]

if not CHROMIUM.exists():
    pytest.skip("system Chromium not found at /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

from uihelpers import LIME_SAMPLES, free_port  # noqa: E402


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"app exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"app did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    from spine_ui.bundle.resolve import ensure_untrained

    ensure_untrained(ROOT / "models" / "untrained")  # reuse (or build once) the bundle the app will open
    tmp = tmp_path_factory.mktemp("app")
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               SPINE_MODELS_DIR=str(ROOT / "models"), SPINE_BUNDLE="untrained", SPINE_LIME_SAMPLES=str(LIME_SAMPLES),
               GRADIO_TEMP_DIR=str(tmp / "gradio"), PYTHONUNBUFFERED="1",
               # tests/support/sitecustomize.py records (and refuses) any non-loopback connection attempt
               PYTHONPATH=f"{ROOT / 'tests' / 'support'}{os.pathsep}{ROOT}", SPINE_NET_LOG=str(tmp / "net.log"))
    log = tmp / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_http(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    net = tmp / "net.log"
    assert not net.exists(), f"the app tried to reach the network: {net.read_text()[:500]}"


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, app_url):
    ctx = browser.new_context(viewport={"width": 1360, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    pg.goto(app_url)
    pg.wait_for_selector("#sx-upload")
    yield pg
    ctx.close()


def _shot(pg, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / name), full_page=True)


def _image_loaded(pg, selector: str) -> bool:
    return pg.eval_on_selector(selector, "img => img.complete && img.naturalWidth > 16 && img.offsetWidth > 16")


@pytest.fixture(scope="module")
def abnormal_dicom(tmp_path_factory) -> Path:
    from spine_ui.synth.dicom_writer import write_dicom
    from spine_ui.synth.phantom import render_spine, to_stored

    img, _ = render_spine(np.random.default_rng(7), ["Surgical implant", "Vertebral collapse"], height=768,
                          view="lateral")
    return write_dicom(tmp_path_factory.mktemp("dcm") / "Doe_Jane.dcm", to_stored(img, 12, monochrome1=True),
                       bits_stored=12, photometric="MONOCHROME1", modality="DX", body_part="LSPINE",
                       extra={"PatientName": "Doe^Jane", "PatientID": "P-77"})


@pytest.fixture(scope="module")
def colour_photo(tmp_path_factory) -> Path:
    import cv2
    from skimage import data

    p = tmp_path_factory.mktemp("photo") / "holiday.png"
    cv2.imwrite(str(p), data.astronaut()[:, :, ::-1])
    return p


def test_dicom_full_run_in_browser(page, abnormal_dicom):
    banner = page.locator(".sx-banner")
    assert banner.is_visible() and "UNTRAINED MODEL WEIGHTS" in banner.inner_text()
    status = page.locator("#sx-status").inner_text()
    assert ("CPU onnxruntime" in status or "GPU torch" in status) and "untrained" in status
    assert "Research use only" in page.content() and "AGPL-3.0" in page.content()

    page.get_by_label("Always run detector and explanations").check()
    page.locator("#sx-upload input[type=file]").set_input_files(str(abnormal_dicom))

    verdict = page.locator("#sx-triage .sx-verdict")
    verdict.wait_for()
    triage = page.locator("#sx-triage").inner_text()
    assert verdict.inner_text() in ("ABNORMAL", "NORMAL")
    assert "P(abnormal) =" in triage and "gate 0.478" in triage
    for name in ("DenseNet-121", "EfficientNetV2-S", "ResNet-50"):
        assert name in triage
    assert "weight 0.42" in triage and "weight 0.32" in triage and "weight 0.26" in triage

    page.wait_for_selector("#sx-boxes img", state="attached")
    page.locator("#sx-explain-panels").wait_for()
    page.locator("#sx-explain-panels").scroll_into_view_if_needed()  # below the viewer; images load lazily
    page.wait_for_selector("#sx-cam img")
    assert page.locator("#sx-legend .sx-legend-item").count() == 7
    assert "Vertebral collapse" in page.locator("#sx-legend").inner_text()
    _shot(page, "browser_lime_running.png")

    page.wait_for_selector("#sx-lime img", timeout=120_000)
    page.wait_for_function("document.querySelector('#sx-explain-note') && "
                           "document.querySelector('#sx-explain-note').innerText.includes('samples')")
    for sel in ("#sx-boxes img", "#sx-cam img", "#sx-lime img"):
        assert _image_loaded(page, sel), sel
    cam_box, lime_box = page.locator("#sx-cam").bounding_box(), page.locator("#sx-lime").bounding_box()
    assert abs(cam_box["y"] - lime_box["y"]) < 40 and lime_box["x"] > cam_box["x"] + cam_box["width"] - 5
    assert page.locator("#sx-report").is_visible()
    assert "Doe" not in page.locator("#sx-triage").inner_text()

    page.get_by_label("ResNet-50").check()  # per-model Grad-CAM
    page.wait_for_timeout(1500)
    assert _image_loaded(page, "#sx-cam img")
    _shot(page, "browser_abnormal_full.png")


def test_colour_photo_is_rejected_in_browser(page, colour_photo):
    page.locator("#sx-upload input[type=file]").set_input_files(str(colour_photo))
    err = page.locator("#sx-error .sx-error")
    err.wait_for()
    text = err.inner_text()
    assert "Input rejected" in text and "colour photograph" in text
    assert page.locator("#sx-triage .sx-verdict").count() == 0
    assert not page.locator("#sx-detect").is_visible() and not page.locator("#sx-explain-panels").is_visible()
    _shot(page, "browser_rejected_photo.png")


def test_example_can_be_run_twice(page, app_url):
    """Examples go through the same upload path (whose temp copy is deleted) and still work a second time."""
    for attempt in range(2):
        page.get_by_text("Phantom PNG, osteophytes + disc narrowing (lateral)").click()
        page.locator("#sx-triage .sx-verdict").wait_for()
        if attempt == 0:
            _shot(page, "browser_example_png.png")
            page.goto(app_url)
            page.wait_for_selector("#sx-upload")


# ---- the image viewer and the PDF report ------------------------------------------------------------

def _viewer_pixel(pg, sel: str) -> list[int]:
    return pg.eval_on_selector(sel + " canvas", "c => { const r = c.width / 2, s = c.height / 2;"
                               " return Array.from(c.getContext('2d').getImageData(r, s, 1, 1).data); }")


def _frame(pg) -> None:
    pg.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def test_viewer_shows_every_study_with_window_level_zoom_and_pdf(page, abnormal_dicom, tmp_path):
    from pdftext import pdf_text

    page.locator("#sx-upload input[type=file]").set_input_files(str(abnormal_dicom))
    page.locator("#sx-triage .sx-verdict").wait_for()
    verdict = page.locator("#sx-triage .sx-verdict").inner_text()
    page.wait_for_function("document.querySelector('#sx-viewer .sxv').dataset.ready === '1'")
    page.locator("#sx-pdf").wait_for(state="visible")
    assert "Stage timings" in page.locator("#sx-triage").inner_text()
    assert "modality DX" in page.locator("#sx-triage").inner_text()  # Modality / body part of the file
    assert "no metrics: untrained" in page.locator("#sx-status").inner_text()
    _frame(page)
    before = _viewer_pixel(page, "#sx-viewer")
    level = page.locator("#sx-viewer").get_by_role("slider", name="Level", exact=True)
    level.evaluate("(e) => { e.value = String(Number(e.min) + 0.9 * (Number(e.max) - Number(e.min)));"
                   " e.dispatchEvent(new Event('input', {bubbles: true})); }")
    _frame(page)
    assert _viewer_pixel(page, "#sx-viewer") != before  # window/level on the original values
    full = page.eval_on_selector("#sx-viewer .sxv", "e => e.dataset.region")
    page.locator("#sx-viewer").get_by_role("button", name="Zoom in").click()
    _frame(page)
    assert page.eval_on_selector("#sx-viewer .sxv", "e => e.dataset.region") != full
    _shot(page, "browser_viewer.png")
    with page.expect_download() as info:
        page.locator("#sx-pdf").click()
    pdf = tmp_path / "report.pdf"
    info.value.save_as(pdf)
    text = pdf_text(pdf.read_bytes())
    assert f"{verdict} - P(abnormal)" in text and "Doe" not in text


def test_rejected_photo_is_still_shown_in_the_viewer(page, colour_photo):
    page.locator("#sx-upload input[type=file]").set_input_files(str(colour_photo))
    page.locator("#sx-error .sx-error").wait_for()
    page.wait_for_function("document.querySelector('#sx-viewer .sxv').dataset.ready === '1'")
    assert "Rejected" in page.locator("#sx-viewer .sxv-note").inner_text()
