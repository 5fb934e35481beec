"""``python -m spine_ui analyze`` end to end, as a user runs it (subprocess, offline, no network attempts)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, tmp_path: Path, extra_env: dict | None = None) -> tuple[subprocess.CompletedProcess, list]:
    net_log = tmp_path / "net.log"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests' / 'support'}{os.pathsep}{ROOT}",
           "SPINE_NET_LOG": str(net_log), **(extra_env or {})}
    proc = subprocess.run([sys.executable, "-m", "spine_ui", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    attempts = net_log.read_text().splitlines() if net_log.exists() else []
    return proc, attempts


def test_analyze_dicom_json(full_bundle_dir, phantom_dicom, tmp_path):
    proc, attempts = run_cli("analyze", str(phantom_dicom), "--json", "--bundle", str(full_bundle_dir),
                             tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert attempts == []
    f = json.loads(proc.stdout)
    # the CLI JSON is pinned key for key (Finding.to_dict); new keys are added here on purpose, never by accident
    assert list(f) == ["accepted", "reason", "verdict", "probability", "calibrated", "gate", "abnormal", "models",
                       "lesions", "detector_ran", "explanations", "gate_layers", "image", "bundle", "runtime",
                       "timings_ms", "disclaimer", "warning"]
    assert list(f["image"]) == ["width", "height", "source", "photometric", "bits_stored", "transfer_syntax",
                                "processing", "modality", "view_position", "body_part"]
    assert f["accepted"] is True and f["reason"] is None
    assert f["gate"] == 0.478
    assert f["calibrated"] is False  # an uncalibrated bundle: no probability_uncalibrated key
    assert set(f["models"]) == {"densenet121", "tf_efficientnetv2_s", "resnet50"}
    p = sum(m["probability"] * m["weight"] for m in f["models"].values()) / sum(m["weight"] for m in f["models"].values())
    assert f["probability"] == pytest.approx(p, abs=1e-5)
    assert f["abnormal"] == (f["probability"] >= 0.478)
    assert f["bundle"]["trained"] is False and "UNTRAINED" in f["warning"]
    assert f["runtime"] == "CPU onnxruntime"
    assert {"decode", "preprocess", "triage"} <= set(f["timings_ms"])
    assert f["image"]["photometric"] == "MONOCHROME1" and "MONOCHROME1 inverted" in f["image"]["processing"]


def test_analyze_out_writes_pngs(full_bundle_dir, phantom_dicom, tmp_path):
    out = tmp_path / "out"
    proc, attempts = run_cli("analyze", str(phantom_dicom), "--json", "--explain", "--lime-samples", "16",
                             "--detect", "always", "--out", str(out), "--bundle", str(full_bundle_dir),
                             tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert attempts == []
    f = json.loads(proc.stdout)
    assert f["detector_ran"] is True and isinstance(f["lesions"], list)
    assert f["explanations"]["gradcam"] == "exact-cam" and f["explanations"]["lime"]["samples"] == 16
    for name in ("overlay.png", "gradcam.png", "lime.png", "gradcam_densenet121.png", "finding.json"):
        assert (out / name).is_file(), name
    assert Image.open(out / "gradcam.png").size == Image.open(out / "overlay.png").size


def test_unreadable_file_exits_2_with_message(full_bundle_dir, tmp_path):
    bad = tmp_path / "scan.png"
    bad.write_text("this is not an image")
    proc, _ = run_cli("analyze", str(bad), "--json", "--bundle", str(full_bundle_dir), tmp_path=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Unsupported file type" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    proc, _ = run_cli("analyze", str(empty), "--bundle", str(full_bundle_dir), tmp_path=tmp_path)
    assert proc.returncode == 2 and "empty" in proc.stderr


def test_colour_photo_and_ct_are_rejected_with_reasons(full_bundle_dir, tmp_path):
    from pydicom.data import get_testdata_file
    from skimage import data

    photo = tmp_path / "photo.png"
    Image.fromarray(data.astronaut()).save(photo)
    ct = get_testdata_file("CT_small.dcm", download=False)
    if ct is None:
        pytest.skip("pydicom's bundled CT_small.dcm is missing")
    proc, _ = run_cli("analyze", str(photo), str(ct), "--json", "--bundle", str(full_bundle_dir), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    photo_f, ct_f = (json.loads(line) for line in proc.stdout.splitlines())
    assert photo_f["accepted"] is False and "colour photograph" in photo_f["reason"]
    assert ct_f["accepted"] is False and "CT" in ct_f["reason"]
    assert photo_f["probability"] is None and photo_f["models"] == {}


def test_no_patient_identifiers_in_output(full_bundle_dir, tmp_path):
    from conftest import write_phantom_dicom

    dcm = write_phantom_dicom(tmp_path / "Doe_John.dcm", extra={"PatientName": "Doe^John", "PatientID": "PID-998877",
                                                                "PatientBirthDate": "19510203",
                                                                "InstitutionName": "St Elsewhere"})
    proc, _ = run_cli("analyze", str(dcm), "--json", "--bundle", str(full_bundle_dir), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for secret in ("Doe", "John", "PID-998877", "19510203", "Elsewhere"):
        assert secret not in proc.stdout and secret not in proc.stderr


def test_default_bundle_comes_from_the_environment(tmp_path, full_bundle_dir, phantom_dicom):
    """Without --bundle the CLI serves $SPINE_MODELS_DIR/$SPINE_BUNDLE (default models/untrained)."""
    import shutil

    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(full_bundle_dir, models / "untrained")
    proc, attempts = run_cli("analyze", str(phantom_dicom), "--json", tmp_path=tmp_path,
                             extra_env={"SPINE_MODELS_DIR": str(models)})
    assert proc.returncode == 0 and attempts == []
    assert json.loads(proc.stdout)["bundle"]["name"] == full_bundle_dir.name
    proc, _ = run_cli("analyze", str(phantom_dicom), "--bundle", "nonexistent", tmp_path=tmp_path,
                      extra_env={"SPINE_MODELS_DIR": str(models)})
    assert proc.returncode == 3 and "No model bundle 'nonexistent'" in proc.stderr


def test_network_recorder_catches_attempts(tmp_path):
    """The guard behind the 'no network attempts' assertions really sees an attempt."""
    net_log = tmp_path / "net.log"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests' / 'support'}{os.pathsep}{ROOT}", "SPINE_NET_LOG": str(net_log)}
    code = "import socket\ntry:\n socket.create_connection(('example.org', 443), timeout=2)\nexcept OSError:\n pass"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    assert "example.org" in net_log.read_text()
