"""DICOM outputs: SR + SC validate with dciodvfy, read back with highdicom (boxes and lesion types equal the
finding's), carry the source's identity and study, cope with VinDr-like hex UIDs and raster inputs."""
from __future__ import annotations

import cv2
import highdicom as hd
import numpy as np
import pydicom
import pytest

from conftest import write_phantom_dicom
from dicomhelpers import PHI, dciodvfy_errors, finding_with_lesions, make_vindr_like, rgb
from spine_ui.services.dicom_out import OverlayImages, build, read_lesions, read_texts
from spine_ui.services.dicom_out.source import UNKNOWN_PATIENT_ID


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_phantom_dicom(tmp_path_factory.mktemp("src") / "study.dcm", height=256, extra=PHI,
                               transfer_syntax="explicit")


def _assert_lesions_equal(sr, finding):
    back = read_lesions(sr)
    assert [(r.label, r.class_id) for r in back] == [(les.label, les.class_id) for les in finding.lesions]
    for r, les in zip(back, finding.lesions):
        assert r.box == pytest.approx(les.box, abs=1e-3)
        assert r.confidence == pytest.approx(les.confidence, abs=1e-6)


def _write_and_validate(out, folder):
    paths = out.write(folder)
    for p in paths:
        assert dciodvfy_errors(p) == [], p.name
    return paths


def test_sr_and_sc_from_dicom_source(source, tmp_path):
    src = pydicom.dcmread(source, stop_before_pixels=True)
    f = finding_with_lesions(src.Columns, src.Rows)
    out = build(f, source.read_bytes(), OverlayImages(rgb(), rgb(seed=1), rgb(seed=2)))
    paths = _write_and_validate(out, tmp_path / "out")
    assert [p.name for p in paths] == ["sr.dcm", "sc_boxes.dcm", "sc_gradcam.dcm", "sc_lime.dcm"]
    sr = pydicom.dcmread(paths[0])
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    # identity and study come from the source; the outputs are new series of the same study
    for ds in [sr] + [pydicom.dcmread(p) for p in paths[1:]]:
        assert ds.StudyInstanceUID == src.StudyInstanceUID
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID
        assert str(ds.PatientName) == PHI["PatientName"] and ds.PatientID == PHI["PatientID"]
        assert ds.AccessionNumber == PHI["AccessionNumber"]
    _assert_lesions_equal(sr, f)
    # the source image is the SCOORD's reference
    doc = hd.sr.ComprehensiveSR.from_dataset(sr)
    group = doc.content.get_planar_roi_measurement_groups()[0]
    assert group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert group.roi.value.shape == (5, 2) and np.array_equal(group.roi.value[0], group.roi.value[-1])
    # triage result: ensemble probability, gate, verdict, each member
    triage = doc.content.get_image_measurement_groups()[0]
    names = [m.name.meaning for m in triage.get_measurements()]
    assert names.count("Ensemble member probability of abnormality") == 3
    p = triage.get_measurements(name=hd.sr.CodedConcept("SPXR-PENS", "99SPINEXR", "Ensemble probability of abnormality"))
    assert p[0].value == pytest.approx(f.probability)
    assert triage.get_qualitative_evaluations()[0].value.meaning == "Abnormal"
    texts = " ".join(read_texts(sr))
    assert "Research use only, not for diagnosis" in texts and "UNTRAINED" in texts
    assert "trained=false" in str(sr.ContentSequence)
    # the SC captions are burned in (and said so)
    sc = pydicom.dcmread(paths[1])
    assert sc.BurnedInAnnotation == "YES" and "UNTRAINED" in sc.ImageComments and "0.612" in sc.ImageComments
    assert sc.pixel_array.shape[0] > 96  # caption band added above the 96-px picture


def test_same_inputs_give_same_uids(source):
    f = finding_with_lesions(202, 256)
    a = build(f, source.read_bytes(), OverlayImages(rgb()))
    b = build(f, source.read_bytes(), OverlayImages(rgb()))
    assert a.sr.SOPInstanceUID == b.sr.SOPInstanceUID and a.sc[0].SOPInstanceUID == b.sc[0].SOPInstanceUID
    assert a.sr.SOPInstanceUID != a.sc[0].SOPInstanceUID


def test_vindr_like_hex_uids_without_sop_class(source, tmp_path):
    messy = make_vindr_like(source, tmp_path / "vindr.dicom")
    hex_uid = pydicom.dcmread(messy, stop_before_pixels=True).StudyInstanceUID
    f = finding_with_lesions(202, 256)
    out = build(f, messy.read_bytes(), OverlayImages(rgb(), rgb(seed=3)))
    paths = _write_and_validate(out, tmp_path / "out")
    sr = pydicom.dcmread(paths[0])
    assert sr.StudyInstanceUID.startswith("2.25.") and sr.StudyInstanceUID != hex_uid
    assert out.derived_uids and not out.unknown_patient
    # deterministic: the same hex study maps to the same conforming study for every object and every run
    again = build(f, messy.read_bytes(), OverlayImages(rgb()))
    assert again.study_uid == out.study_uid == pydicom.dcmread(paths[1]).StudyInstanceUID
    assert any("derived" in t for t in read_texts(sr)) and any("SOP Class" in t for t in read_texts(sr))
    ref = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1"  # inferred: DX for presentation
    _assert_lesions_equal(sr, f)


def test_raster_source_gets_new_study_and_unknown_patient(tmp_path):
    png = tmp_path / "xray.png"
    cv2.imwrite(str(png), np.random.default_rng(0).integers(0, 255, (240, 180), dtype=np.uint8))
    f = finding_with_lesions(180, 240)
    out = build(f, png.read_bytes(), OverlayImages(rgb(), None, None))
    paths = _write_and_validate(out, tmp_path / "out")
    assert [p.name for p in paths] == ["sr.dcm", "sc_boxes.dcm", "source_sc.dcm"]
    sr, source_sc = pydicom.dcmread(paths[0]), pydicom.dcmread(paths[2])
    assert out.unknown_patient and sr.PatientID == UNKNOWN_PATIENT_ID
    assert any("unknown patient" in t for t in read_texts(sr))
    assert (source_sc.Rows, source_sc.Columns) == (240, 180)  # SCOORDs are in the raster's own pixel grid
    assert sr.StudyInstanceUID == source_sc.StudyInstanceUID
    doc = hd.sr.ComprehensiveSR.from_dataset(sr)
    roi = doc.content.get_planar_roi_measurement_groups()[0].roi
    assert roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source_sc.SOPInstanceUID
    _assert_lesions_equal(sr, f)


def test_normal_trained_finding_without_lesions(source, tmp_path):
    f = finding_with_lesions(202, 256, trained=True, verdict="normal")
    f = type(f)(**{**f.__dict__, "lesions": (), "abnormal": False})
    out = build(f, source.read_bytes(), OverlayImages(rgb()))
    paths = _write_and_validate(out, tmp_path / "out")
    sr = pydicom.dcmread(paths[0])
    assert read_lesions(sr) == []
    assert not any("UNTRAINED" in t for t in read_texts(sr))
    assert "UNTRAINED" not in pydicom.dcmread(paths[1]).ImageComments


def test_rejected_finding_is_refused(source):
    f = finding_with_lesions(202, 256)
    f = type(f)(**{**f.__dict__, "accepted": False, "verdict": "rejected", "probability": None})
    with pytest.raises(ValueError):
        build(f, source.read_bytes(), OverlayImages(rgb()))


def test_outputs_from_a_real_analysis(small_bundle_dir, source, tmp_path, caplog):
    from spine_ui.bundle.store import open_bundle
    from spine_ui.core.pipeline import AnalysisOptions, Analyzer
    from spine_ui.services.dicom_out import outputs_for

    caplog.set_level("DEBUG")
    analyzer = Analyzer(open_bundle(small_bundle_dir, "onnx"))
    a = analyzer.analyze(source, options=AnalysisOptions(tta=False, explain_normal=True, gradcam=True))
    out = outputs_for(a, source.read_bytes())
    paths = _write_and_validate(out, tmp_path / "out")
    assert "sc_gradcam.dcm" in [p.name for p in paths]
    for secret in ("Doe", "PID-778899", "19700101", "ACC-42"):
        assert secret not in caplog.text


def test_cli_analyze_dicom_out(full_bundle_dir, source, tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "dicom"
    env = {**os.environ, "PYTHONPATH": f"{root / 'tests' / 'support'}{os.pathsep}{root}"}
    proc = subprocess.run([sys.executable, "-m", "spine_ui", "analyze", str(source), "--json", "--no-tta",
                           "--detect", "always", "--bundle", str(full_bundle_dir), "--dicom-out", str(out)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    finding = json.loads(proc.stdout)
    names = sorted(p.name for p in out.iterdir())
    assert "sr.dcm" in names and "sc_boxes.dcm" in names
    for p in out.iterdir():
        assert dciodvfy_errors(p) == [], p.name
    back = read_lesions(pydicom.dcmread(out / "sr.dcm"))
    assert [r.label for r in back] == [les["label"] for les in finding["lesions"]]
    for r, les in zip(back, finding["lesions"]):
        assert r.box == pytest.approx(les["box"], abs=0.06)  # the JSON rounds boxes to 0.1 px
    for secret in ("Doe", "PID-778899", "19700101", "ACC-42"):
        assert secret not in proc.stderr + proc.stdout
