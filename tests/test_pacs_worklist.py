"""The worklist filled from a real Orthanc (DICOMweb on 127.0.0.1): recent spine studies carrying patient
identity are analysed like an upload, no name / ID / birth date reaches the rows, the page, the review
database or the logs (accession and study date only when configured on), a result sent back lands as an SR
in its own study once, and without a PACS URL the page has no PACS controls."""
from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import pytest

from conftest import write_phantom_dicom
from orthanchelpers import serve_orthanc
from spine_ui.config import PacsConfig, StoreConfig
from uihelpers import LIME_SAMPLES, value

gr = pytest.importorskip("gradio")

TODAY = dt.date.today()


def _day(days_ago: int) -> str:
    return (TODAY - dt.timedelta(days=days_ago)).strftime("%Y%m%d")


PATIENTS = [
    {"PatientName": "Brannoch^Iselde", "PatientID": "PWL-51001", "PatientBirthDate": "19480311",
     "StudyDate": _day(3), "StudyTime": "081500", "AccessionNumber": "AWX-7701"},
    {"PatientName": "Terwillow^Gaspard", "PatientID": "PWL-51002", "PatientBirthDate": "19571122",
     "StudyDate": _day(4), "StudyTime": "094500", "AccessionNumber": "AWX-7702"},
    {"PatientName": "Oakhurst^Melisande", "PatientID": "PWL-51003", "PatientBirthDate": "19690405",
     "StudyDate": _day(5), "StudyTime": "110000", "AccessionNumber": "AWX-7703"},
]
OLD = {"PatientName": "Longago^Perrin", "PatientID": "PWL-50999", "PatientBirthDate": "19400101",
       "StudyDate": _day(400), "AccessionNumber": "AWX-6600"}
IDENTITY = ("Brannoch", "Iselde", "Terwillow", "Gaspard", "Oakhurst", "Melisande", "Longago", "Perrin", "PWL-5",
            "19480311", "19571122", "19690405", "19400101", "1948-03-11", "1957-11-22", "1969-04-05")
ACCESSIONS = tuple(p["AccessionNumber"] for p in PATIENTS) + ("AWX-6600",)
DATES = tuple(f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in (p["StudyDate"] for p in PATIENTS)) + tuple(
    p["StudyDate"] for p in PATIENTS)
DAYS = 30


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    yield from serve_orthanc(tmp_path_factory.mktemp("orthanc-wl"))


@pytest.fixture(scope="module")
def study_uids(orthanc, tmp_path_factory) -> list[str]:
    """Three recent spine studies with identity (VinDr-like, DX L-SPINE, CR) and one older than the window."""
    d = tmp_path_factory.mktemp("pacs-studies")
    files = [write_phantom_dicom(d / "a.dcm", height=288, seed=11, extra=PATIENTS[0]),
             write_phantom_dicom(d / "b.dcm", height=288, seed=12, modality="DX", body_part="LSPINE",
                                 transfer_syntax="explicit", extra=PATIENTS[1]),
             write_phantom_dicom(d / "c.dcm", height=288, seed=13, modality="CR", body_part="SPINE",
                                 extra=PATIENTS[2])]
    uids = [orthanc.upload(f) for f in files]
    orthanc.upload(write_phantom_dicom(d / "old.dcm", height=288, seed=14, modality="DX", extra=OLD))
    return uids


@pytest.fixture(scope="module")
def analyzer(small_bundle_dir):
    from spine_ui.bundle.store import open_bundle
    from spine_ui.core.pipeline import Analyzer

    return Analyzer(open_bundle(small_bundle_dir, "onnx"), cache_size=16)


def _cfg(orthanc, tmp: Path, **kw) -> PacsConfig:
    return PacsConfig(url=orthanc.dicomweb, retries=1, backoff_s=0.01, timeout_s=10,
                      state_path=tmp / "pacs_state.sqlite", **kw)


@pytest.fixture(scope="module")
def app(analyzer, orthanc, tmp_path_factory):
    """The app with a PACS configured and its own review database (inspected byte by byte below)."""
    from spine_ui.services.store.reviews import Reviews
    from spine_ui.ui.app import build_app

    tmp = tmp_path_factory.mktemp("pacs-app")
    mp = pytest.MonkeyPatch()
    mp.setenv("GRADIO_TEMP_DIR", str(tmp / "gradio"))
    reviews = Reviews(StoreConfig(data_dir=tmp / "db"))
    demo = build_app(analyzer, examples_dir=None, lime_samples=LIME_SAMPLES, reviews=reviews,
                     pacs=_cfg(orthanc, tmp))
    demo.tmp = tmp
    yield demo
    demo.close()
    mp.undo()


def drain(gen) -> tuple[dict, list[dict], list[str]]:
    """Run a handler as gradio would; also collect every text the page would receive (tables, HTML, the
    CSV/JSON downloads read while they exist)."""
    merged: dict = {}
    raw: list[dict] = []
    texts: list[str] = []
    for out in gen:
        raw.append(out)
        merged.update(out)
        texts.append(json.dumps({k: value(v) for k, v in out.items() if not hasattr(value(v), "shape")},
                                default=str))
        for k in ("wl_csv", "wl_json", "report"):
            if value(out.get(k)):
                texts.append(Path(value(out[k])).read_text())
    return merged, raw, texts


def _labels(final: dict) -> list[str]:
    return [r[1] for r in value(final["wl_table"])]


def test_fill_from_pacs_send_back_once_and_no_identity(app, orthanc, study_uids, caplog, monkeypatch):
    from spine_ui.services.pacs import PacsClient
    from spine_ui.services.pacs.worklist import study_ref

    caplog.set_level(logging.DEBUG)
    wl = app.spine_worklist
    assert wl.pacs is not None
    ticks = []
    final, raw, texts = drain(wl.pacs.on_fill(DAYS, False, lambda *a, **k: ticks.append(a[0])))
    tables = [value(o["wl_table"]) for o in raw if "wl_table" in o]
    assert [len(t) for t in tables] == [0, 1, 2, 3, 3]  # streamed study by study; the old study is not in
    assert ticks[-1] == (3, 3) and final["wl_stop"]["visible"] is False
    rows = wl.store.get(final["wl_id"]).rows
    assert all(r.accepted and r.probability is not None and r.key for r in rows), rows  # analysed
    labels = _labels(final)
    refs = {study_ref(u): u for u in study_uids}
    assert sorted(label.rsplit("ref ", 1)[1] for label in labels) == sorted(refs)  # one row per study
    assert all(label.startswith("PACS study ") for label in labels)
    page = "\n".join(texts)
    for secret in IDENTITY + ACCESSIONS + DATES + tuple(study_uids):
        assert secret not in page, secret

    # open the top row: the panel says it is not in the PACS yet; send it; the SR lands in its own study
    wl_id, top = final["wl_id"], value(final["wl_table"])[0]
    opened, _, page2 = drain(wl.on_select(wl_id, top[0], False, LIME_SAMPLES))
    assert "Not sent to the PACS yet" in opened["wl_pacs_status"]
    key = opened["state"]
    assert key
    study_uid = refs[top[1].rsplit("ref ", 1)[1]]
    before = orthanc.instance_count()
    stores = []
    real_store = PacsClient.store
    monkeypatch.setattr(PacsClient, "store", lambda self, ds: stores.append(len(ds)) or real_store(self, ds))
    status = wl.pacs.on_send(key)
    assert "Stored in the PACS" in status and "objects" in status, status
    modalities = [s.get("00080060", {}).get("Value", [""])[0] for s in orthanc.series_of(study_uid)]
    assert "SR" in modalities and "OT" in modalities, modalities
    after = orthanc.instance_count()
    assert after == before + stores[0] and stores[0] >= 2
    again = wl.pacs.on_send(key)  # a second send: said stored, nothing sent, nothing duplicated
    assert "already in the study" in again and len(stores) == 1 and orthanc.instance_count() == after
    reopened, _, page3 = drain(wl.on_select(wl_id, top[0], False, LIME_SAMPLES))
    assert "already in the study" in reopened["wl_pacs_status"]

    # a second fill does not analyse our own SR / SC series: still three rows
    final2, _, page4 = drain(wl.pacs.on_fill(DAYS, False))
    assert len(value(final2["wl_table"])) == 3

    # nothing identifying in the page, the review database, the PACS state file or the logs
    db = b"".join(p.read_bytes() for p in (app.tmp / "db").glob("spine.db*"))
    state = (app.tmp / "pacs_state.sqlite").read_bytes()
    assert "PACS worklist: 3 image(s) from the last 30 day(s)" in caplog.text  # the logs were captured
    everything = "\n".join(page2 + page3 + page4 + [status, again, caplog.text])
    for secret in IDENTITY + ACCESSIONS + DATES:
        assert secret not in everything, secret
        assert secret.encode() not in db and secret.encode() not in state, secret
    assert any(label.encode() in db for label in labels)  # the database does hold the rows (label kept)


@pytest.mark.parametrize("show", ["accession", "date", "both"])
def test_accession_and_study_date_only_when_configured(app, orthanc, study_uids, show, tmp_path):
    from spine_ui.ui.dicom_actions import DicomActions
    from spine_ui.ui.worklist_pacs import WorklistPacs

    cfg = _cfg(orthanc, tmp_path, show_accession=show in ("accession", "both"),
               show_study_date=show in ("date", "both"))
    wl = app.spine_worklist
    final, _, texts = drain(WorklistPacs(wl, DicomActions(wl.ui, cfg)).on_fill(DAYS, False))
    labels = sorted(_labels(final))
    page = "\n".join(texts)
    by_acc = sorted(PATIENTS, key=lambda p: p["AccessionNumber"])
    dates = [f"{p['StudyDate'][:4]}-{p['StudyDate'][4:6]}-{p['StudyDate'][6:]}" for p in by_acc]
    if show == "accession":
        assert labels == [p["AccessionNumber"] for p in by_acc]
    elif show == "both":
        assert labels == [f"{p['AccessionNumber']} · {d}" for p, d in zip(by_acc, dates)]
    else:
        assert sorted(label.split(" · ")[0] for label in labels) == sorted(dates)
        assert all(" · PACS study " in label for label in labels)
        for acc in ACCESSIONS:
            assert acc not in page
    for secret in IDENTITY + ("AWX-6600",):
        assert secret not in page


def test_fill_from_pacs_can_be_stopped(app, study_uids):
    wl = app.spine_worklist
    gen = wl.pacs.on_fill(DAYS, False)
    first = next(gen)
    assert first["wl_stop"]["visible"] is True
    next(gen)  # one study done
    assert "Stopping" in wl.on_stop(first["wl_id"])["wl_progress"]
    table = value(list(gen)[-1]["wl_table"])
    assert len(table) == 3 and sum("stopped" in r[5] for r in table) == 2
    assert all(r[1].startswith("PACS study ") for r in table)


def test_pacs_down_says_so_and_keeps_the_page(analyzer, tmp_path):
    from uihelpers import free_port

    from spine_ui.ui.dicom_actions import DicomActions
    from spine_ui.ui.handlers import SpineUI
    from spine_ui.ui.worklist import WorklistUI
    from spine_ui.ui.worklist_pacs import WorklistPacs
    from spine_ui.services.store.reviews import Reviews

    ui = SpineUI(analyzer, lime_samples=LIME_SAMPLES, reviews=Reviews(StoreConfig(data_dir=tmp_path / "db")))
    cfg = PacsConfig(url=f"http://127.0.0.1:{free_port()}/dicom-web", retries=0, timeout_s=2,
                     state_path=tmp_path / "s.sqlite")
    out = list(WorklistPacs(WorklistUI(ui), DicomActions(ui, cfg)).on_fill(7, False))
    assert len(out) == 1 and "could not be searched" in out[0]["wl_progress"]
    assert "not reachable" in out[0]["wl_progress"]


def _config(demo) -> str:
    return json.dumps(demo.get_config_file(), default=str)


def test_no_url_no_pacs_controls(analyzer, tmp_path, monkeypatch):
    from spine_ui.services.store.reviews import Reviews
    from spine_ui.ui.app import build_app

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    monkeypatch.delenv("SPINE_DICOMWEB_URL", raising=False)
    reviews = Reviews(StoreConfig(data_dir=tmp_path / "db"))
    plain = build_app(analyzer, examples_dir=None, lime_samples=LIME_SAMPLES, reviews=reviews)
    try:
        config = _config(plain)
        assert plain.spine_worklist.pacs is None and not plain.spine.dicom.pacs_enabled
        assert "wl_pacs_status" not in plain.spine_worklist.output_names()
        for elem in ("sx-wl-pacs-fill", "sx-wl-pacs-days", "sx-wl-pacs-send", "sx-wl-pacs-status"):
            assert f'"{elem}"' not in config, elem
        assert "Fill from PACS" not in config
        pacs_btn = plain.spine_components["pacs_btn"]
        assert pacs_btn.visible is False  # the single-study 'Send to PACS' stays hidden too
    finally:
        plain.close()
    with_pacs = build_app(analyzer, examples_dir=None, lime_samples=LIME_SAMPLES, reviews=reviews,
                          pacs=PacsConfig(url="http://127.0.0.1:9/dicom-web", state_path=tmp_path / "s.sqlite"))
    try:
        config = _config(with_pacs)
        for elem in ("sx-wl-pacs-fill", "sx-wl-pacs-days", "sx-wl-pacs-send", "sx-wl-pacs-status"):
            assert f'"{elem}"' in config, elem
    finally:
        with_pacs.close()
