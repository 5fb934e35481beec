"""Bad inputs end to end: a generated corpus (``badinputs.make_corpus``) through the decoder, the CLI (one
subprocess for the whole corpus), the web app's handlers and its named API over gradio_client; odd upload
paths; and bad model bundles (a pickle that tries to run code is refused without running it).

Every unreadable file must give its own plain-language message (a distinctive word per case), never a
traceback or an HTTP error, and the app must keep serving good studies afterwards.
"""
from __future__ import annotations

import ast
import html
import json
import os
import re
import shutil
import uuid
from pathlib import Path

import pytest

from badinputs import UNICODE_NAME, failing, make_corpus, readable, spine_pixels
from uihelpers import LIME_SAMPLES, as_upload, free_port, value, visible
from spine_ui.core.decode import decode_file
from spine_ui.errors import BundleError, InputError
from spine_ui.synth.dicom_writer import write_dicom

gr = pytest.importorskip("gradio")

ROOT = Path(__file__).resolve().parents[1]
#: What the UI shows when a file cannot be decoded.
UNREADABLE_TITLE = "The file could not be read"


# --------------------------------------------------------------------------- helpers




def drain(gen) -> dict:
    """Run a handler generator to the end, like gradio; the merged final value of every output."""
    merged: dict = {}
    for out in gen:
        merged.update(out)
    return merged






def missing_words(text: str, words) -> list[str]:
    return [w for w in words if w.lower() not in text.lower()]


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("bad-inputs"))


# --------------------------------------------------------------------------- decoder
def test_corpus_decoder_errors_are_specific(corpus):
    """Each case raises exactly its error class with its word; readable cases decode; no file name echoed."""
    wrong = {}
    for name, (path, err, words) in corpus.items():
        try:
            study = decode_file(path)
        except InputError as exc:
            msg = exc.user_message
            if err is None or type(exc) is not err or missing_words(msg, words) or path.name in msg:
                wrong[name] = f"{type(exc).__name__}: {msg}"
            continue
        if err is not None:
            wrong[name] = f"decoded {study.shape}, expected {err.__name__}"
    assert wrong == {}
    assert {"unicode_name_dicom", "png_named_dcm"} == set(readable(corpus))


# --------------------------------------------------------------------------- CLI
def test_cli_reports_each_bad_file_and_analyses_the_good_ones(corpus, full_bundle_dir, tmp_path):
    """One subprocess for the whole corpus: the CLI goes on after a bad file, prints one `error:` line per bad
    file (in order, with its own message; a multi-file run may prefix the study's name), one JSON finding per
    readable file, no traceback or library log line, and exits 2."""
    from test_cli import run_cli

    names = list(corpus)
    paths = [str(corpus[n][0]) for n in names]
    proc, attempts = run_cli("analyze", *paths, "--json", "--no-tta", "--detect", "never",
                             "--bundle", str(full_bundle_dir), tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert attempts == []
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.splitlines()
    assert all(line.startswith(("error: ", "note: ")) for line in lines), proc.stderr  # no log lines
    summary = re.compile(r"^error: \d+ of \d+ files could not be read")
    errors = [line[len("error: "):] for line in lines if line.startswith("error: ") and not summary.match(line)]
    bad = failing(corpus)
    assert len(errors) == len(bad), proc.stderr
    wrong = {}
    for name, line in zip(bad, errors):
        file_name = corpus[name][0].name
        message = line[len(file_name) + 2:] if line.startswith(f"{file_name}: ") else line
        if missing_words(message, corpus[name][2]) or file_name in message:
            wrong[name] = line
    assert wrong == {}
    findings = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(findings) == len(readable(corpus))
    for f in findings:
        assert f["verdict"] in ("normal", "abnormal", "rejected") and "error" not in f
    unicode_finding = findings[readable(corpus).index("unicode_name_dicom")]
    assert unicode_finding["accepted"] is True and 0.0 <= unicode_finding["probability"] <= 1.0
    for p in paths:  # the findings never carry file names (which may hold patient names)
        assert Path(p).name not in proc.stdout
    assert "рентген" not in proc.stdout and "really_a_png" not in proc.stdout


# --------------------------------------------------------------------------- web app: handlers
def test_ui_upload_of_each_bad_file_shows_its_error_panel(ui, corpus):
    wrong = {}
    for name in failing(corpus):
        path, _err, words = corpus[name]
        upload = as_upload(ui, path)
        final = drain(ui.on_upload(str(upload), False, LIME_SAMPLES))
        panel = value(final["error"]) or ""
        text = html.unescape(panel)
        problems = []
        if visible(final["error"]) is not True or UNREADABLE_TITLE not in text:
            problems.append("no error panel")
        problems += [f"missing {w!r}" for w in missing_words(text, words)]
        if final.get("triage") != "" or final.get("state") is not None or final.get("cam") is not None:
            problems.append("results shown")
        if "Traceback" in text or path.name in text or html.escape(path.name) in panel:
            problems.append("traceback or file name in panel")
        if upload.exists() or upload.parent.exists():
            problems.append("upload kept")
        if problems:
            wrong[name] = problems
    assert wrong == {}


def test_api_handlers_answer_bad_files_with_an_error_finding(ui, corpus):
    wrong = {}
    for name in failing(corpus):
        path, _err, words = corpus[name]
        finding = ui.api_analyze(str(as_upload(ui, path)))
        if not (finding["error"] is True and finding["accepted"] is False and finding["verdict"] == "unreadable"
                and not missing_words(finding["reason"], words) and finding["probability"] is None):
            wrong[name] = finding["reason"]
        assert path.name not in json.dumps(finding, ensure_ascii=False)
    assert wrong == {}
    finding, boxes, cam, lime = ui.api_explain(str(as_upload(ui, corpus["truncated_dicom"][0])), 8)
    assert finding["error"] is True and "truncated" in finding["reason"] and (boxes, cam, lime) == (None, None, None)


def test_ui_keeps_serving_after_bad_files(ui, corpus):
    """After a run of unreadable files, the readable ones (a PNG named .dcm, a unicode-named DICOM) analyse."""
    for name in ("zero_bytes", "huge_png_ihdr", "nan_float_pixel_dicom"):
        drain(ui.on_upload(str(as_upload(ui, corpus[name][0])), False, LIME_SAMPLES))
    for name in readable(corpus):
        path = corpus[name][0]
        final = drain(ui.on_upload(str(as_upload(ui, path)), False, LIME_SAMPLES))
        assert visible(final["error"]) is not True, (name, value(final["error"]))
        assert "P(abnormal)" in final["triage"] and final["state"], name
        assert "рентген" not in final["triage"] and "really_a_png" not in final["triage"]


def test_upload_paths_with_dotdot_segments_and_hostile_names(ui, corpus, tmp_path):
    """The handler gets a path from gradio; it reads it, never builds a path from the file name, and deletes
    only a file that really lies in gradio's cache (whatever ``..`` segments the path string contains)."""
    text_file = corpus["text_named_png"][0]
    elsewhere = ui.cache_dir / uuid.uuid4().hex
    elsewhere.mkdir()

    # a path inside the cache, spelt with '..' segments: read, refused with its message, deleted
    upload = as_upload(ui, text_file)
    dotted = elsewhere / ".." / upload.parent.name / upload.name
    final = drain(ui.on_upload(str(dotted), False, LIME_SAMPLES))
    assert "Unsupported file type" in html.unescape(value(final["error"]))
    assert not upload.exists()

    # a path that climbs out of the cache: analysed (it is a readable study) but never deleted
    victim = tmp_path / "outside" / UNICODE_NAME
    victim.parent.mkdir()
    shutil.copyfile(corpus["unicode_name_dicom"][0], victim)
    climbing = elsewhere / os.path.relpath(victim, elsewhere)
    assert ".." in Path(climbing).parts
    final = drain(ui.on_upload(str(climbing), False, LIME_SAMPLES))
    assert visible(final["error"]) is not True and "P(abnormal)" in final["triage"]
    assert victim.exists()

    # hostile original names (markup, unicode, dots, url-encoded traversal): refused, never echoed, deleted
    for hostile in ("<b>пациент_患者<i>.dcm", "..%2F..%2Fetc%2Fpasswd.dcm", "....dcm", " ..png", "a\\..\\b.tif"):
        upload = as_upload(ui, text_file, hostile)
        final = drain(ui.on_upload(str(upload), False, LIME_SAMPLES))
        panel = value(final["error"])
        assert "Unsupported file type" in html.unescape(panel)
        assert hostile not in panel and html.escape(hostile) not in panel and "пациент" not in panel
        assert not upload.exists() and not upload.parent.exists()

    # a path that is a folder, or that does not exist: the error panel, not an exception
    for odd in (elsewhere, ui.cache_dir / uuid.uuid4().hex / "gone.dcm"):
        final = drain(ui.on_upload(str(odd), False, LIME_SAMPLES))
        assert "could not be read" in html.unescape(value(final["error"]))
    assert ui.api_analyze(str(elsewhere))["error"] is True


# --------------------------------------------------------------------------- web app: gradio_client
def test_gradio_client_bad_files_then_a_good_one(demo, corpus, gradio_tmp):
    from gradio_client import Client, handle_file

    from spine_ui.ui.app import launch_kwargs

    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                **launch_kwargs())
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        for name in ("text_named_png", "truncated_dicom", "huge_png_ihdr", "unicode_name_text"):
            path, _err, words = corpus[name]
            result = client.predict(handle_file(str(path)), api_name="/analyze")
            assert result["error"] is True and result["accepted"] is False, name
            assert not missing_words(result["reason"], words), (name, result["reason"])
        # a study the server has not seen (so not served from its cache) still runs the whole pipeline
        fresh = write_dicom(gradio_tmp.parent / "fresh.dcm", spine_pixels(512, seed=11), body_part="LSPINE")
        good = client.predict(handle_file(str(fresh)), api_name="/analyze")
        assert good["accepted"] is True and 0.0 <= good["probability"] <= 1.0
        assert {"decode", "triage"} <= set(good["timings_ms"])
        for name in corpus:  # gradio's copies of the uploads are gone
            assert not list(gradio_tmp.rglob(corpus[name][0].name)), name
    finally:
        demo.close()


# --------------------------------------------------------------------------- bad model bundles
def _torch_loads(tree: ast.AST):
    """Every call of torch.load / load imported from torch, in a parsed module."""
    from_torch = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                  and node.module == "torch" for a in node.names if a.name == "load"}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if (isinstance(f, ast.Attribute) and f.attr == "load" and isinstance(f.value, ast.Name)
                and f.value.id == "torch") or (isinstance(f, ast.Name) and f.id in from_torch):
            yield node


def test_every_torch_load_is_weights_only():
    """Static check over spine_ui/: torch.load always passes weights_only=True; no pickle/unsafe loaders."""
    calls, unsafe = 0, []
    for path in sorted((ROOT / "spine_ui").rglob("*.py")):
        source = path.read_text()
        rel = path.relative_to(ROOT)
        tree = ast.parse(source, str(rel))
        for call in _torch_loads(tree):
            calls += 1
            kw = {k.arg: k.value for k in call.keywords}
            if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                unsafe.append(f"{rel}:{call.lineno} torch.load without weights_only=True")
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if any(m in ("pickle", "cPickle", "dill", "joblib", "marshal", "shelve") for m in mods):
                    unsafe.append(f"{rel}:{node.lineno} imports a pickle-based loader")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                kw = {k.arg: k.value for k in node.keywords}
                ap = kw.get("allow_pickle")
                if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                    unsafe.append(f"{rel}:{node.lineno} allow_pickle not False")
                if node.func.attr in ("load", "unsafe_load") and isinstance(node.func.value, ast.Name) \
                        and node.func.value.id == "yaml":
                    unsafe.append(f"{rel}:{node.lineno} yaml.{node.func.attr} (use yaml.safe_load)")
                if node.func.attr == "load" and isinstance(node.func.value, ast.Attribute) \
                        and node.func.value.attr == "jit":
                    unsafe.append(f"{rel}:{node.lineno} torch.jit.load runs code from the file")
    assert calls >= 3  # the bundle runtime and the importer really were scanned
    assert unsafe == []


def test_the_static_check_sees_an_unsafe_call():
    bad = ast.parse("import torch\nfrom torch import load as L\ntorch.load(p)\nL(p, weights_only=False)\n"
                    "torch.load(p, weights_only=True)\n")
    flags = [any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in c.keywords)
             for c in _torch_loads(bad)]
    assert flags == [False, False, True]


class _Payload:
    """Pickles as a call of os.system: unpickling it with plain pickle would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def _bundle_with_file_replaced(src: Path, dst: Path, name: str, writer) -> Path:
    """A bundle at ``dst`` whose files link to ``src`` (no 400 MB copy), with ``name`` replaced by what
    ``writer(path)`` writes, and a manifest whose hashes are rewritten to match (so only safe loading stops it)."""
    from spine_ui.bundle.manifest import read_manifest, write_manifest

    dst.mkdir()
    for f in src.iterdir():
        if f.name not in (name, "manifest.json"):
            (dst / f.name).symlink_to(f.resolve())
    shutil.copyfile(src / "manifest.json", dst / "manifest.json")
    writer(dst / name)
    write_manifest(dst, read_manifest(dst))
    return dst


def test_pickle_payload_in_a_bundle_never_runs(small_bundle_dir, tmp_path):
    """A bundle whose resnet50.pt carries a pickle payload (os.system) and whose manifest hashes were rewritten
    to match: it passes the integrity check, but loading the torch runner refuses the file with a BundleError
    that names it, on both runtimes, and the payload never runs."""
    import pickle

    import torch

    from spine_ui.bundle.store import open_bundle

    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe)))  # an unsafe loader really runs it (the test file is malicious)
    assert probe.exists()

    marker = tmp_path / "payload-ran"
    payload = {"conv1.weight": torch.zeros(1), "evil": _Payload(marker)}
    b = _bundle_with_file_replaced(small_bundle_dir, tmp_path / "evil-bundle", "resnet50.pt",
                                   lambda p: torch.save(payload, p))
    bundle = open_bundle(b, "torch")  # hashes match: the manifest was rewritten by the attacker
    assert bundle.manifest.files["resnet50.pt"]
    with pytest.raises(BundleError, match="'resnet50.pt' could not be loaded safely") as info:
        bundle.classifier("resnet50")
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)
    with pytest.raises(BundleError, match="resnet50.pt"):
        bundle.warm_up()
    onnx_bundle = open_bundle(b, "onnx")  # the eager model for backprop Grad-CAM loads the .pt too
    with pytest.raises(BundleError, match="resnet50.pt"):
        onnx_bundle.torch_classifier("resnet50")
    assert not marker.exists()
