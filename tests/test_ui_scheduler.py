"""The web app on the scheduler: gradio's analysis events no longer serialise requests, and a session's LIME
stops when the session uploads another study or closes, while the page gets no stale update."""
from __future__ import annotations

import threading

import pytest

from spine_ui.bundle.store import open_bundle
from spine_ui.config import SchedulerConfig
from spine_ui.core.pipeline import Analyzer
from spine_ui.ui.app import build_app, session
from spine_ui.ui.handlers import NOTHING

from conftest import write_phantom_dicom
from uihelpers import as_upload


@pytest.fixture(scope="module")
def small_demo(gradio_tmp, small_bundle_dir):
    app = build_app(Analyzer(open_bundle(small_bundle_dir, "onnx")), examples_dir=None, lime_samples=16)
    yield app
    app.close()


def test_app_orders_work_with_the_scheduler(small_demo):
    ui = small_demo.spine
    assert ui.analyzer.scheduler is not None
    limits = {fn.concurrency_id: fn.concurrency_limit for fn in small_demo.fns.values()
              if fn.concurrency_id in ("analysis", "view")}
    assert limits == {"analysis": SchedulerConfig().ui_concurrency, "view": SchedulerConfig().ui_concurrency}
    names = {fn.api_name for fn in small_demo.fns.values()}
    assert {"analyze", "explain"} <= names  # the API keeps its endpoints


def _upload(ui, path, sid) -> str:
    keys = [out["state"] for out in ui.on_upload(str(as_upload(ui, path)), True, 16, None, sid) if "state" in out]
    assert keys and keys[0]
    return keys[0]


def _upload_and_lime(ui, path, sid, samples, started: threading.Event, outs: list, keys: list) -> None:
    key = _upload(ui, path, sid)
    keys.append(key)

    def progress(*args, **kwargs):
        started.set()

    outs.extend(ui.on_lime(key, True, samples, False, progress, sid))


@pytest.mark.parametrize("how", ["new upload", "page closed"])
def test_session_lime_stops_when_replaced_or_closed(small_demo, tmp_path, how):
    ui = small_demo.spine
    sid = session(type("R", (), {"session_hash": f"test-{how}"})())
    started, outs = threading.Event(), []
    first = write_phantom_dicom(tmp_path / "a.dcm", seed=21)
    keys = []
    t = threading.Thread(target=_upload_and_lime, args=(ui, first, sid, 2000, started, outs, keys))
    t.start()
    assert started.wait(120)
    if how == "new upload":
        second = write_phantom_dicom(tmp_path / "b.dcm", seed=22)
        assert _upload(ui, second, sid) != keys[0]  # the new study's first answer came back
    else:
        ui.close_session(sid)
    t.join(120)
    assert not t.is_alive()
    assert outs == [dict(NOTHING)]  # the stopped LIME sends nothing to the page
    assert ui.analyzer.cached(keys[0]).lime is None
    other = write_phantom_dicom(tmp_path / "c.dcm", seed=23)  # another session is not affected
    started2, outs2 = threading.Event(), []
    _upload_and_lime(ui, other, session(type("R", (), {"session_hash": "other"})()), 16, started2, outs2, [])
    assert outs2 and outs2[-1].get("lime") is not None
