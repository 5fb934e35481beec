"""Patient data is never kept: no identifiers or dates in logs, findings, reports or the page; no temporary
files left behind (UI handlers, the analyzer path the CLI uses, the CLI itself, the running app's cache);
DICOM text that reaches the page is escaped.

Complements tests/test_ui.py (upload deletion, report contents, body-part escaping) and tests/test_cli.py
(identifiers in the CLI's JSON): this file adds logs at DEBUG, dates and other identifying tags, temporary
directories, file contents left in gradio's cache, and other DICOM text fields.
"""
from __future__ import annotations

import html
import json
import logging
import os
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from spine_ui.synth.dicom_writer import write_dicom
from uihelpers import LIME_SAMPLES, free_port, value

gr = pytest.importorskip("gradio")

ROOT = Path(__file__).resolve().parents[1]
IDENTIFIERS = {
    "PatientName": "Zyxwa^Quorbella^Mx",
    "PatientID": "PID-7319-XK",
    "PatientBirthDate": "19420817",
    "OtherPatientIDs": "OPI-48151623",
    "AccessionNumber": "ACC-55102",
    "StudyDate": "20230915",
    "SeriesDate": "20230916",
    "AcquisitionDate": "2023-09-17",  # not a valid DA: pydicom would log it if anything parsed it
    "ContentDate": "20230918",
    "StudyTime": "101112.5",
    "InstitutionName": "Saint Ravensworth Clinic",
    "InstitutionAddress": "12 Quillfeather Lane",
    "ReferringPhysicianName": "Kildrummy^Ewan",
    "StudyDescription": "LSPINE Quorbella follow-up",
}
#: Strings that must never appear anywhere (name parts, IDs, every date in two spellings, places).
SECRETS = ("Zyxwa", "Quorbella", "PID-7319-XK", "OPI-48151623", "ACC-55102", "19420817", "1942-08-17",
           "20230915", "2023-09-15", "20230916", "2023-09-16", "20230917", "2023-09-17", "20230918", "2023-09-18",
           "101112", "Ravensworth", "Quillfeather", "Kildrummy")
FILE_NAME = "Zyxwa_Quorbella_19420817.dcm"


#: onnxruntime writes one small ``.ses`` file (a timestamp and a random id) into the temporary directory when
#: its first inference session starts in a process; it holds nothing from any study.
RUNTIME_TEMP_FILES = {".ses"}


def left_behind(folder: Path) -> list[str]:
    """Entries in ``folder`` other than the runtime's own file (whose content is checked for identifiers)."""
    out = []
    for p in folder.iterdir():
        if p.name in RUNTIME_TEMP_FILES and p.is_file() and p.stat().st_size < 1024:
            assert leaks(p.read_text(errors="replace")) == []
            continue
        out.append(p.name)
    return out


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s.lower() in text.lower()]


def spine(seed: int, height: int = 512) -> np.ndarray:
    from spine_ui.synth.phantom import render_spine, to_stored

    img, _ = render_spine(np.random.default_rng(seed), ["Surgical implant", "Vertebral collapse"], height=height)
    return to_stored(img, 12)


def patient_dicom(folder: Path, seed: int = 21, name: str = FILE_NAME) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deliberately invalid AcquisitionDate
        return write_dicom(folder / name, spine(seed), body_part="LSPINE", extra=IDENTIFIERS)


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


def contains_bytes(folder: Path, needle: bytes) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


def strings(out: dict) -> str:
    """Every text an update dict carries (HTML, JSON finding, file paths), as one string."""
    parts = []
    for v in out.values():
        v = value(v)
        if isinstance(v, str):
            parts.append(v)
        elif isinstance(v, (dict, list)):
            parts.append(json.dumps(v, default=str, ensure_ascii=False))
    return "\n".join(parts)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """tempfile's directory for this test only (other processes on the machine use the real one)."""
    d = tmp_path / "tmpdir"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    monkeypatch.setenv("TMPDIR", str(d))
    return d


@pytest.fixture
def debug_logs(caplog):
    """Everything logged at DEBUG, by spine_ui and the libraries (pydicom keeps its own logger level)."""
    with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="pydicom"):
        yield caplog


# --------------------------------------------------------------------------- the analyzer path (CLI's core)
def test_full_analysis_keeps_no_identifiers_or_temp_files(full_bundle_dir, tmp_path, private_tmp, debug_logs,
                                                          capsys):
    """Decode, gate, triage, detection, Grad-CAM and LIME on a DICOM full of identifiers, with the CLI's
    outputs written: nothing identifying in logs (DEBUG), stdout/stderr, warnings, the finding or the files
    written, and nothing left in the temporary directory."""
    from spine_ui.bundle.store import open_bundle
    from spine_ui.cli.analyze import _write_outputs
    from spine_ui.core.pipeline import AnalysisOptions, Analyzer

    src = patient_dicom(tmp_path)
    ds = pydicom.dcmread(src)
    assert ds.PatientBirthDate == "19420817" and ds.ReferringPhysicianName == "Kildrummy^Ewan"  # really there
    analyzer = Analyzer(open_bundle(full_bundle_dir, "onnx"))  # a fresh cache: every stage really runs
    opts = AnalysisOptions(detect="always", gradcam=True, lime=True, explain_normal=True, lime_samples=16)
    debug_logs.clear()  # from here on: only what the analysis logs (the test itself read the file above)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = analyzer.analyze(src, src.name, opts)
        out = tmp_path / "out"
        _write_outputs(a, out)
    assert a.accepted and a.lesions is not None and a.cam is not None and a.lime is not None
    finding = a.finding().to_dict()
    text = "\n".join([debug_logs.text, *(str(w.message) for w in caught), json.dumps(finding, default=str),
                      repr(a.study.meta), *capsys.readouterr()])
    assert leaks(text) == []
    assert debug_logs.records  # the capture worked (libraries log at DEBUG during an analysis)
    written = sorted(p.name for p in out.iterdir())
    assert "finding.json" in written and "lime.png" in written
    assert all(leaks(name) == [] for name in written)
    assert leaks((out / "finding.json").read_text()) == []
    assert left_behind(private_tmp) == []


def test_cli_verbose_run_keeps_no_identifiers_or_temp_files(full_bundle_dir, tmp_path):
    """The CLI as a user runs it, verbose, with explanations written: no identifiers on stdout/stderr or in
    the output folder, and its temporary directory ($TMPDIR, private to this run) is left empty."""
    from test_cli import run_cli

    src = patient_dicom(tmp_path, seed=22)
    tmpdir = tmp_path / "cli-tmp"
    tmpdir.mkdir()
    out = tmp_path / "out"
    proc, attempts = run_cli("-v", "analyze", str(src), "--json", "--explain", "--lime-samples", "16",
                             "--detect", "always", "--out", str(out), "--bundle", str(full_bundle_dir),
                             tmp_path=tmp_path, extra_env={"TMPDIR": str(tmpdir)})
    assert proc.returncode == 0, proc.stderr
    assert attempts == []
    assert leaks(proc.stdout + proc.stderr) == [] and FILE_NAME not in proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["explanations"]["lime"]["samples"] == 16
    for p in out.rglob("*"):
        assert leaks(p.name) == []
        if p.suffix == ".json":
            assert leaks(p.read_text()) == []
        assert b"PID-7319-XK" not in p.read_bytes()
    assert left_behind(tmpdir) == []


# --------------------------------------------------------------------------- the web app's handlers
def test_ui_handlers_keep_no_identifiers_or_temp_files(ui, tmp_path, private_tmp, debug_logs):
    """Upload -> triage -> boxes + Grad-CAM -> LIME through the UI handlers: the per-request folder (for the
    JSON report) lives in the temporary directory only while the stream runs; afterwards the temporary
    directory and gradio's cache hold nothing new, and nothing shown, reported or logged identifies anyone."""
    src = patient_dicom(tmp_path, seed=23)
    before = tree(ui.cache_dir)
    folder = ui.cache_dir / uuid.uuid4().hex
    folder.mkdir()
    upload = folder / FILE_NAME
    shutil.copyfile(src, upload)

    debug_logs.clear()  # writing the test file logged its (deliberately invalid) date
    seen: list[str] = []
    report_paths: list[Path] = []
    key = None
    for out in ui.on_upload(str(upload), True, LIME_SAMPLES):
        seen.append(strings(out))
        key = out.get("state", key)
        rep = value(out.get("report"))
        if rep:
            report_paths.append(Path(rep))
            assert Path(rep).is_relative_to(private_tmp) and Path(rep).parent.name.startswith("spinexr-")
            seen.append(Path(rep).read_text())
            assert left_behind(private_tmp) == [Path(rep).parent.name]  # one per-request folder, only now
    assert key and report_paths
    for out in ui.on_lime(key, True, LIME_SAMPLES, False):
        seen.append(strings(out))
    lime = ui.analyzer.load(src.read_bytes())
    assert lime.lime is not None  # LIME really ran
    assert leaks("\n".join(seen) + debug_logs.text) == []
    assert FILE_NAME not in "\n".join(seen)
    assert left_behind(private_tmp) == []  # every per-request folder removed
    assert tree(ui.cache_dir) == before  # the upload and its folder are gone, nothing else was added


def _markup_dicom(folder: Path, name: str, **edits) -> Path:
    path = write_dicom(folder / name, spine(24, 256), body_part="LSPINE")
    ds = pydicom.dcmread(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword, val in edits.items():
            if keyword == "TransferSyntaxUID":
                ds.file_meta.TransferSyntaxUID = val
            else:
                setattr(ds, keyword, val)
        ds.save_as(path)
    return path


@pytest.mark.parametrize("field, word", [("Modality", "Modality"),
                                         ("PhotometricInterpretation", "Colour"),
                                         ("TransferSyntaxUID", "transfer syntax")])
def test_dicom_text_in_error_panels_is_escaped(ui, tmp_path, field, word):
    """Tag values echoed in a message (modality, photometric interpretation, an unknown transfer syntax) reach
    the page HTML-escaped. (Body part: tests/test_ui.py.)"""
    markup = "<script>alert(1)</script>"
    path = _markup_dicom(tmp_path, f"{field}.dcm", **{field: markup})
    final: dict = {}
    for out in ui.on_upload(str(path), False, LIME_SAMPLES):
        final.update(out)
    panel = value(final["error"])
    assert word.lower() in html.unescape(panel).lower()
    assert "<script" not in panel.lower() and "&lt;script&gt;" in panel.lower()
    assert final["triage"] == ""


# --------------------------------------------------------------------------- the running app
def test_running_app_leaves_no_copy_of_the_upload(demo, tmp_path, gradio_tmp, debug_logs):
    """Through the named API of a live server: after /analyze, no file anywhere in gradio's cache holds the
    uploaded bytes (searched by content, not by name); the server's log lines carry no identifiers; the app
    asks gradio to sweep its cache of outputs (delete_cache)."""
    from gradio_client import Client, handle_file

    from spine_ui.ui.app import launch_kwargs

    frequency, age = demo.delete_cache
    assert 0 < frequency <= age <= 3600
    src = patient_dicom(tmp_path, seed=25)
    port = free_port()
    debug_logs.clear()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                **launch_kwargs())
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        result = client.predict(handle_file(str(src)), api_name="/analyze")
        assert result["accepted"] is True
        assert leaks(json.dumps(result)) == []
        assert contains_bytes(gradio_tmp, b"PID-7319-XK") == []
        assert contains_bytes(gradio_tmp, src.read_bytes()[-4096:]) == []  # nor the pixel data
    finally:
        demo.close()
    assert leaks(debug_logs.text) == []
