"""The worklist tab end to end in headless Chromium: upload three studies at once, read the sorted table, open
the top one, step to the next, mark it, download the CSV. Reuses the app launch and browser fixtures of
tests/test_browser.py (``python app.py`` in a subprocess, system Chromium). Screenshots:
artifacts/screenshots/worklist_*.png."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.browser

# The shared launch: app_url starts `python app.py` (network-free, its own gradio temp dir) for this module.
from test_browser import _shot, abnormal_dicom, app_url, browser, colour_photo, page  # noqa: E402,F401

STUDY_TIMEOUT_MS = 240_000


@pytest.fixture(scope="module")
def plain_dicom(tmp_path_factory) -> Path:
    from spine_ui.synth.dicom_writer import write_dicom
    from spine_ui.synth.phantom import render_spine, to_stored

    img, _ = render_spine(np.random.default_rng(3), [], height=640)
    return write_dicom(tmp_path_factory.mktemp("dcm2") / "plain.dcm", to_stored(img, 12), bits_stored=12,
                       modality="DX", body_part="SPINE")


def _rows(pg) -> list[list[str]]:
    rows = pg.locator("#sx-wl-table [role=row]")
    out = []
    for i in range(1, rows.count()):  # row 0 is the header
        out.append([c.inner_text().strip() for c in rows.nth(i).locator("[role=gridcell]").all()])
    return out


def _wait_text(pg, selector: str, text: str, timeout: float = 60_000) -> None:
    pg.wait_for_function("([s, t]) => { const e = document.querySelector(s); return e && e.innerText.includes(t); }",
                         arg=[selector, text], timeout=timeout)


def test_worklist_upload_open_review_download(page, abnormal_dicom, plain_dicom, colour_photo):
    from spine_ui.services.batch import read_reviews

    page.get_by_role("tab", name="Worklist").click()
    page.locator("#sx-wl-upload input[type=file]").set_input_files(
        [str(abnormal_dicom), str(plain_dicom), str(colour_photo)])

    # the table fills in; when done: three rows, analysed ones by probability, the rejected photo last
    page.wait_for_function("() => { const t = document.querySelector('#sx-wl-status').innerText;"
                           " return t.includes('3 studies') && !t.includes('Analysing'); }", timeout=STUDY_TIMEOUT_MS)
    rows = _rows(page)
    assert len(rows) == 3
    assert {r[1] for r in rows} == {"Doe_Jane.dcm", "plain.dcm", "holiday.png"}
    assert rows[2][1] == "holiday.png" and rows[2][2] == "rejected" and "colour photograph" in rows[2][5]
    probs = [float(r[3]) for r in rows[:2]]
    assert probs == sorted(probs, reverse=True)
    assert all(r[2] == ("ABNORMAL" if float(r[3]) >= 0.478 else "normal") for r in rows[:2])
    content = page.content()
    assert "Doe^Jane" not in content and "P-77" not in content  # file names only, never DICOM identifiers
    assert page.locator("#sx-wl-csv").is_visible() and page.locator("#sx-wl-json").is_visible()
    _shot(page, "worklist_table.png")

    # open the top study: the single-study view, probability against the gate, then LIME beside Grad-CAM
    page.locator("#sx-wl-table [role=row]").nth(1).click()
    page.locator("#sx-wl-triage .sx-verdict").wait_for()
    _wait_text(page, "#sx-wl-nav", "Case 1 of 3")
    assert rows[0][1] in page.locator("#sx-wl-nav").inner_text()
    triage = page.locator("#sx-wl-triage").inner_text()
    assert f"P(abnormal) = {rows[0][3]}" in triage and "gate 0.478" in triage
    page.locator("#sx-wl-explain-panels").wait_for()
    page.locator("#sx-wl-explain-panels").scroll_into_view_if_needed()  # below the viewer; images load lazily
    page.wait_for_selector("#sx-wl-cam img")
    page.wait_for_selector("#sx-wl-lime img", timeout=120_000)
    cam_box, lime_box = page.locator("#sx-wl-cam").bounding_box(), page.locator("#sx-wl-lime").bounding_box()
    assert abs(cam_box["y"] - lime_box["y"]) < 40 and lime_box["x"] > cam_box["x"] + cam_box["width"] - 5
    _shot(page, "worklist_case.png")

    # next study, without re-uploading
    page.locator("#sx-wl-next").click()
    _wait_text(page, "#sx-wl-nav", "Case 2 of 3")
    _wait_text(page, "#sx-wl-triage", f"P(abnormal) = {rows[1][3]}")
    assert rows[1][1] in page.locator("#sx-wl-nav").inner_text()

    # mark it: agree + comment, saved into the table
    page.locator("#sx-wl-review").get_by_label("Agree", exact=True).check()
    page.locator("#sx-wl-comment textarea").fill("Agree, implant noted; see L4")
    page.locator("#sx-wl-save").click()
    _wait_text(page, "#sx-wl-saved", "Saved: agree with comment")
    page.wait_for_function("() => [...document.querySelectorAll('#sx-wl-table [role=row]')]"
                           ".some(r => r.innerText.includes('agree: Agree, implant'))")
    _shot(page, "worklist_reviewed.png")

    # the CSV download carries the marks, in the table's order, and no identifiers
    with page.expect_download() as dl:
        page.locator("#sx-wl-csv").click()
    download = dl.value
    assert download.suggested_filename == "spinexr-worklist.csv"
    text = Path(download.path()).read_text(encoding="utf-8")
    assert "Doe^Jane" not in text and "P-77" not in text
    marks = read_reviews(text)
    assert [m.study for m in marks] == [r[1] for r in rows]
    assert marks[1].review == "agree" and marks[1].comment == "Agree, implant noted; see L4"
    assert marks[0].review is None and marks[2].verdict == "rejected" and "colour photograph" in marks[2].reason
    assert [f"{m.probability:.3f}" for m in marks[:2]] == [r[3] for r in rows[:2]]

    # the rejected photo opens on its reason
    page.locator("#sx-wl-next").click()
    _wait_text(page, "#sx-wl-error", "colour photograph")
    assert page.locator("#sx-wl-triage .sx-verdict").count() == 0
