"""The viewer's canvas script (spine_ui/ui/viewer.js) in headless Chromium, without the app: a page holds the
viewer's template, the script runs on a value built by the Python side, and the tests read canvas pixels."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("system Chromium not found at /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

from spine_ui.core.decode import decode_bytes  # noqa: E402
from spine_ui.core.display import client_payload, make_display  # noqa: E402
from spine_ui.ui.viewer import CSS, JS, TEMPLATE, heat_rgba, _png_data_url  # noqa: E402

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
BOX = [40.0, 300.0, 160.0, 420.0]  # original pixels of the 200 x 600 test image


def _value() -> dict:
    arr = np.tile(np.linspace(0, 4095, 200, dtype=np.float64)[None, :], (600, 1)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    disp = make_display(decode_bytes(buf.getvalue()))
    heat = np.zeros((60, 20), np.float32)
    heat[:30] = 1.0
    return {"key": "k1", "image": client_payload(disp), "detector_ran": True, "note": "test study",
            "lesions": [{"name": "Surgical implant", "colour": "#f0e442", "confidence": 0.9, "box": BOX},
                        {"name": "Osteophytes", "colour": "#e69f00", "confidence": 0.5, "box": [10, 10, 50, 60]}],
            "cams": [{"id": "fused", "name": "Ensemble (fused)", "src": _png_data_url(heat_rgba(heat))}],
            "lime": None}


@pytest.fixture(scope="module")
def page():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        pg = browser.new_page(viewport={"width": 1000, "height": 900})
        requests: list[str] = []
        pg.on("request", lambda r: requests.append(r.url))
        pg.set_content(f"<html><head><style>#host {{ {CSS} }}</style></head><body><div id='host'>{TEMPLATE}</div>"
                       "</body></html>")
        pg.evaluate("([js, value]) => { const element = document.getElementById('host');"
                    " const props = {value: value}; new Function('element', 'props', 'watch', js)(element, props, null); }",
                    [JS, _value()])
        pg.wait_for_function("document.querySelector('.sxv').dataset.ready === '1'")
        pg.wait_for_timeout(200)
        yield pg
        assert [u for u in requests if not u.startswith(("data:", "about:"))] == []  # no network fetches
        browser.close()


def pixel(pg, x_img: float, y_img: float) -> list[int]:
    """RGBA of the canvas at an original-image point, through the viewer's current transform."""
    return pg.evaluate("""([x, y]) => { const el = document.getElementById('host'); const st = el.sxViewer.state;
        const k = st.img.w / st.img.origW, sc = st.fit * st.zoom, r = window.devicePixelRatio || 1;
        const c = el.querySelector('canvas');
        return Array.from(c.getContext('2d').getImageData(Math.round((st.tx + x * k * sc) * r),
                                                          Math.round((st.ty + y * k * sc) * r), 1, 1).data); }""",
                       [x_img, y_img])


def frame(pg) -> None:
    pg.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def region(pg) -> list[int]:
    return [int(v) for v in pg.eval_on_selector(".sxv", "e => e.dataset.region").split(",")]


def test_controls_are_named_for_screen_readers(page):
    for role, name in (("button", "Zoom in"), ("button", "Zoom out"), ("button", "Reset view"),
                       ("slider", "Window"), ("slider", "Level"), ("combobox", "Window preset"),
                       ("checkbox", "Lesion boxes"), ("checkbox", "Grad-CAM"), ("checkbox", "LIME"),
                       ("slider", "Grad-CAM opacity")):
        assert page.get_by_role(role, name=name, exact=True).count() == 1, (role, name)
    assert page.get_by_role("img", name="Radiograph viewer", exact=False).count() == 1
    assert page.locator(".sxv-note").inner_text() == "test study"
    presets = page.locator(".sxv-preset option").all_inner_texts()
    assert presets[1] == "As analysed (full bit range)" and "Auto (0.5-99.5 %)" in presets


def test_window_level_changes_displayed_pixels(page):
    page.get_by_role("button", name="Reset view").click()
    frame(page)
    before = pixel(page, 100, 100)
    assert 100 < before[0] < 160 and before[0] == before[1] == before[2]  # mid-grey at the ramp's middle
    level = page.get_by_role("slider", name="Level", exact=True)
    level.evaluate("(e) => { e.value = '3000'; e.dispatchEvent(new Event('input', {bubbles: true})); }")
    frame(page)
    after = pixel(page, 100, 100)
    assert after[0] < before[0] - 40  # a higher level darkens the middle of the ramp
    assert page.locator(".sxv-preset").input_value() == ""  # now a custom window
    page.locator(".sxv-preset").select_option(label="As analysed (full bit range)")
    frame(page)
    assert abs(pixel(page, 100, 100)[0] - before[0]) <= 1
    page.get_by_role("checkbox", name="Invert", exact=True).check()
    frame(page)
    assert abs(pixel(page, 100, 100)[0] - (255 - before[0])) <= 2
    page.get_by_role("checkbox", name="Invert", exact=True).uncheck()


def test_zoom_buttons_keyboard_and_wheel_change_the_visible_region(page):
    page.get_by_role("button", name="Reset view").click()
    frame(page)
    full = region(page)
    assert full[1] == 0 and full[3] == 600
    page.get_by_role("button", name="Zoom in").click()
    page.get_by_role("button", name="Zoom in").click()
    frame(page)
    zoomed = region(page)
    assert zoomed[3] - zoomed[1] < 0.7 * (full[3] - full[1])
    page.get_by_role("img", name="Radiograph viewer", exact=False).focus()
    page.keyboard.press("+")
    frame(page)
    assert float(page.eval_on_selector(".sxv", "e => e.dataset.zoom")) == pytest.approx(1.25 ** 3, rel=1e-3)
    page.keyboard.press("ArrowDown")  # pan: the view moves down the image
    frame(page)
    assert region(page)[1] > zoomed[1]
    page.keyboard.press("0")
    frame(page)
    assert region(page) == full
    box = page.locator("canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -300)
    frame(page)
    assert float(page.eval_on_selector(".sxv", "e => e.dataset.zoom")) > 1.3


def test_box_overlay_toggles_and_lesion_row_centres_and_highlights(page):
    page.get_by_role("button", name="Reset view").click()
    frame(page)
    edge = (BOX[0], (BOX[1] + BOX[3]) / 2)
    assert pixel(page, *edge)[:3] != pixel(page, edge[0], 200)[:3]  # box colour on the edge
    on = pixel(page, *edge)
    assert on[0] - on[2] > 50 and on[1] - on[2] > 50  # yellow (#f0e442), blended with grey at the edge
    page.get_by_role("checkbox", name="Lesion boxes").uncheck()
    frame(page)
    off = pixel(page, *edge)
    assert off[0] == off[1] == off[2]  # plain grey: the box is gone
    page.get_by_role("checkbox", name="Lesion boxes").check()
    row = page.get_by_role("button", name="Centre on Surgical implant", exact=False)
    row.click()
    frame(page)
    assert row.get_attribute("aria-selected") == "true"
    assert page.eval_on_selector(".sxv", "e => e.dataset.selected") == "0"
    x0, y0, x1, y1 = region(page)
    assert abs((x0 + x1) / 2 - 100) < 3 and abs((y0 + y1) / 2 - 360) < 3  # centred on the box
    assert y1 - y0 < 600 and float(page.eval_on_selector(".sxv", "e => e.dataset.zoom")) > 1
    page.get_by_role("button", name="Centre on Osteophytes", exact=False).press("Enter")
    frame(page)
    assert page.eval_on_selector(".sxv", "e => e.dataset.selected") == "1"


def test_gradcam_overlay_fades_with_its_opacity(page):
    page.get_by_role("button", name="Reset view").click()
    frame(page)
    plain = pixel(page, 100, 100)
    page.get_by_role("checkbox", name="Grad-CAM", exact=True).check()
    frame(page)
    hot = pixel(page, 100, 100)  # top half of the map is 1.0: dark red in jet
    assert hot[0] > hot[2] + 40
    page.get_by_role("slider", name="Grad-CAM opacity").evaluate(
        "(e) => { e.value = '0'; e.dispatchEvent(new Event('input', {bubbles: true})); }")
    frame(page)
    assert pixel(page, 100, 100) == plain
    page.get_by_role("checkbox", name="Grad-CAM", exact=True).uncheck()


def test_same_study_update_keeps_view_and_new_study_resets(page):
    page.get_by_role("button", name="Zoom in").click()
    frame(page)
    zoom = page.eval_on_selector(".sxv", "e => e.dataset.zoom")
    value = _value()
    value["image"] = None  # a later stage of the same study: the page keeps its image
    value["lesions"] = value["lesions"][:1]
    page.evaluate("(v) => document.getElementById('host').sxViewer.load(v)", value)
    frame(page)
    assert page.eval_on_selector(".sxv", "e => e.dataset.ready") == "1"
    assert page.eval_on_selector(".sxv", "e => e.dataset.zoom") == zoom
    assert page.locator(".sxv-lesions tbody tr").count() == 1
    page.evaluate("() => document.getElementById('host').sxViewer.load(null)")
    assert page.eval_on_selector(".sxv", "e => e.dataset.ready") == "0"
    assert page.locator(".sxv-empty").is_visible()
    page.evaluate("(v) => document.getElementById('host').sxViewer.load(v)", _value())
    page.wait_for_function("document.querySelector('.sxv').dataset.ready === '1'")
