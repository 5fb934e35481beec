"""The printable report: fpdf2 PDF of one study (services/reports/pdf.py) and ``analyze FILE --pdf OUT.pdf``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pdftext import pdf_text
from spine_ui.core.detect import Lesion
from spine_ui.core.finding import DISCLAIMER, BundleInfo, Finding, MemberProbability
from spine_ui.services.reports.metrics import metric_lines
from spine_ui.services.reports.pdf import analysis_pdf, build_pdf, verdict_line

ROOT = Path(__file__).resolve().parents[1]


def _finding(trained: bool = False) -> Finding:
    return Finding(accepted=True, reason=None, verdict="abnormal", probability=0.6123, gate=0.478, abnormal=True,
                   bundle=BundleInfo("dernet", "1.2.0", trained), runtime="CPU onnxruntime",
                   models=(MemberProbability("densenet121", 0.70, 0.42, (0.7, 0.69)),
                           MemberProbability("resnet50", 0.51, 0.26, (0.5, 0.52))),
                   lesions=(Lesion("Surgical implant", "Surgical implant", 2, 0.91, (10.0, 20.0, 100.0, 200.0)),),
                   detector_ran=True, timings_ms={"decode": 12.3, "triage": 800.0})


def test_pdf_has_verdict_members_lesions_metrics_and_notice():
    pics = [("Working image with lesion boxes", np.full((300, 120, 3), 90, np.uint8)),
            ("Grad-CAM (fused)", np.full((300, 120, 3), 200, np.uint8))]
    data = build_pdf(_finding(), pics, {})
    assert data.startswith(b"%PDF-") and data.count(b"/Type /Page\n") + data.count(b"/Type /Page ") <= 2
    text = pdf_text(data)
    assert "ABNORMAL - P(abnormal) = 0.612 >= gate 0.478" in text
    assert "DenseNet-121" in text and "0.700" in text and "ResNet-50" in text
    assert "Surgical implant" in text and "10, 20, 100, 200" in text
    assert "no metrics: untrained" in text and "UNTRAINED" in text and DISCLAIMER in text
    assert "decode 12 ms" in text and "triage 800 ms" in text
    assert data.count(b"/Subtype /Image") == 2


def test_metrics_come_from_the_manifest_block():
    metrics = {"test": {"auroc": 0.912, "auroc_ci95": [0.88, 0.94], "n": 200, "n_abnormal": 90, "gate": 0.478,
                        "sensitivity": 0.8, "specificity": 0.87, "f1": 0.8, "average_precision": 0.85},
               "detection": {"map50": 0.31, "map50_95": 0.12}, "selection": {"oof_auroc": 0.9}}
    lines = metric_lines(metrics, trained=True)
    assert lines[0] == "test AUROC 0.912 (95% CI 0.880-0.940), n = 200 (90 abnormal)"
    assert "sensitivity 0.800" in lines[1] and "at gate 0.478" in lines[1]
    assert "detector mAP@0.5 0.310" in lines[2] and "out-of-fold AUROC 0.900" in lines[3]
    assert metric_lines({}, trained=False) == ["no metrics: untrained"]
    assert metric_lines(None, trained=True) == ["no metrics recorded in the bundle"]
    text = pdf_text(build_pdf(_finding(trained=True), [], metrics))
    assert "test AUROC 0.912" in text and "no metrics" not in text


def test_rejected_study_report_shows_reason_and_the_image(small_bundle_dir):
    from spine_ui.bundle.store import open_bundle
    from spine_ui.core.pipeline import Analyzer

    rng = np.random.default_rng(0)
    photo = np.zeros((256, 256, 3), np.uint8)
    photo[..., 0] = np.linspace(0, 255, 256)[None, :]
    photo[..., 1] = rng.integers(0, 255, (256, 256))
    import io
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="PNG")
    a = Analyzer(open_bundle(small_bundle_dir, "onnx")).analyze(buf.getvalue())
    assert not a.accepted
    data = analysis_pdf(a)
    text = pdf_text(data)
    assert verdict_line(a.finding()) in text and "REJECTED - not analysed" in text
    assert "Study (as analysed" in text and data.count(b"/Subtype /Image") == 1


def test_cli_analyze_pdf(full_bundle_dir, tmp_path):
    from conftest import write_phantom_dicom

    src = write_phantom_dicom(tmp_path / "Doe_Jane_19700101.dcm", extra={"PatientName": "Doe^Jane"})
    out = tmp_path / "report" / "study.pdf"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests' / 'support'}{os.pathsep}{ROOT}",
           "SPINE_NET_LOG": str(tmp_path / "net.log")}
    proc = subprocess.run([sys.executable, "-m", "spine_ui", "analyze", str(src), "--json", "--pdf", str(out),
                           "--bundle", str(full_bundle_dir)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "net.log").exists()
    finding = json.loads(proc.stdout)
    text = pdf_text(out.read_bytes())
    assert finding["verdict"].upper() in text and f"gate {finding['gate']:g}" in text
    assert f"{finding['probability']:.3f}" in text
    assert "Doe" not in text and "Jane" not in text and b"Doe" not in out.read_bytes()
    two = subprocess.run([sys.executable, "-m", "spine_ui", "analyze", str(src), str(src), "--pdf", str(out),
                          "--bundle", str(full_bundle_dir)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert two.returncode == 2 and "one study" in two.stderr


@pytest.mark.parametrize("trained", [False, True])
def test_verdict_line_normal_and_untrained(trained):
    f = Finding(accepted=True, reason=None, verdict="normal", probability=0.3, gate=0.478, abnormal=False,
                bundle=BundleInfo("b", "1", trained), runtime="r")
    assert verdict_line(f) == "NORMAL - P(abnormal) = 0.300 < gate 0.478"
