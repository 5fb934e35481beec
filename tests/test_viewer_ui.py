"""The viewer, status strip, timings and PDF in the app's handlers (no browser): every decoded study reaches the
viewer with its original values, once per run; the PDF is offered with the verdict in it."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pdftext import pdf_text
from spine_ui.core.display import decode_payload
from spine_ui.ui import render as R
from uihelpers import as_upload, value, visible


def _final(updates) -> tuple[dict, list[dict], str | None]:
    """Merged updates, the viewer values in order, and the PDF text read while the per-request file exists."""
    merged, viewers, text = {}, [], None
    for out in updates:
        merged.update(out)
        if "viewer" in out:
            viewers.append(out["viewer"])
        pdf = value(out.get("pdf"))
        if pdf:
            text = pdf_text(Path(pdf).read_bytes())
    return merged, viewers, text


def test_study_below_the_gate_reaches_the_viewer_and_the_pdf(ui, phantom_dicom):
    merged, viewers, text = _final(ui.on_upload(str(as_upload(ui, phantom_dicom, "Doe_Jane.dcm")), False, 16))
    assert viewers and viewers[0]["image"] is not None  # the first update carries the image ...
    assert all(v["image"] is None for v in viewers[1:]) and len({v["key"] for v in viewers}) == 1  # ... once
    img = decode_payload(viewers[0]["image"])
    assert img.dtype == np.uint16 and img.shape == (768, viewers[0]["image"]["w"]) and img.max() > 255
    assert viewers[0]["image"]["invert"] is True  # MONOCHROME1 phantom
    finding = value(merged["details"])
    assert visible(merged["pdf"]) is True and text is not None
    assert f"{finding['verdict'].upper()} - P(abnormal) = {finding['probability']:.3f}" in text
    assert "Doe" not in text
    assert "Stage timings" in merged["triage"] and "decode" in merged["triage"]
    if finding["verdict"] == "normal":
        assert not viewers[-1]["lesions"] and viewers[-1]["cams"] == []


def test_always_run_sends_boxes_and_maps_to_the_viewer(ui, phantom_dicom):
    merged, viewers, _ = _final(ui.on_upload(str(as_upload(ui, phantom_dicom)), True, 16))
    last = viewers[-1]
    assert last["detector_ran"] is True and isinstance(last["lesions"], list)
    assert [c["id"] for c in last["cams"]][0] == "fused" and len(last["cams"]) == 4
    assert all(c["src"].startswith("data:image/png;base64,") for c in last["cams"])
    lime = list(ui.on_lime(merged["state"], True, 16, True))
    assert lime[-1]["viewer"]["lime"].startswith("data:image/png;base64,") and lime[-1]["viewer"]["image"] is None


def test_rejected_photo_is_shown_with_its_reason(ui, tmp_path):
    from skimage import data
    from PIL import Image

    photo = tmp_path / "holiday.bmp"
    Image.fromarray(data.astronaut()).save(photo, format="BMP")
    merged, viewers, _ = _final(ui.on_upload(str(as_upload(ui, photo)), False, 16))
    assert "colour photograph" in value(merged["error"])
    assert viewers[-1]["image"] is not None and viewers[-1]["note"].startswith("Rejected")


def test_status_strip_shows_manifest_metrics(ui):
    html = R.status_html(ui.info)
    assert "no metrics: untrained" in html  # the test bundle is untrained and has no metrics block
    info = dict(ui.info, trained=True, metrics=["test AUROC 0.912"])
    assert "test AUROC 0.912" in R.status_html(info)
