"""Helpers for the DICOM output / PACS tests: dciodvfy, a Finding with lesions, messy (VinDr-like) sources."""
from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from spine_ui.core.detect import Lesion
from spine_ui.core.finding import BundleInfo, Finding, ImageInfo, MemberProbability

PHI = {"PatientName": "Doe^Jane", "PatientID": "PID-778899", "PatientBirthDate": "19700101",
       "StudyDate": "20240102", "StudyTime": "101500", "AccessionNumber": "ACC-42", "StudyID": "S1"}


def dciodvfy_errors(path: Path) -> list[str]:
    """Lines of ``dciodvfy`` output that start with "Error" (skip the test when dicom3tools is missing)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


def finding_with_lesions(width: int, height: int, trained: bool = False, verdict: str = "abnormal") -> Finding:
    """A hand-built finding with two lesions (an untrained detector's boxes may be empty)."""
    lesions = (Lesion("Osteophytes", "Osteophytes", 0, 0.91, (10.5, 20.25, width * 0.4, height * 0.3)),
               Lesion("Spondylolysthesis", "Spondylolisthesis", 3, 0.42, (width * 0.2, height * 0.5,
                                                                           width - 1.0, height - 2.5)))
    return Finding(accepted=True, reason=None, verdict=verdict, probability=0.6123, gate=0.478,
                   abnormal=verdict == "abnormal", bundle=BundleInfo("untrained", "0.3.1", trained), runtime="onnx",
                   models=(MemberProbability("densenet121", 0.6, 0.42), MemberProbability("tf_efficientnetv2_s", 0.7, 0.32),
                           MemberProbability("resnet50", 0.5, 0.26)),
                   lesions=lesions, detector_ran=True, image=ImageInfo(width, height, "dicom"))


def make_vindr_like(src: Path, dst: Path) -> Path:
    """Copy of ``src`` with hex (non-conforming) UIDs and no SOP Class UID, like VinDr-SpineXR files."""
    ds = pydicom.dcmread(src)
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ds, kw, secrets.token_hex(16))
    del ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    del ds.file_meta.MediaStorageSOPClassUID
    ds.save_as(dst, enforce_file_format=False)
    return dst


def rgb(h: int = 96, w: int = 80, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
