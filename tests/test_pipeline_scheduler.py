"""The Analyzer on the scheduler: same results as inline, first answers overtake a running LIME, LIME stops
when its token is cancelled, input errors reach only their caller."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from spine_ui.bundle.store import open_bundle
from spine_ui.config import SchedulerConfig
from spine_ui.core.pipeline import AnalysisOptions, Analyzer
from spine_ui.errors import InputError, TaskCancelledError
from spine_ui.services.scheduler import CancelToken, Lane, Scheduler

from conftest import write_phantom_dicom


@pytest.fixture(scope="module")
def sched():
    s = Scheduler(SchedulerConfig())
    yield s
    s.close()


@pytest.fixture()
def analyzers(small_bundle_dir, sched):
    bundle = open_bundle(small_bundle_dir, "onnx")
    return Analyzer(bundle), Analyzer(bundle, scheduler=sched, lime_batch=8)


def test_scheduled_results_equal_inline(analyzers, tmp_path):
    inline, scheduled = analyzers
    path = write_phantom_dicom(tmp_path / "a.dcm", seed=3)
    opts = AnalysisOptions(detect="always", lime=True, explain_normal=True, lime_samples=24)
    a = inline.analyze(path, options=opts)
    b = scheduled.analyze(path, options=opts)
    assert a is not b and a.triage.probability == b.triage.probability
    assert np.array_equal(a.cam.fused, b.cam.fused)
    # LIME's batch size differs (bundle's 16 vs 8) and the perturbations are the same: same weights
    assert np.allclose(a.lime.segment_weights, b.lime.segment_weights, atol=1e-6)


def test_first_answer_overtakes_a_running_lime(analyzers, sched, tmp_path):
    _, analyzer = analyzers
    a = analyzer.analyze(write_phantom_dicom(tmp_path / "a.dcm", seed=4), options=AnalysisOptions(explain_normal=True))
    progress: list[int] = []
    at_first_answer: list[int] = []
    errors: list[BaseException] = []

    def run_lime():
        try:
            analyzer.lime(a, 400, progress=lambda done, total: progress.append(done))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=run_lime)
    t.start()
    while len(progress) < 2:
        t.join(0.01)
        assert t.is_alive(), "LIME finished before the test could overtake it"
    b = analyzer.analyze(write_phantom_dicom(tmp_path / "b.dcm", seed=5),
                         options=AnalysisOptions(detect="always", explain_normal=True))
    at_first_answer.append(progress[-1])
    t.join(120)
    assert not errors and a.lime is not None and b.triage is not None and b.cam is not None
    assert at_first_answer[0] < 400  # B's whole first answer came back while A's LIME was still running
    assert sched.queued() == {Lane.INTERACTIVE: 0, Lane.EXPLAIN: 0}


def test_lime_stops_when_its_study_is_replaced(analyzers, sched, tmp_path):
    _, analyzer = analyzers
    a = analyzer.analyze(write_phantom_dicom(tmp_path / "c.dcm", seed=6), options=AnalysisOptions(explain_normal=True))
    token = CancelToken()
    progress: list[int] = []

    def on_progress(done: int, total: int) -> None:
        progress.append(done)
        if done >= 16:
            token.cancel("replaced")  # e.g. a new upload in the same session

    with pytest.raises(TaskCancelledError):
        analyzer.lime(a, 400, progress=on_progress, token=token)
    assert a.lime is None and max(progress) < 400
    assert sched.interactive(lambda: "serving") == "serving"


def test_input_error_reaches_only_its_caller(analyzers, tmp_path):
    _, analyzer = analyzers
    with pytest.raises(InputError):
        analyzer.analyze(b"not an image at all" * 10)
    ok = analyzer.analyze(write_phantom_dicom(tmp_path / "d.dcm", seed=7))
    assert ok.accepted and ok.triage is not None
