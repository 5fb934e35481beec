"""The result's DICOM actions in the web app: the SR + SC zip download, and 'Send to PACS' into a real Orthanc."""
from __future__ import annotations

import zipfile
from pathlib import Path

import pydicom
import pytest

from conftest import write_phantom_dicom
from dicomhelpers import PHI, dciodvfy_errors
from orthanchelpers import OrthancServer, orthanc_missing
from spine_ui.config import PacsConfig
from spine_ui.ui.dicom_actions import DicomActions
from uihelpers import LIME_SAMPLES, as_upload, value

pytest.importorskip("gradio")


def _analyse(ui, src: Path) -> str:
    key = None
    for out in ui.on_upload(str(as_upload(ui, src)), False, LIME_SAMPLES):
        key = out.get("state", key)
    assert key
    return key


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return write_phantom_dicom(tmp_path_factory.mktemp("ui-dicom") / "study.dcm", height=320, extra=PHI)


def test_download_dicom_zip(ui, study, tmp_path):
    assert isinstance(ui.dicom, DicomActions) and not DicomActions(ui, PacsConfig()).pacs_enabled
    key = _analyse(ui, study)
    outs = list(ui.dicom.on_download(key))
    file_update, status = outs[-1]
    path = Path(value(file_update))
    assert "1 structured report" in status
    assert not path.exists()  # the per-request folder is gone once the handler finished (gradio copied it)


def test_download_dicom_zip_contents(ui, study, tmp_path):
    key = _analyse(ui, study)
    gen = ui.dicom.on_download(key)
    file_update, _status = next(gen)
    with zipfile.ZipFile(value(file_update)) as zf:
        zf.extractall(tmp_path / "x")
        names = sorted(zf.namelist())
    gen.close()
    assert "sr.dcm" in names and "sc_boxes.dcm" in names
    for name in names:
        assert dciodvfy_errors(tmp_path / "x" / name) == [], name
    sr = pydicom.dcmread(tmp_path / "x" / "sr.dcm")
    assert sr.PatientID == PHI["PatientID"]  # identity belongs in the objects ...
    assert PHI["PatientID"] not in _status and "Doe" not in _status  # ... never on the page


def test_download_without_a_study_says_so(ui):
    file_update, status = list(ui.dicom.on_download(None))[-1]
    assert value(file_update) is None and "upload it again" in status


def test_send_to_pacs(ui, study, tmp_path):
    why = orthanc_missing()
    if why:
        pytest.skip(why)
    server = OrthancServer(tmp_path)
    server.start()
    try:
        cfg = PacsConfig(url=server.dicomweb, retries=1, backoff_s=0.01, state_path=tmp_path / "state.sqlite")
        actions = DicomActions(ui, cfg)
        assert actions.pacs_enabled
        key = _analyse(ui, study)
        assert "Not sent to the PACS yet" in actions.stored_html(key)
        status = actions.on_send(key)
        assert "Stored in the PACS" in status and "objects" in status, status
        count = server.instance_count()
        assert count >= 2
        assert "already in the study" in actions.stored_html(key)
        server.stop()
        status = actions.on_send(key)  # remembered as stored: nothing is sent (the PACS is not even asked)
        assert "already in the study" in status and "Not sent again" in status, status
        fresh = DicomActions(ui, PacsConfig(url=server.dicomweb, retries=1, backoff_s=0.01,
                                            state_path=tmp_path / "other.sqlite"))
        status = fresh.on_send(key)
        assert "Not stored" in status and "not reachable" in status
    finally:
        server.stop()
