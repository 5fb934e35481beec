"""spine_ui.core.display: the viewer's copy of the original values, window presets and server-side rendering."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from spine_ui.config import ViewerConfig
from spine_ui.core.decode import decode_bytes, decode_file
from spine_ui.core.detect import Lesion
from spine_ui.core.display import apply_window, client_payload, decode_payload, make_display, render_view
from spine_ui.synth.dicom_writer import write_dicom


def ramp(rows: int, cols: int, top: int = 4095) -> np.ndarray:
    return np.round(np.linspace(0, top, rows * cols)).astype(np.uint16).reshape(rows, cols)


def test_dicom_window_preset_matches_what_the_decoder_applied(tmp_path):
    stored = ramp(300, 200)
    path = write_dicom(tmp_path / "w.dcm", stored, bits_stored=12, photometric="MONOCHROME1", window=(1500, 1000),
                       extra={"WindowCenterWidthExplanation": "SPINE"})
    study = decode_file(path)
    disp = make_display(study)
    assert disp.shape == (300, 200) and disp.slope == 1.0 and disp.invert
    assert np.array_equal(disp.offset + disp.values, stored)  # the original values, unchanged
    first = disp.presets[0]
    assert first.name.startswith("As analysed") and (first.center, first.width) == (1500, 1000)
    assert [p.name for p in disp.presets].count("File: SPINE") == 0  # the same window is listed once
    shown = apply_window(disp, first.center, first.width) / 255.0
    assert np.abs(shown - study.pixels).max() < 2.5 / 255  # pydicom's window vs ours: same up to rounding
    wide = apply_window(disp, 2048, 4096)
    assert not np.array_equal(wide, apply_window(disp, first.center, first.width))
    assert wide[0, 0] == 255 and wide[-1, -1] == 0  # MONOCHROME1: low stored values are bright


def test_several_file_windows_are_all_presets(tmp_path):
    path = write_dicom(tmp_path / "m.dcm", ramp(64, 64), bits_stored=12,
                       extra={"WindowCenter": [2000, 1000], "WindowWidth": [4000, 500],
                              "WindowCenterWidthExplanation": ["FULL", "NARROW"]})
    disp = make_display(decode_file(path))
    names = [p.name for p in disp.presets]
    assert names[0] == "As analysed (file window)" and "File: NARROW" in names
    assert {"Full range", "Auto (0.5-99.5 %)", "High contrast (5-95 %)"} <= set(names)


def test_rescaled_float_values_keep_their_units(tmp_path):
    path = write_dicom(tmp_path / "r.dcm", ramp(64, 64), bits_stored=12, rescale=(0.37, -100.0))
    study = decode_file(path)
    disp = make_display(study)
    lo, hi = disp.value_range
    assert lo == pytest.approx(-100.0) and hi == pytest.approx(-100.0 + 0.37 * 4095, rel=1e-6)
    modality = disp.offset + disp.slope * disp.values.astype(np.float64)
    assert np.abs(modality - study.original).max() <= disp.slope  # quantised to 1/65535 of the range


def test_16bit_png_keeps_every_value_and_long_studies_are_downsampled():
    arr = np.arange(4000, dtype=np.uint16).reshape(40, 100)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    disp = make_display(decode_bytes(buf.getvalue()))
    assert np.array_equal(disp.values + int(disp.offset), arr)
    assert disp.presets[0].name == "As analysed (full bit range)" and disp.presets[0].width == 4095
    tall = np.tile(ramp(3045, 1, 4095), (1, 1280))
    buf = io.BytesIO()
    Image.fromarray(tall).save(buf, format="PNG")
    disp = make_display(decode_bytes(buf.getvalue()), ViewerConfig(max_side=2048))
    assert disp.shape == (2048, 861) and disp.original_shape == (3045, 1280)


def test_render_view_overlays_region_and_payload_round_trip(tmp_path):
    path = write_dicom(tmp_path / "p.dcm", ramp(400, 200), bits_stored=12)
    disp = make_display(decode_file(path), ViewerConfig(max_side=200))  # 200 x 100: scale 1/2
    c, w = disp.presets[0].center, disp.presets[0].width
    plain = render_view(disp, c, w)
    assert plain.shape == (200, 100, 3)
    boxed = render_view(disp, c, w, lesions=[Lesion("LT8", "Surgical implant", 2, 0.9, (20.0, 40.0, 120.0, 240.0))])
    changed = np.any(boxed != plain, axis=2)
    assert changed[20, 30] and changed[70, 10] and changed[120, 40]  # the box edges, at half scale
    assert not changed[125:].any() and not changed[30:110, 15:55].any()  # nothing below it, nothing inside
    heat = np.zeros((50, 50), np.float32)
    heat[:25] = 1.0
    hot = render_view(disp, c, w, heat=heat, heat_alpha=0.5)
    assert not np.array_equal(hot[:100], plain[:100])
    crop = render_view(disp, c, w, region=(0, 200, 100, 400))
    assert crop.shape == (100, 50, 3) and np.array_equal(crop, plain[100:200, 0:50])
    payload = client_payload(disp)
    assert np.array_equal(decode_payload(payload), disp.values)
    assert payload["presets"][0]["center"] == pytest.approx(c) and payload["invert"] is False


def test_analyzer_keeps_the_display_copy_and_releases_full_pixels(small_bundle_dir, tmp_path):
    from spine_ui.bundle.store import open_bundle
    from spine_ui.core.pipeline import Analyzer

    path = write_dicom(tmp_path / "a.dcm", cv2.resize(ramp(64, 32), (320, 640)), bits_stored=12, modality="DX",
                       body_part="LSPINE", extra={"ViewPosition": "LL", "PatientName": "Doe^Jane"})
    a = Analyzer(open_bundle(small_bundle_dir, "onnx")).load(path)
    assert a.display is not None and a.display.shape == (640, 320) and "display" in a.timings_ms
    assert a.study.original is None and a.study.pixels.size == 0
    image = a.finding().to_dict()["image"]
    assert (image["modality"], image["view_position"], image["body_part"]) == ("DX", "LL", "LSPINE")
    assert "Doe" not in repr(a.finding().to_dict())
