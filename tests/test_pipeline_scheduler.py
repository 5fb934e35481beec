"""The Analyzer on the scheduler: same results as inline, first answers overtake a running LIME or a running
run of explanation checks, LIME and the checks stop when their token is cancelled, input errors reach only
their caller."""
from __future__ import annotations

import math
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


class Recording:
    """The Analyzer's scheduler, logging each explain task as the worker starts it; ``on_batch(n)`` is called
    inside the n-th one (on the worker, while that batch runs)."""

    def __init__(self, sched: Scheduler) -> None:
        self.sched, self.log, self.on_batch = sched, [], None

    def interactive(self, fn):
        return self.sched.interactive(fn)

    def hold(self):
        return self.sched.hold()

    def explain(self, fn, token=None):
        def run():
            self.log.append("explain")
            if self.on_batch is not None:
                self.on_batch(self.log.count("explain"))
            return fn()

        return self.sched.explain(run, token)


def _checks_batches(bundle, lime_samples: int, batch: int) -> int:
    """Explain tasks of one run of checks: the curves' images (LIME and Grad-CAM maps) and the second LIME."""
    cfg = bundle.manifest.explain
    images = (2 + cfg.check_random_orders) * 2 * (cfg.check_steps - 1) + 2
    return math.ceil(images / batch) + math.ceil(lime_samples / batch)


def test_checks_on_the_explain_lane_equal_inline(small_bundle_dir, sched, tmp_path):
    bundle = open_bundle(small_bundle_dir, "onnx")
    inline, scheduled = Analyzer(bundle, lime_batch=8), Analyzer(bundle, scheduler=sched, lime_batch=8)
    path = write_phantom_dicom(tmp_path / "e.dcm", seed=8)
    opts = AnalysisOptions(detect="always", lime=True, explain_normal=True, lime_samples=24)
    a = inline.analyze(path, options=opts)
    before = sched.submitted()[Lane.EXPLAIN]
    b = scheduled.analyze(path, options=opts)
    assert a.checks is not None and a.checks.gradcam is not None and a.checks.lime is not None
    assert a.checks.gradcam == b.checks.gradcam and a.checks.lime == b.checks.lime  # every AUC, exactly
    assert a.checks.lime_stability == b.checks.lime_stability or (
        math.isnan(a.checks.lime_stability) and math.isnan(b.checks.lime_stability))
    assert a.finding().to_dict()["explanations"] == b.finding().to_dict()["explanations"]
    # LIME (3 batches of 8) and every model call of the checks went through the explain lane
    assert sched.submitted()[Lane.EXPLAIN] - before == 3 + _checks_batches(bundle, 24, 8)


@pytest.fixture()
def recorded(small_bundle_dir, sched, tmp_path):
    """An analyzer on a recording scheduler and study A with its first answer and LIME (24 samples) done."""
    rec = Recording(sched)
    analyzer = Analyzer(open_bundle(small_bundle_dir, "onnx"), scheduler=rec, lime_batch=8)
    a = analyzer.analyze(write_phantom_dicom(tmp_path / "f.dcm", seed=9),
                         options=AnalysisOptions(detect="always", explain_normal=True))
    analyzer.lime(a, 24)
    rec.log.clear()
    return rec, analyzer, a


def test_first_answer_runs_before_the_remaining_checks_batches(recorded, sched, tmp_path):
    rec, analyzer, a = recorded
    path_b = write_phantom_dicom(tmp_path / "g.dcm", seed=10)
    handles = []

    def on_batch(n: int) -> None:
        if n == 2:  # study A's checks are running: user B's first answer arrives (one interactive task)
            def first_answer():
                b = analyzer.analyze(path_b, options=AnalysisOptions(detect="always", explain_normal=True))
                rec.log.append("first answer")
                return b

            handles.append(sched.submit(first_answer))

    rec.on_batch = on_batch
    analyzer.checks(a)
    b = handles[0].result(60)
    total = _checks_batches(a.bundle, 24, 8)
    assert a.checks is not None and b.triage is not None and b.cam is not None
    # B waited for the batch in progress only; the rest of A's checks ran after it
    assert rec.log == ["explain"] * 2 + ["first answer"] + ["explain"] * (total - 2)


def test_cancelling_stops_the_checks_before_their_next_batch(recorded):
    rec, analyzer, a = recorded
    token = CancelToken()

    def on_batch(n: int) -> None:
        if n == 3:
            token.cancel("replaced")  # e.g. the session opened another study while batch 3 runs

    rec.on_batch = on_batch
    stages = []
    with pytest.raises(TaskCancelledError):
        for stage, _ in analyzer.stages(a, options=AnalysisOptions(lime=True, explain_normal=True,
                                                                      lime_samples=24), token=token):
            stages.append(stage)
    assert stages == ["gate", "triage", "detect", "lime"]  # LIME was done: the checks were cancelled
    assert rec.log == ["explain"] * 3 and a.checks is None
    rec.on_batch = None
    analyzer.checks(a)  # a later request computes them in full
    assert a.checks is not None and rec.log.count("explain") == 3 + _checks_batches(a.bundle, 24, 8)
