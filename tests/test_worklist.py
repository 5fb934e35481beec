"""Triage worklist: batch analysis, ordering, folder/zip expansion with zip-bomb guards, exports with review
marks, the web app's worklist handlers (called directly) and ``analyze DIR --csv`` (one subprocess).

Runs on the small 96 px bundle (no detector) without TTA: fast, and the untrained weights make normal/abnormal
whatever the probability says, so the tests assert the order by probability, not particular verdicts."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import write_phantom_dicom
from uihelpers import as_upload, value
from spine_ui.errors import BundleError, InputError
from spine_ui.core.pipeline import AnalysisOptions, Analyzer
from spine_ui.services.batch import (COLUMNS, GENERIC_FAILURE, ArchiveLimits, WorklistRow, analyze_batch, expand_inputs,
                               expand_upload, read_reviews, read_source, row_from_finding, safe_name, sort_rows,
                               to_csv, to_json, with_review)

ROOT = Path(__file__).resolve().parents[1]
FAST = AnalysisOptions(tta=False)
LIME_SAMPLES = 12


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def analyzer(small_bundle_dir):
    from spine_ui.bundle.store import open_bundle

    return Analyzer(open_bundle(small_bundle_dir, "onnx"), cache_size=32)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """normal-looking and abnormal-looking phantoms, a colour photo, a text file named .png, an empty file."""
    import cv2
    from skimage import data

    d = tmp_path_factory.mktemp("studies")
    out = {
        "plain": write_phantom_dicom(d / "plain.dcm", lesions=(), seed=3, height=384, modality="DX"),
        "lesions": write_phantom_dicom(d / "lesions.dcm", lesions=("Surgical implant", "Vertebral collapse"),
                                       seed=4, height=384, modality="DX"),
        "third": write_phantom_dicom(d / "third.dcm", lesions=("Osteophytes",), seed=9, height=384),
        "photo": d / "holiday.png",
        "text": d / "scan.png",
        "empty": d / "empty.dcm",
    }
    cv2.imwrite(str(out["photo"]), data.astronaut()[:, :, ::-1])
    out["text"].write_text("this is a text file, not an image\n" * 4)
    out["empty"].write_bytes(b"")
    return out


def _zip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            if name.endswith("/"):
                zf.writestr(zipfile.ZipInfo(name), b"")
            else:
                zf.writestr(name, data)
    return path


def _accepted_sorted(rows: list[WorklistRow]) -> None:
    probs = [r.probability for r in rows if r.accepted]
    assert probs == sorted(probs, reverse=True)
    kinds = [0 if r.accepted else 1 if r.verdict == "rejected" else 2 for r in rows]
    assert kinds == sorted(kinds)


# --------------------------------------------------------------------------- batch core
def test_batch_rows_order_and_reasons(analyzer, files):
    items = [("scan.png", files["text"]),  # unreadable first: must not stop the batch
             ("plain.dcm", files["plain"].read_bytes()),
             ("holiday.png", files["photo"]),
             ("empty.dcm", files["empty"]),
             ("sub/dir/lesions.dcm", files["lesions"]),  # a folder in the name: only the file name is kept
             ("third.dcm", files["third"])]
    ticks = []
    rows = list(analyze_batch(analyzer, items, FAST, progress=lambda d, t, r: ticks.append((d, t, r.study))))
    assert [r.study for r in rows] == ["scan.png", "plain.dcm", "holiday.png", "empty.dcm", "lesions.dcm", "third.dcm"]
    assert [t[:2] for t in ticks] == [(i, 6) for i in range(1, 7)]

    by = {r.study: r for r in rows}
    gate = analyzer.bundle.manifest.triage.gate
    for name in ("plain.dcm", "lesions.dcm", "third.dcm"):
        r = by[name]
        assert r.accepted and 0.0 <= r.probability <= 1.0 and r.gate == pytest.approx(gate)
        assert r.verdict == ("abnormal" if r.probability >= gate else "normal")
        assert r.reason is None and r.review is None and r.comment == ""
    assert by["plain.dcm"].key == hashlib.sha256(files["plain"].read_bytes()).hexdigest()
    assert by["holiday.png"].verdict == "rejected" and "colour photograph" in by["holiday.png"].reason
    assert by["holiday.png"].probability is None and by["holiday.png"].lesion_count is None
    assert by["scan.png"].verdict == "unreadable" and "Unsupported file type" in by["scan.png"].reason
    assert by["empty.dcm"].verdict == "unreadable" and "empty" in by["empty.dcm"].reason
    assert by["empty.dcm"].key is None  # nothing was read

    ordered = sort_rows(rows)
    _accepted_sorted(ordered)
    assert [r.verdict for r in ordered[3:]] == ["rejected", "unreadable", "unreadable"]
    assert [r.study for r in ordered[4:]] == ["scan.png", "empty.dcm"]  # ties keep the input order
    assert all(r.reason for r in ordered[3:])


def test_unexpected_failure_is_a_generic_row_and_the_batch_goes_on(analyzer, files, monkeypatch, caplog):
    real = analyzer.analyze
    poison = files["third"].read_bytes()

    def flaky(data, filename="", options=FAST):
        if data == poison:
            raise RuntimeError("secret_patient_name.dcm exploded")
        return real(data, filename, options)

    monkeypatch.setattr(analyzer, "analyze", flaky)
    with caplog.at_level(logging.INFO):
        rows = list(analyze_batch(analyzer, [("a.dcm", poison), ("b.dcm", files["plain"])], FAST))
    assert rows[0].verdict == "unreadable" and rows[0].reason == GENERIC_FAILURE
    assert rows[0].key == hashlib.sha256(poison).hexdigest()
    assert rows[1].accepted
    assert "RuntimeError" in caplog.text and "secret" not in caplog.text

    def broken(*_a, **_k):
        raise BundleError()

    monkeypatch.setattr(analyzer, "analyze", broken)
    with pytest.raises(BundleError):  # the bundle itself: no later study would fare better
        list(analyze_batch(analyzer, [("b.dcm", files["plain"])], FAST))


def test_repeated_studies_come_from_the_cache(analyzer, files, monkeypatch):
    import spine_ui.core.pipeline as pipeline

    first = list(analyze_batch(analyzer, [("plain.dcm", files["plain"]), ("lesions.dcm", files["lesions"])], FAST))
    calls = []
    real = pipeline.run_triage
    monkeypatch.setattr(pipeline, "run_triage", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = list(analyze_batch(analyzer, [("x.dcm", files["lesions"]), ("y.dcm", files["plain"])], FAST))
    assert calls == []
    assert [r.probability for r in again] == [first[1].probability, first[0].probability]


def test_row_from_finding_lesion_types_and_detector_state():
    from dataclasses import replace

    from spine_ui.core.detect import Lesion
    from spine_ui.core.finding import BundleInfo, Finding

    def les(label, name, conf):
        return Lesion(label, name, 0, conf, (0.0, 0.0, 1.0, 1.0))

    finding = Finding(accepted=True, reason=None, verdict="abnormal", probability=0.81, gate=0.478, abnormal=True,
                      bundle=BundleInfo("b", "1", False), runtime="onnx", detector_ran=True, key="k",
                      lesions=(les("Spondylolysthesis", "Spondylolisthesis", 0.9), les("Osteophytes", "Osteophytes", 0.7),
                               les("Spondylolysthesis", "Spondylolisthesis", 0.4)))
    row = row_from_finding("C:\\scans\\Study 1.dcm", finding)
    assert row.study == "Study 1.dcm" and row.lesion_count == 3 and row.key == "k"
    assert row.lesion_types == ("Spondylolisthesis", "Osteophytes")  # display names, most confident first
    below = replace(finding, verdict="normal", probability=0.2, detector_ran=False, lesions=())
    assert row_from_finding("n.dcm", below).lesion_count is None  # detector not run, not "0 lesions"
    rejected = replace(finding, accepted=False, verdict="rejected", reason="colour photograph", probability=None)
    rejected = row_from_finding("r.png", rejected)
    assert rejected.verdict == "rejected" and rejected.reason == "colour photograph"
    assert safe_name("a/b\\c\x00d\u202e.png") == "cd.png" and safe_name("") == "unnamed"
    assert len(safe_name("x" * 500 + ".dcm")) <= 160 and safe_name("x" * 500 + ".dcm").endswith(".dcm")


# --------------------------------------------------------------------------- folders and archives
def test_expand_directory_recursive_sorted_skipping_hidden(tmp_path, files):
    root = tmp_path / "Doe_John_2024"
    (root / "b" / "deeper").mkdir(parents=True)
    (root / "a").mkdir()
    (root / ".hidden_dir").mkdir()
    (root / "__MACOSX").mkdir()
    shutil.copy(files["plain"], root / "b" / "deeper" / "z.dcm")
    shutil.copy(files["lesions"], root / "a" / "1.2.840.10008.1")  # UID-named DICOM, no real suffix
    shutil.copy(files["photo"], root / "photo.PNG")
    shutil.copy(files["plain"], root / "IMG0001")  # extension-less DICOM
    shutil.copy(files["plain"], root / ".secret.dcm")
    shutil.copy(files["plain"], root / ".hidden_dir" / "x.dcm")
    shutil.copy(files["plain"], root / "__MACOSX" / "._z.dcm")
    (root / "DICOMDIR").write_bytes(b"x")
    (root / "notes.txt").write_text("not a study")
    _zip(root / "b" / "batch.zip", {"in_zip.dcm": files["third"].read_bytes()})
    skipped: list[str] = []
    items = expand_inputs([root, files["text"]], skipped=skipped)
    names = [n for n, _ in items]
    assert names == ["1.2.840.10008.1", "in_zip.dcm", "z.dcm", "IMG0001", "photo.PNG", "scan.png"]
    assert sorted(skipped) == ["DICOMDIR", "notes.txt"]
    assert all("/" not in n and "Doe" not in n for n in names)
    assert read_source(items[1][1]) == files["third"].read_bytes()  # archive member, read in memory
    assert isinstance(items[2][1], Path)
    missing = expand_inputs([tmp_path / "nope.dcm"])
    assert isinstance(missing[0][1], InputError)


def test_zip_upload_is_read_in_memory(tmp_path, files):
    z = _zip(tmp_path / "batch.zip", {
        "study/": b"", "study/one.dcm": files["plain"].read_bytes(), "study/two.png": files["photo"].read_bytes(),
        "__MACOSX/study/._one.dcm": b"\x00\x05\x16\x07", "study/.DS_Store": b"junk", "readme.md": b"hi",
        "inner.zip": b"PK\x05\x06" + bytes(18)})
    skipped: list[str] = []
    items = expand_upload("batch.zip", z.read_bytes(), skipped=skipped)
    assert [n for n, _ in items] == ["inner.zip", "one.dcm", "two.png"]  # members sorted like folders
    assert skipped == ["batch.zip:readme.md"]  # hidden entries and __MACOSX are not even listed
    assert read_source(items[1][1]) == files["plain"].read_bytes()
    assert isinstance(items[0][1], InputError) and "inside an archive" in items[0][1].user_message
    # the content decides: a zip without the .zip suffix is still an archive, a DICOM never is
    assert [n for n, _ in expand_upload("upload.bin", z.read_bytes())][1:2] == ["one.dcm"]
    assert expand_upload("x.dcm", files["plain"].read_bytes()) == [("x.dcm", files["plain"].read_bytes())]


@pytest.mark.parametrize("bad", ["../evil.dcm", "/etc/evil.dcm", "ok/../../evil.dcm", "C:\\evil.dcm"])
def test_zip_with_unsafe_member_names_is_refused(tmp_path, files, bad):
    z = _zip(tmp_path / "evil.zip", {"good.dcm": files["plain"].read_bytes(), bad: b"x"})
    items = expand_inputs([z])
    assert len(items) == 1 and items[0][0] == "evil.zip"
    assert isinstance(items[0][1], InputError) and "unsafe member names" in items[0][1].user_message


def test_zip_bomb_guards(tmp_path, files, analyzer):
    many = _zip(tmp_path / "many.zip", {f"{i}.dcm": b"x" for i in range(6)})
    (item,) = expand_inputs([many], limits=ArchiveLimits(max_members=5))
    assert "more than 5 files" in item[1].user_message
    assert len(expand_inputs([many], limits=ArchiveLimits(max_members=6))) == 6

    zeros = _zip(tmp_path / "bomb.zip", {"a.dcm": bytes(200_000), "b.dcm": bytes(200_000)})
    assert zeros.stat().st_size < 2_000  # highly compressible: the declared sizes are what count
    (item,) = expand_inputs([zeros], limits=ArchiveLimits(max_total_bytes=300_000))
    assert "would expand to more than" in item[1].user_message

    items = expand_inputs([zeros], limits=ArchiveLimits(max_member_bytes=100_000))
    assert all(isinstance(s, InputError) and "larger than" in s.user_message for _, s in items)

    bz = _zip(tmp_path / "bz.zip", {"c.dcm": files["plain"].read_bytes()}, compression=zipfile.ZIP_BZIP2)
    (item,) = expand_inputs([bz])
    assert "unsupported compression" in item[1].user_message

    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 truncated")
    (item,) = expand_inputs([broken])
    assert "damaged" in item[1].user_message

    # every refusal becomes an unreadable row with its reason; the batch goes on
    rows = list(analyze_batch(analyzer, expand_inputs([broken, files["plain"]]), FAST))
    assert [r.verdict for r in rows] == ["unreadable", rows[1].verdict] and rows[1].accepted


# --------------------------------------------------------------------------- exports
def _rows() -> list[WorklistRow]:
    return [
        WorklistRow("b.dcm", "abnormal", 0.912345, 0.478, 2, ("Osteophytes", "Spondylolisthesis"), key="k1"),
        WorklistRow("a.dcm", "normal", 0.1, 0.478, None, (), key="k2"),
        WorklistRow("=HYPERLINK(1).png", "rejected", None, 0.478, None, (), "The image looks like a colour "
                    "photograph, not a radiograph.", key="k3"),
        WorklistRow("scan.png", "unreadable", None, 0.478, None, (), "Unsupported file type: upload a DICOM."),
    ]


def test_reviews_round_trip_through_csv_and_json():
    rows = _rows()
    rows[0] = with_review(rows[0], "agree", 'Clear implant, "see L4", follow-up\nsecond line')
    rows[1] = with_review(rows[1], "disagree", "=1+1 looks like a formula; café")
    rows[3] = with_review(rows[3], None, "'quoted start")
    text = to_csv(rows)
    header = next(csv.reader(io.StringIO(text)))
    assert tuple(header) == COLUMNS
    assert "k1" not in text and "key" not in header
    cells = list(csv.reader(io.StringIO(text)))
    assert cells[3][0] == "'=HYPERLINK(1).png" and cells[2][8].startswith("'=")  # no live formulas
    back = read_reviews(text)
    js = to_json(rows, {"name": "untrained", "version": "0.0.0", "trained": False})
    doc = json.loads(js)
    assert doc["columns"] == list(COLUMNS) and list(doc["studies"][0]) == list(COLUMNS)
    assert "UNTRAINED" in doc["warning"] and "Research use only" in doc["disclaimer"]
    assert "k1" not in js
    for restored in (back, read_reviews(js), read_reviews(js.encode())):
        assert [r.to_dict() for r in restored] == [r.to_dict() for r in rows]
    assert back[0].review == "agree" and back[1].review == "disagree" and back[2].review is None
    assert back[0].comment.endswith("second line") and back[1].comment.startswith("=1+1")
    with pytest.raises(ValueError):
        with_review(rows[0], "maybe", "")


def test_exports_carry_file_names_only_never_identifiers(analyzer, tmp_path):
    folder = tmp_path / "Doe_John_PID-424242"
    folder.mkdir()
    write_phantom_dicom(folder / "study.dcm", seed=2, height=384,
                        extra={"PatientName": "Doe^John", "PatientID": "PID-424242", "PatientBirthDate": "19500101",
                               "InstitutionName": "General Hospital"})
    rows = list(analyze_batch(analyzer, expand_inputs([folder]), FAST))
    assert rows[0].study == "study.dcm"
    for text in (to_csv(rows), to_json(rows, {"name": "x", "version": "1", "trained": False})):
        for secret in ("Doe", "John", "424242", "19500101", "General Hospital", str(tmp_path)):
            assert secret not in text


# --------------------------------------------------------------------------- web app handlers
def drain(gen) -> tuple[dict, list[dict], list[dict]]:
    """Run a handler like gradio would: read the download files at each yield (the per-request folder is
    removed when the handler ends). Returns the merged outputs, the raw updates and the downloads seen."""
    merged: dict = {}
    raw: list[dict] = []
    downloads: list[dict] = []
    for out in gen:
        raw.append(out)
        merged.update(out)
        got = {k: Path(value(out[k])) for k in ("wl_csv", "wl_json", "report") if value(out.get(k))}
        downloads.append({k: (p, p.read_text()) for k, p in got.items()})
    return merged, raw, downloads


@pytest.fixture(scope="module")
def wlui(analyzer, tmp_path_factory):
    pytest.importorskip("gradio")
    from spine_ui.ui.handlers import SpineUI
    from spine_ui.ui.worklist import WorklistUI

    ui = SpineUI(analyzer, lime_samples=LIME_SAMPLES)
    ui.cache_dir = tmp_path_factory.mktemp("gradio-cache")
    return WorklistUI(ui)


def test_worklist_upload_fills_sorted_table_and_reviews(wlui, files, tmp_path, monkeypatch):
    import spine_ui.core.pipeline as pipeline
    from spine_ui.ui.worklist import CSV_NAME, JSON_NAME

    z = _zip(tmp_path / "more.zip", {"zipped/third.dcm": files["third"].read_bytes()})
    uploads = [str(as_upload(wlui.ui, files[k])) for k in ("text", "plain", "photo", "lesions")]
    uploads.append(str(as_upload(wlui.ui, z)))
    ticks = []
    final, raw, downloads = drain(wlui.on_upload(uploads, False, lambda *a, **k: ticks.append(a[0])))
    assert not any(Path(p).exists() for p in uploads)  # gradio's copies are gone, bytes held in memory only
    tables = [value(o["wl_table"]) for o in raw if "wl_table" in o]
    assert [len(t) for t in tables] == [0, 1, 2, 3, 4, 5, 5]  # fills in study by study
    assert ticks[-1] == (5, 5)
    table = tables[-1]
    assert [r[1] for r in table[-2:]] == ["holiday.png", "scan.png"]  # rejected, then unreadable
    probs = [float(r[3]) for r in table[:3]]
    assert probs == sorted(probs, reverse=True) and {r[1] for r in table[:3]} == {"plain.dcm", "lesions.dcm",
                                                                                   "third.dcm"}
    assert "colour photograph" in table[3][5] and "Unsupported file type" in table[4][5]
    assert final["wl_stop"]["visible"] is False
    last = downloads[-1]
    assert last["wl_csv"][0].name == CSV_NAME and last["wl_json"][0].name == JSON_NAME
    assert not last["wl_csv"][0].exists()  # per-request folder removed once the handler ended
    assert [r.study for r in read_reviews(last["wl_csv"][1])] == [r[1] for r in table]
    wl_id = final["wl_id"]
    assert "5</b> studies" in final["wl_status"]

    # open the top study: the single-study view (probability vs gate), from the cache
    calls = []
    real = pipeline.run_triage
    monkeypatch.setattr(pipeline, "run_triage", lambda *a, **k: calls.append(1) or real(*a, **k))
    top_number = table[0][0]
    opened, _, _ = drain(wlui.on_select(wl_id, top_number, False, LIME_SAMPLES))
    assert f"{float(table[0][3]):.3f}" in opened["triage"] and "gate 0.478" in opened["triage"]
    assert opened["wl_pos"] == top_number and "Case <b>1</b> of 5" in opened["wl_nav"]
    assert opened["wl_prev"]["interactive"] is False and opened["wl_next"]["interactive"] is True
    key = opened["state"]
    assert key and wlui.ui.recent.get(key) is not None

    nxt, _, _ = drain(wlui.on_step(wl_id, top_number, +1, False, LIME_SAMPLES))
    assert nxt["wl_pos"] == table[1][0] and "Case <b>2</b> of 5" in nxt["wl_nav"]
    assert f"{float(table[1][3]):.3f}" in nxt["triage"]
    lime, _, _ = drain(wlui.guard(wl_id, nxt["wl_pos"], wlui.ui.on_lime(nxt["state"], False, LIME_SAMPLES,
                                                                         True)))  # the chained LIME event
    assert isinstance(lime["lime"], np.ndarray)
    assert calls == []  # reopening never recomputed triage

    # an explanation still running for a study the reviewer has left never overwrites the new one
    late = wlui.guard(wl_id, top_number, wlui.ui.on_lime(opened["state"], False, LIME_SAMPLES, True))
    assert list(late) == [{"explain_note": pytest.importorskip("gradio").skip()}]

    saved, _, dl = drain(wlui.on_review(wl_id, nxt["wl_pos"], "agree", "Implant looks fine, see L4"))
    assert "Saved: agree with comment" in saved["wl_saved"]
    row = value(saved["wl_table"])[1]
    assert row[6].startswith("agree: Implant")
    marks = read_reviews(dl[-1]["wl_csv"][1])
    assert marks[1].review == "agree" and marks[1].comment == "Implant looks fine, see L4"
    assert json.loads(dl[-1]["wl_json"][1])["studies"][1]["review"] == "agree"

    # rejected and unreadable rows open on their reason; the ends of the list stay put
    rej, _, _ = drain(wlui.on_step(wl_id, table[2][0], +1, False, LIME_SAMPLES))
    assert "Input rejected" in value(rej["error"]) and "colour photograph" in value(rej["error"])
    bad, _, _ = drain(wlui.on_step(wl_id, table[4][0], +1, False, LIME_SAMPLES))
    assert bad["wl_pos"] == table[4][0] and "Unsupported file type" in value(bad["error"])
    assert bad["wl_next"]["interactive"] is False
    gone, _, _ = drain(wlui.on_select("no-such-worklist", 1, False, LIME_SAMPLES))
    assert "no longer held" in value(gone["error"])


def test_worklist_limit_and_stop(wlui, files, monkeypatch):
    from spine_ui.ui.worklist import WorklistUI

    small = WorklistUI(wlui.ui, max_studies=2)
    uploads = [str(as_upload(wlui.ui, files[k])) for k in ("plain", "lesions", "third")]
    final, _, _ = drain(small.on_upload(uploads, False))
    table = value(final["wl_table"])
    assert len(table) == 3 and table[-1][1] == "third.dcm" and "at most 2 studies" in table[-1][5]

    uploads = [str(as_upload(wlui.ui, files[k])) for k in ("plain", "lesions", "third")]
    gen = wlui.on_upload(uploads, False)
    first = next(gen)
    next(gen)  # one study done
    assert "Stopping" in wlui.on_stop(first["wl_id"])["wl_progress"]
    rest = list(gen)
    table = value(rest[-1]["wl_table"])
    assert len(table) == 3 and sum("stopped" in r[5] for r in table) == 2


def test_app_has_a_worklist_tab(analyzer, tmp_path_factory, monkeypatch):
    pytest.importorskip("gradio")
    from spine_ui.ui.app import build_app

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gr")))
    demo = build_app(analyzer, examples_dir=None, lime_samples=LIME_SAMPLES)
    try:
        config = json.dumps(demo.get_config_file(), default=str)
        for elem in ("sx-wl-upload", "sx-wl-table", "sx-wl-csv", "sx-wl-json", "sx-wl-next", "sx-wl-review",
                     "sx-wl-triage", "sx-wl-cam", "sx-wl-lime", "sx-upload", "sx-triage"):
            assert f'"{elem}"' in config, elem
        assert all(f.api_visibility == "private" for f in demo.fns.values()
                   if f.api_name not in ("analyze", "explain", "load_example", "worklist_add", "review_mark",
                                                "worklist", "audit_export"))
        assert demo.spine_worklist.max_studies == analyzer.cache_size
    finally:
        demo.close()


def test_default_cache_holds_a_worklist(monkeypatch):
    pytest.importorskip("gradio")
    from spine_ui.config import UIConfig
    from spine_ui.ui.handlers import RecentStudies

    monkeypatch.delenv("SPINE_CACHE_STUDIES", raising=False)
    assert UIConfig.from_env().cache_studies == UIConfig().cache_studies >= 32
    monkeypatch.setenv("SPINE_CACHE_STUDIES", "100")
    assert UIConfig.from_env().cache_studies == 100
    monkeypatch.setenv("SPINE_CACHE_STUDIES", "lots")
    assert UIConfig.from_env().cache_studies == UIConfig().cache_studies
    lru = RecentStudies(10, max_bytes=25)
    keys = [lru.put(f"k{i}", bytes([i]) * 10) for i in range(3)]
    assert lru.get(keys[0]) is None and lru.get(keys[1]) and lru.get(keys[2])  # byte budget, not only count


# --------------------------------------------------------------------------- command line
def test_cli_analyze_dir_writes_csv_and_exits_2(small_bundle_dir, files, tmp_path):
    d = tmp_path / "batch"
    (d / "sub").mkdir(parents=True)
    for k in ("plain", "photo", "text"):
        shutil.copy(files[k], d / files[k].name)
    shutil.copy(files["lesions"], d / "sub" / "lesions.dcm")
    _zip(d / "more.zip", {"third.dcm": files["third"].read_bytes()})
    (d / "notes.txt").write_text("not a study")
    out = tmp_path / "out" / "worklist.csv"
    net = tmp_path / "net.log"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests' / 'support'}{os.pathsep}{ROOT}", "SPINE_NET_LOG": str(net)}
    proc = subprocess.run([sys.executable, "-m", "spine_ui", "analyze", str(d), "--csv", str(out), "--no-tta",
                           "--bundle", str(small_bundle_dir)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert not net.exists()
    assert "error: scan.png: Unsupported file type" in proc.stderr
    assert "1 of 5 files could not be read" in proc.stderr and "Traceback" not in proc.stderr
    assert "skipped 1 file" in proc.stderr
    for name in ("holiday.png", "plain.dcm", "lesions.dcm", "third.dcm"):
        assert f"== {name}" in proc.stdout
    assert "REJECTED:" in proc.stdout

    rows = read_reviews(out.read_text(encoding="utf-8"))
    assert {r.study for r in rows} == {"plain.dcm", "lesions.dcm", "third.dcm", "holiday.png", "scan.png"}
    _accepted_sorted(rows)
    assert [r.study for r in rows[3:]] == ["holiday.png", "scan.png"]
    assert rows[3].verdict == "rejected" and "colour photograph" in rows[3].reason
    assert rows[4].verdict == "unreadable" and "Unsupported file type" in rows[4].reason
    assert all(r.gate == pytest.approx(0.478) for r in rows)
    assert str(tmp_path) not in out.read_text()
