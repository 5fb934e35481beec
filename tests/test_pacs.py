"""The PACS loop against a real Orthanc with its DICOMweb plugin: studies carrying PHI go in, the SR and SC
come back into the same studies, nothing is stored twice, a PACS that goes away mid-run is survived."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import requests

from conftest import write_phantom_dicom
from dicomhelpers import dciodvfy_errors
from orthanchelpers import serve_orthanc
from spine_ui.config import PacsConfig
from spine_ui.errors import PacsUnavailableError
from spine_ui.services.dicom_out import read_lesions
from spine_ui.services.pacs import PacsClient, SqliteProcessedLog, run_once
from spine_ui.services.pacs.client import make_session

ROOT = Path(__file__).resolve().parents[1]
PATIENTS = [
    {"PatientName": "Quillon^Ardeth", "PatientID": "PAC-90121", "PatientBirthDate": "19510203",
     "StudyDate": "20250310", "StudyTime": "083000", "AccessionNumber": "ACX-3301"},
    {"PatientName": "Vesmire^Tolund", "PatientID": "PAC-90122", "PatientBirthDate": "19630714",
     "StudyDate": "20250311", "StudyTime": "091500", "AccessionNumber": "ACX-3302"},
]
SECRETS = ("Quillon", "Ardeth", "Vesmire", "Tolund", "PAC-9012", "19510203", "19630714", "ACX-330")


def _fast_cfg(**kw) -> PacsConfig:
    return PacsConfig(**{"retries": 2, "backoff_s": 0.01, "timeout_s": 10, **kw})


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    yield from serve_orthanc(tmp_path_factory.mktemp("orthanc"))


@pytest.fixture(scope="module")
def analyzer(full_bundle_dir):
    from spine_ui.bundle.store import open_bundle
    from spine_ui.core.pipeline import Analyzer

    return Analyzer(open_bundle(full_bundle_dir, "onnx"))


@pytest.fixture(scope="module")
def options():
    from spine_ui.core.pipeline import AnalysisOptions

    return AnalysisOptions(detect="always", gradcam=True, tta=False)


@pytest.fixture(scope="module")
def studies(orthanc, tmp_path_factory):
    """Two spine studies with PHI (one VinDr-like without Modality/BodyPart, one DX L-SPINE) and a knee film."""
    d = tmp_path_factory.mktemp("studies")
    a = write_phantom_dicom(d / "a.dcm", height=320, seed=1, extra=PATIENTS[0])
    b = write_phantom_dicom(d / "b.dcm", height=320, seed=2, modality="DX", body_part="LSPINE",
                            transfer_syntax="explicit", extra=PATIENTS[1])
    chest = write_phantom_dicom(d / "c.dcm", height=256, seed=3, modality="DX", body_part="KNEE",
                                extra={"PatientName": "Other^Person", "PatientID": "PAC-90123"})
    return [orthanc.upload(a), orthanc.upload(b)], orthanc.upload(chest)


def _fetch(client: PacsClient, study_uid: str, series_uid: str) -> list[pydicom.Dataset]:
    return client._client.retrieve_series(study_uid, series_uid)


def test_round_trip_into_the_same_studies(orthanc, studies, analyzer, options, tmp_path, caplog):
    spine, chest = studies
    caplog.set_level(logging.DEBUG)
    client = PacsClient(_fast_cfg(), orthanc.dicomweb)
    log = SqliteProcessedLog(tmp_path / "state.sqlite")
    summary = run_once(client, analyzer, log, options=options)
    assert summary.error is None, summary.error
    assert (summary.stored, summary.skipped, summary.unreadable) == (2, 1, 0)
    assert "Body part 'KNEE' is not the spine" in caplog.text  # the gate's reason, logged
    by_study = {r.study_uid: r for r in summary.results}
    assert set(by_study) == set(spine)  # filed into the source studies
    for study_uid in spine:
        series = {s["00080060"]["Value"][0]: s for s in orthanc.series_of(study_uid) if "Value" in s.get("00080060", {})}
        assert {"SR", "OT"} <= set(series)
        sr = _fetch(client, study_uid, series["SR"]["0020000E"]["Value"][0])
        scs = _fetch(client, study_uid, series["OT"]["0020000E"]["Value"][0])
        assert len(sr) == 1 and len(scs) >= 2  # boxes + Grad-CAM
        finding = by_study[study_uid].finding
        back = read_lesions(sr[0])
        assert [(r.label, r.box) for r in back] == [(les.label, pytest.approx(les.box, abs=1e-3))
                                                    for les in finding.lesions]
        assert sr[0].PatientID in {p["PatientID"] for p in PATIENTS}  # identity copied from the source
        for i, ds in enumerate(sr + scs):
            path = tmp_path / f"{study_uid[-8:]}-{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            assert dciodvfy_errors(path) == [], path.name
    count = orthanc.instance_count()
    # second pass: nothing new, nothing duplicated
    again = run_once(client, analyzer, log, options=options)
    assert (again.stored, again.skipped, again.already) == (0, 0, 3)
    assert orthanc.instance_count() == count
    for secret in SECRETS:
        assert secret not in caplog.text


def test_cli_once_with_fresh_state_duplicates_nothing(orthanc, studies, full_bundle_dir, tmp_path):
    """A lost state file makes the CLI analyse again, but the deterministic UIDs replace rather than add."""
    before = orthanc.instance_count()
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests' / 'support'}{os.pathsep}{ROOT}",
           "SPINE_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, "-m", "spine_ui", "pacs", "run", "--dicomweb", orthanc.dicomweb, "--once",
                           "--no-tta", "--detect", "always", "--bundle", str(full_bundle_dir), "--since", "2025-03-01"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "2 studies, 2 instances: 2 stored" in proc.stderr  # the knee film has no StudyDate: not since
    assert (tmp_path / "data" / "pacs_state.sqlite").exists()
    assert orthanc.instance_count() == before
    for secret in SECRETS:
        assert secret not in proc.stderr + proc.stdout


def test_orthanc_stopped_mid_run_then_restarted(orthanc, analyzer, options, tmp_path, caplog):
    new = orthanc.upload(write_phantom_dicom(tmp_path / "d.dcm", height=288, seed=4, modality="CR",
                                             body_part="SPINE", extra={"PatientName": "Late^Study"}))
    log = SqliteProcessedLog(tmp_path / "state.sqlite")

    class StopsBeforeStore(PacsClient):
        def store(self, datasets):
            orthanc.stop()  # the PACS goes away between retrieve and store
            return super().store(datasets)

    sleeps: list[float] = []
    client = StopsBeforeStore(_fast_cfg(), orthanc.dicomweb, sleep=sleeps.append)
    caplog.set_level(logging.INFO)
    summary = run_once(client, analyzer, log, options=options)
    assert summary.error and "not reachable" in summary.error and summary.stored == 0
    assert sleeps == [0.01, 0.02]  # exponential backoff between the retries
    assert "PACS pass stopped" in caplog.text
    orthanc.start()
    # nothing was half-stored or marked: a normal pass now completes the study
    done = run_once(PacsClient(_fast_cfg(), orthanc.dicomweb), analyzer, log, options=options)
    assert done.error is None and done.stored >= 1
    assert new in {r.study_uid for r in done.results}
    assert any(s.get("00080060", {}).get("Value") == ["SR"] for s in orthanc.series_of(new))


def test_unreachable_pacs_gives_a_clear_error():
    from uihelpers import free_port

    sleeps: list[float] = []
    client = PacsClient(_fast_cfg(retries=3, backoff_s=0.5), f"http://127.0.0.1:{free_port()}/dicom-web",
                        sleep=sleeps.append)
    with pytest.raises(PacsUnavailableError) as err:
        client.studies()
    assert "not reachable" in err.value.user_message and "4 attempts" in err.value.user_message
    assert sleeps == [0.5, 1.0, 2.0]


def test_auth_and_tls_settings():
    basic = make_session(PacsConfig(user="u", password="p"))
    assert basic.auth == ("u", "p") and basic.verify is True
    bearer = make_session(PacsConfig(user="u", password="p", token="t0k"))
    assert bearer.headers["Authorization"] == "Bearer t0k" and bearer.auth is None
    assert make_session(PacsConfig(verify_tls=False)).verify is False
    assert make_session(PacsConfig(ca_bundle="/etc/ca.pem")).verify == "/etc/ca.pem"
    cfg = PacsConfig(password="secretpw", token="tok123")
    assert "secretpw" not in repr(cfg) and "tok123" not in repr(cfg)


def test_pacs_config_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SPINE_DICOMWEB_URL", "https://pacs.example/dicom-web")
    monkeypatch.setenv("SPINE_DICOMWEB_USER", "reader")
    monkeypatch.setenv("SPINE_DICOMWEB_PASSWORD", "pw")
    monkeypatch.setenv("SPINE_PACS_MODALITIES", "cr, dx")
    monkeypatch.setenv("SPINE_DATA_DIR", str(tmp_path))
    cfg = PacsConfig.from_env()
    assert cfg.url.endswith("/dicom-web") and cfg.user == "reader" and cfg.password == "pw"
    assert cfg.modalities == ("CR", "DX") and cfg.verify_tls is True
    assert cfg.state_path == tmp_path / "pacs_state.sqlite"
    monkeypatch.setenv("SPINE_DICOMWEB_VERIFY_TLS", "0")
    assert PacsConfig.from_env().verify_tls is False


def test_http_errors_are_retried_then_reported(monkeypatch):
    """A PACS answering 503 is retried with backoff; a 4xx is reported at once."""
    calls = []

    def fail(status):
        def fn():
            calls.append(status)
            resp = requests.Response()
            resp.status_code = status
            raise requests.HTTPError(response=resp)
        return fn

    client = PacsClient(_fast_cfg(retries=2), "http://127.0.0.1:1/dicom-web", sleep=lambda s: None)
    with pytest.raises(PacsUnavailableError, match="HTTP 503"):
        client.call("test", fail(503))
    assert calls == [503, 503, 503]
    calls.clear()
    with pytest.raises(PacsUnavailableError, match="HTTP 403"):
        client.call("test", fail(403))
    assert calls == [403]
