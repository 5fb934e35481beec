"""The Gradio UI: handlers called directly on the full untrained bundle, plus the named API via gradio_client."""
from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("densenet121", "tf_efficientnetv2_s", "resnet50")

gr = pytest.importorskip("gradio")

from uihelpers import LIME_SAMPLES, as_upload, free_port, value, visible  # noqa: E402


# --------------------------------------------------------------------------- helpers


def drain(gen, raw: list | None = None) -> tuple[dict, list[dict]]:
    """Run a handler generator like gradio would: read the report file at each yield (the handler deletes its
    per-request folder when it finishes). Returns the merged final state of every output, and the reports."""
    merged: dict = {}
    reports: list[dict] = []
    for out in gen:
        if raw is not None:
            raw.append(out)
        merged.update(out)
        rep = value(out.get("report"))
        if rep:
            reports.append({"path": rep, "text": Path(rep).read_text()})
    return merged, reports


def write_spine_dicom(path: Path, *, seed: int = 1, lesions=("Surgical implant", "Vertebral collapse"),
                      **kwargs) -> Path:
    from spine_ui.synth.dicom_writer import write_dicom
    from spine_ui.synth.phantom import render_spine, to_stored

    img, _ = render_spine(np.random.default_rng(seed), list(lesions), height=640)
    kwargs.setdefault("modality", "DX")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deliberately invalid tag values in some tests
        return write_dicom(path, to_stored(img, 12), bits_stored=12, **kwargs)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def demo(gradio_tmp, tmp_path_factory):
    from spine_ui.bundle.resolve import ensure_untrained
    from spine_ui.bundle.store import open_bundle
    from spine_ui.core.pipeline import Analyzer
    from spine_ui.ui.app import build_app

    bundle = open_bundle(ensure_untrained(ROOT / "models" / "untrained"))
    app = build_app(Analyzer(bundle), examples_dir=tmp_path_factory.mktemp("examples"), lime_samples=LIME_SAMPLES)
    yield app
    app.close()


@pytest.fixture(scope="module")
def patient_dicom(tmp_path_factory) -> Path:
    """A spine DICOM carrying patient identifiers (which must never reach the UI or the report)."""
    d = tmp_path_factory.mktemp("dicom")
    return write_spine_dicom(d / "Doe_John_study.dcm", body_part="LSPINE",
                             extra={"PatientName": "Doe^John", "PatientID": "PID-424242",
                                    "PatientBirthDate": "19500101", "InstitutionName": "General Hospital"})


@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory) -> Path:
    import cv2
    from skimage import data

    p = tmp_path_factory.mktemp("photo") / "astronaut.png"
    cv2.imwrite(str(p), data.astronaut()[:, :, ::-1])
    return p


# --------------------------------------------------------------------------- build
def test_build_app_endpoints_and_furniture(demo, ui):
    names = {f.api_name: f for f in demo.fns.values()}
    assert {"analyze", "explain"} <= set(names)
    assert names["analyze"].api_visibility == "public" and names["explain"].api_visibility == "public"
    public = ("analyze", "explain", "load_example", "worklist_add", "review_mark", "worklist", "audit_export")
    ui_events = [f for f in demo.fns.values() if f.fn is not None and f.api_name not in public]
    assert ui_events and all(f.api_visibility == "private" for f in ui_events)
    assert ui.info["trained"] is False
    config = json.dumps(demo.get_config_file(), default=str)
    assert "UNTRAINED MODEL WEIGHTS" in config and "sx-banner" in config
    assert "Research use only" in config and "AGPL-3.0" in config
    assert "review database keeps findings" in config and "no study is stored" not in config  # the footer
    assert ui.info["runtime"] in config and ui.info["version"] in config
    assert "Always run detector and explanations" in config


def test_examples_are_generated(tmp_path):
    from spine_ui.core.decode import decode_bytes
    from spine_ui.ui.examples import ensure_examples

    paths = ensure_examples(tmp_path / "ex")
    assert [p.suffix for p in paths] == [".dcm", ".dcm", ".png", ".bmp"]
    stamps = [p.stat().st_mtime_ns for p in paths]
    assert ensure_examples(tmp_path / "ex") == paths  # idempotent: present files are kept
    assert [p.stat().st_mtime_ns for p in paths] == stamps
    sources = [decode_bytes(p.read_bytes()).meta.source for p in paths]
    assert sources == ["dicom", "dicom", "raster", "raster"]
    assert not list((tmp_path / "ex").glob(".*"))  # no temp files left behind


# --------------------------------------------------------------------------- full path
def test_dicom_full_path_streams_and_protects_identity(ui, patient_dicom):
    upload = as_upload(ui, patient_dicom)
    stages: list[dict] = []
    final, reports = drain(ui.on_upload(str(upload), True, LIME_SAMPLES), stages)
    # the upload is read into memory and gradio's copy (and its folder) deleted at once
    assert not upload.exists() and not upload.parent.exists()
    assert len(stages) == 3  # gate -> triage -> detect (+ Grad-CAM); LIME follows as its own event
    # the session keeps only the content hash; the bytes sit in a small bounded in-memory LRU
    key = stages[0]["state"]
    assert key == hashlib.sha256(patient_dicom.read_bytes()).hexdigest()
    assert ui.recent.get(key) == patient_dicom.read_bytes()
    assert len(reports) == 2  # after triage and after detection
    assert not Path(reports[-1]["path"]).exists()  # the per-request folder is gone once the stream ends

    triage = final["triage"]
    finding = value(final["details"])
    p = finding["probability"]
    assert finding["accepted"] and finding["gate"] == pytest.approx(0.478)
    assert f"{p:.3f}" in triage and "0.478" in triage and "gate" in triage
    assert ("ABNORMAL" if p >= 0.478 else "NORMAL") in triage
    for arch, weight in zip(ARCHS, ("0.42", "0.32", "0.26")):
        assert arch in triage and f"weight {weight}" in triage
        assert f"{finding['models'][arch]['probability']:.3f}" in triage
    assert "DenseNet-121" in triage and "EfficientNetV2-S" in triage and "ResNet-50" in triage

    # 'always': detector + Grad-CAM ran, panels visible, legend lists all 7 classes
    assert visible(final["detect_group"]) and visible(final["explain_group"])
    boxes, cam = final["boxes"], final["cam"]
    assert isinstance(boxes, np.ndarray) and boxes.ndim == 3 and isinstance(cam, np.ndarray)
    for name in ("Osteophytes", "Disc space narrowing", "Surgical implant", "Spondylolisthesis",
                 "Foraminal stenosis", "Vertebral collapse", "Other lesions"):
        assert name in final["legend"]
    rows = value(final["table"])
    assert isinstance(rows, list) and all(len(r) == 3 for r in rows)
    assert "LIME is running" in final["explain_note"]

    # LIME: the chained event, on the cached analysis, with progress reported
    ticks = []
    lime_out, _ = drain(ui.on_lime(key, True, LIME_SAMPLES, False, lambda *a, **k: ticks.append(a[0])))
    assert isinstance(lime_out["lime"], np.ndarray) and lime_out["lime"].shape == boxes.shape
    assert ticks and ticks[-1] == (LIME_SAMPLES, LIME_SAMPLES)
    assert f"LIME ({LIME_SAMPLES} samples" in lime_out["explain_note"]

    # per-model Grad-CAM selectable; different maps
    fused = ui.on_cam_choice("fused", key)
    per = ui.on_cam_choice("resnet50", key)
    assert fused.shape == per.shape and not np.array_equal(fused, per)

    # the downloadable report: the finding, no identifiers, no original file name
    for rep in reports:
        text = rep["text"]
        for secret in ("Doe", "John", "PID-424242", "19500101", "General Hospital", "PatientName", "Doe_John"):
            assert secret not in text
        assert "Doe" not in Path(rep["path"]).name
    last = json.loads(reports[-1]["text"])
    assert last["probability"] == finding["probability"] and last["bundle"]["trained"] is False
    for out in stages:
        shown = {k: value(v) for k, v in out.items() if isinstance(value(v), (str, dict))}
        viewer = shown.pop("viewer", None) or {}  # its image is base64 pixel data: check its text fields instead
        shown["viewer"] = {k: v for k, v in viewer.items() if k not in ("image", "cams", "lime")}
        assert "Doe" not in json.dumps(shown)


def test_normal_study_offers_explain_anyway(ui, monkeypatch):
    """Below the gate: verdict only, an 'Explain anyway' button, which then runs Grad-CAM (LIME chained)."""
    import spine_ui.core.triage as triage_mod
    from spine_ui.core.pipeline import Analyzer

    src = write_spine_dicom(ui.cache_dir / "normal-src.dcm", seed=5, lesions=(), body_part="SPINE")
    data = src.read_bytes()
    src.unlink()
    real = triage_mod.TriageResult

    def low(a: Analyzer, tta=True):  # force a probability below the gate, whatever the random weights say
        with a.lock:
            if a.triage is None and a.accepted:
                from spine_ui.core.triage import run_triage

                t = run_triage(a.enhanced, ui.analyzer.bundle, tta=False)
                a.triage = real(0.2, t.gate, t.models, t.feature_maps, t.placements)
        return a

    monkeypatch.setattr(ui.analyzer, "triage", lambda a, tta=True: low(a, tta))
    final, _ = drain(ui.run(data, ui.options(False, LIME_SAMPLES, explain=False, lime=False), new_state=True))
    assert "NORMAL" in final["triage"] and "ABNORMAL" not in final["triage"]
    assert visible(final["explain_btn"]) is True
    assert visible(final["detect_group"]) is not True and visible(final["explain_group"]) is not True
    assert not ui.analyzer.load(data).lesions  # detector not run below the gate by default

    key = final["state"]
    explained, _ = drain(ui.on_explain(key, False, LIME_SAMPLES))
    assert visible(explained["explain_group"]) is True and isinstance(explained["cam"], np.ndarray)
    assert visible(explained["explain_btn"]) is False
    lime_out, _ = drain(ui.on_lime(key, False, LIME_SAMPLES, True))
    assert isinstance(lime_out["lime"], np.ndarray)


def test_forgotten_study_asks_for_a_new_upload(ui):
    from spine_ui.ui.handlers import RecentStudies

    lru = RecentStudies(2)
    keys = [lru.put(f"k{i}", bytes([i]) * 10) for i in range(3)]
    assert lru.get(keys[0]) is None and lru.get(keys[2]) == bytes([2]) * 10
    final, _ = drain(ui.on_explain("0" * 64, False, LIME_SAMPLES))
    assert "no longer held in memory" in value(final["error"])
    assert [set(o) for o in ui.on_lime("0" * 64, False, LIME_SAMPLES)] == [{"explain_note"}]  # no change
    assert ui.on_cam_choice("fused", "0" * 64) is None


# --------------------------------------------------------------------------- rejections and errors
def _assert_error_only(final: dict) -> str:
    err = value(final["error"])
    assert visible(final["error"]) is True and "sx-error" in err
    assert final["triage"] == "" and final.get("boxes") is None and final.get("cam") is None
    assert visible(final["report"]) is False and visible(final["explain_btn"]) is False
    return err


def test_colour_photo_rejected_in_plain_words(ui, astronaut_png):
    upload = as_upload(ui, astronaut_png)
    final, reports = drain(ui.on_upload(str(upload), False, LIME_SAMPLES))
    err = _assert_error_only(final)
    assert "colour photograph" in err and "Input rejected" in err
    assert not reports and not upload.exists()
    assert final["state"] is None  # a rejected file is not kept, not even in the small in-memory LRU


def test_text_file_named_png_shows_error_panel(ui):
    from spine_ui.errors import InputError

    src = ui.cache_dir / "notes-src.png"
    src.write_text("this is a text file, not an image\n" * 4)
    upload = as_upload(ui, src, "scan.png")
    src.unlink()
    final, _ = drain(ui.on_upload(str(upload), False, LIME_SAMPLES))
    err = _assert_error_only(final)
    assert "The file could not be read" in err
    msg = re.search(r'sx-error-msg">(.*?)</div>', err).group(1)
    assert msg and "Traceback" not in err and "scan.png" not in err
    assert final["state"] is None and not upload.exists()
    with pytest.raises(InputError):
        ui.analyzer.load(b"this is a text file")


def test_dicom_tag_text_is_escaped(ui, tmp_path):
    # rejected path: the body part is quoted in the reason
    bad = write_spine_dicom(tmp_path / "xss.dcm", body_part="<script>alert(1)</script>")
    final, _ = drain(ui.on_upload(str(bad), False, LIME_SAMPLES))
    err = _assert_error_only(final)
    assert "<script" not in err.lower() and "&lt;SCRIPT&gt;ALERT(1)&lt;/SCRIPT&gt;" in err
    assert bad.exists()  # files outside gradio's cache are never deleted

    # accepted path: a spine body part with markup appears in the input checks of the triage panel
    odd = write_spine_dicom(tmp_path / "xss2.dcm", body_part="SPINE<img src=x onerror=alert(1)>")
    final, _ = drain(ui.on_upload(str(odd), False, LIME_SAMPLES))
    triage = final["triage"]
    assert "Input checks" in triage and "<img" not in triage.lower() and "&lt;IMG SRC=X ONERROR=ALERT(1)&gt;" in triage


def test_unexpected_failure_is_generic_and_logs_type_only(ui, monkeypatch, caplog):
    def boom(*_a, **_k):
        raise RuntimeError("secret_patient_name.dcm failed at byte 17")
        yield  # pragma: no cover

    monkeypatch.setattr(ui.analyzer, "stages", boom)
    with caplog.at_level(logging.INFO):
        final, _ = drain(ui.run(b"whatever", ui.options(False, 16, False, False), new_state=True))
    err = _assert_error_only(final)
    assert "failed unexpectedly" in err and "secret" not in err
    assert "RuntimeError" in caplog.text and "secret" not in caplog.text
    assert final["state"] is None


def test_cached_examples_are_never_deleted(demo, ui):
    kept = sorted(ui.keep())
    assert len(kept) == 4 and all(Path(p).is_relative_to(ui.cache_dir) for p in kept)
    for path in kept:  # gradio hands out the same cached copy on every click
        assert ui.take_upload(path)
        assert Path(path).exists()


def test_only_uploads_in_gradio_cache_are_deleted(demo, ui, patient_dicom):
    kept = as_upload(ui, patient_dicom, "kept.dcm")
    file_comp = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "sx-upload")
    file_comp.keep_in_cache.add(str(kept))
    try:
        assert ui.take_upload(str(kept)) == patient_dicom.read_bytes()
        assert kept.exists()  # a file gradio must keep (component value) stays
    finally:
        file_comp.keep_in_cache.discard(str(kept))
    ui.take_upload(str(kept))
    assert not kept.exists()
    ui.take_upload(str(patient_dicom))  # outside gradio's cache: never deleted
    assert patient_dicom.exists()


def test_api_handlers(ui, patient_dicom, astronaut_png):
    finding = ui.api_analyze(str(as_upload(ui, patient_dicom)))
    assert finding["accepted"] is True and set(finding["models"]) == set(ARCHS)
    assert finding["explanations"]["lime"] is None
    rejected = ui.api_analyze(str(as_upload(ui, astronaut_png)))
    assert rejected["accepted"] is False and "colour photograph" in rejected["reason"]
    assert rejected["probability"] is None and rejected["models"] == {}
    unreadable = ui.api_analyze(str(_text_file(ui)))
    assert unreadable["accepted"] is False and unreadable["error"] is True and unreadable["reason"]
    assert ui.api_analyze(None)["accepted"] is False


def _text_file(ui) -> Path:
    p = ui.cache_dir / f"{uuid.uuid4().hex}.png"
    p.write_text("not an image")
    return p


# --------------------------------------------------------------------------- gradio_client
def test_gradio_client_named_endpoints(demo, patient_dicom, gradio_tmp):
    import httpx
    from gradio_client import Client, handle_file

    from spine_ui.ui.app import launch_kwargs

    assert demo.spine.cache_dir == gradio_tmp  # uploads land in this test's own gradio cache
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                **launch_kwargs())
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        result = client.predict(handle_file(str(patient_dicom)), api_name="/analyze")
        assert result["accepted"] is True
        assert 0.0 <= result["probability"] <= 1.0 and result["gate"] == pytest.approx(0.478)
        assert set(result["models"]) == set(ARCHS)
        assert all(set(m) >= {"probability", "weight"} for m in result["models"].values())
        assert "Doe" not in json.dumps(result)
        # gradio's copy of the upload is gone (it keeps the original file name)
        assert not [p for p in gradio_tmp.rglob(patient_dicom.name)]

        finding, boxes, cam, lime = client.predict(handle_file(str(patient_dicom)), LIME_SAMPLES,
                                                   api_name="/explain")
        assert finding["explanations"]["lime"]["samples"] == LIME_SAMPLES and finding["detector_ran"] is True
        for img in (boxes, cam, lime):
            assert img and Path(img).is_file() and Path(img).stat().st_size > 1000
        assert not [p for p in gradio_tmp.rglob(patient_dicom.name)]

        # launch(max_file_size="50mb"): a larger upload is refused before it reaches the app
        big = gradio_tmp.parent / "big.dcm"
        with open(big, "wb") as fh:
            fh.truncate(50 * 1024 * 1024 + 1024)
        with open(big, "rb") as fh:
            r = httpx.post(f"http://127.0.0.1:{port}/gradio_api/upload", files={"files": ("big.dcm", fh)},
                           timeout=120)
        assert r.status_code == 413 and "maximum" in r.text.lower()
        assert not [p for p in gradio_tmp.rglob("big.dcm")]
    finally:
        demo.close()
