"""The priority scheduler with fake tasks: lane order, yielding between LIME batches, cancellation, no
deadlock, exceptions reaching only their caller."""
from __future__ import annotations

import threading
import time

import pytest

from spine_ui.config import SchedulerConfig
from spine_ui.errors import SchedulerBusyError, SchedulerClosedError, TaskCancelledError
from spine_ui.services.scheduler import CancelToken, Lane, Scheduler


@pytest.fixture()
def sched():
    s = Scheduler(SchedulerConfig())
    yield s
    s.close()


def block(s: Scheduler) -> threading.Event:
    """Occupy the single worker until the returned event is set."""
    release, started = threading.Event(), threading.Event()

    def hold():
        started.set()
        release.wait(10)

    s.submit(hold)
    assert started.wait(5)
    return release


def test_interactive_lane_runs_before_explain(sched):
    release = block(sched)
    order: list[str] = []
    handles = [sched.submit(lambda n=n: order.append(n), lane)
               for n, lane in [("e1", Lane.EXPLAIN), ("i1", Lane.INTERACTIVE), ("e2", Lane.EXPLAIN),
                               ("i2", Lane.INTERACTIVE)]]
    assert sched.queued() == {Lane.INTERACTIVE: 2, Lane.EXPLAIN: 2}
    release.set()
    for h in handles:
        h.result(5)
    assert order == ["i1", "i2", "e1", "e2"]  # lanes by priority, each lane first come first served


def test_interactive_waits_at_most_one_explain_batch(sched):
    """A LIME-like driver submits batches one at a time; an interactive task submitted meanwhile runs
    right after the batch in progress."""
    log: list[tuple[str, float]] = []
    token = CancelToken()
    batch_running = threading.Event()

    def batch(i: int):
        log.append((f"b{i}", time.perf_counter()))
        batch_running.set()
        time.sleep(0.05)
        return i

    def lime_driver():
        for i in range(12):
            sched.call(lambda i=i: batch(i), Lane.EXPLAIN, token)

    driver = threading.Thread(target=lime_driver)
    driver.start()
    assert batch_running.wait(5)
    time.sleep(0.12)  # a few batches in
    t_submit = time.perf_counter()
    sched.call(lambda: log.append(("first-answer", time.perf_counter())))
    driver.join(10)
    names = [n for n, _ in log]
    pos = names.index("first-answer")
    started_after = [n for n, t in log[:pos] if t >= t_submit]
    assert started_after == []  # no batch started between the submit and the interactive task
    assert 0 < pos < len(names) - 1  # it ran in the middle of the LIME run, which then carried on
    assert log[pos][1] - t_submit < 0.5  # about one 50 ms batch; generous for a loaded machine
    assert sorted(n for n in names if n.startswith("b")) == sorted(f"b{i}" for i in range(12))


def test_cancel_token_stops_queued_work_and_the_driver(sched):
    release = block(sched)
    token = CancelToken()
    ran: list[int] = []
    queued = [sched.submit(lambda i=i: ran.append(i), Lane.EXPLAIN, token) for i in range(3)]
    other = sched.submit(lambda: "kept", Lane.EXPLAIN)  # another study's work is untouched
    token.cancel("replaced")
    for h in queued:
        with pytest.raises(TaskCancelledError):
            h.result(5)  # the waiting caller is released at once, before the worker is free
    release.set()
    assert other.result(5) == "kept"
    assert ran == []
    with pytest.raises(TaskCancelledError):
        sched.call(lambda: None, Lane.EXPLAIN, token)  # a cancelled token refuses new batches
    assert token.reason == "replaced"
    h = sched.submit(lambda: None, Lane.EXPLAIN, token)
    with pytest.raises(TaskCancelledError):
        h.result(1)


def test_lime_like_run_stops_between_batches_when_cancelled(sched):
    token = CancelToken()
    done: list[int] = []
    errors: list[BaseException] = []

    def driver():
        try:
            for i in range(100):
                sched.call(lambda i=i: (time.sleep(0.01), done.append(i)), Lane.EXPLAIN, token)
        except TaskCancelledError as exc:
            errors.append(exc)

    t = threading.Thread(target=driver)
    t.start()
    while len(done) < 3:
        time.sleep(0.005)
    token.cancel()
    t.join(5)
    assert not t.is_alive() and len(errors) == 1
    assert 3 <= len(done) < 100


def test_exception_reaches_only_its_caller(sched):
    def boom():
        raise ValueError("bad study")

    h_bad = sched.submit(boom)
    h_ok = sched.submit(lambda: 42)
    with pytest.raises(ValueError, match="bad study"):
        h_bad.result(5)
    assert h_ok.result(5) == 42
    with pytest.raises(ValueError):
        sched.call(boom)
    assert sched.call(lambda: "still serving") == "still serving"


def test_nested_calls_and_many_threads_do_not_deadlock(sched):
    def outer():  # a task that itself calls the scheduler runs the inner work inline
        return sched.call(lambda: sched.call(lambda: "inner", Lane.EXPLAIN) + "+outer")

    assert sched.call(outer) == "inner+outer"
    results: list[int] = []
    lock = threading.Lock()

    def user(k: int):
        lane = Lane.EXPLAIN if k % 2 else Lane.INTERACTIVE
        for j in range(20):
            v = sched.call(lambda: k * 100 + j, lane)
            with lock:
                results.append(v)

    threads = [threading.Thread(target=user, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads)
    assert sorted(results) == sorted(k * 100 + j for k in range(8) for j in range(20))


def test_queue_limit_and_close():
    s = Scheduler(SchedulerConfig(max_interactive=1, max_explain=1))
    release = block(s)
    s.submit(lambda: 1)
    with pytest.raises(SchedulerBusyError) as err:
        s.submit(lambda: 2)
    assert "busy" in err.value.user_message
    waiting = s.submit(lambda: 3, Lane.EXPLAIN)
    release.set()
    s.close()
    with pytest.raises(SchedulerClosedError):
        s.submit(lambda: 4)
    assert waiting.done()  # run before the close or cancelled by it; never left hanging


def test_session_tokens_replace_and_close():
    from spine_ui.services.scheduler.sessions import SessionTokens

    tokens = SessionTokens(size=2)
    a = tokens.open("s1", "study-a")
    assert tokens.open("s1", "study-a") is a  # the same study keeps its token (LIME after the first answer)
    b = tokens.open("s1", "study-b")  # a new upload in the same session
    assert a.cancelled and a.reason == "replaced" and not b.cancelled
    other = tokens.open("s2", "study-a")
    assert not other.cancelled  # sessions are independent
    tokens.close("s1", "study-a")  # closing a study the session already left changes nothing
    assert not b.cancelled
    tokens.close("s1")
    assert b.cancelled and b.reason == "closed" and len(tokens) == 1
    tokens.open("s3", "x")
    tokens.open("s4", "y")  # bounded: the oldest session's token is cancelled when it is dropped
    assert other.cancelled and len(tokens) == 2
    assert not tokens.open(None, "k").cancelled  # API calls have no session


def test_hold_keeps_explain_waiting_between_interactive_tasks():
    """A first answer is several tasks; while it holds, a queued LIME batch does not slip in between them."""
    s = Scheduler(SchedulerConfig(hold_s=5.0))
    order: list[str] = []
    try:
        with s.hold():
            s.call(lambda: order.append("decode"))
            batch = s.submit(lambda: order.append("lime batch"), Lane.EXPLAIN)
            time.sleep(0.1)  # the worker is idle, yet the batch waits for the hold
            s.call(lambda: order.append("triage"))
        batch.result(5)
        assert order == ["decode", "triage", "lime batch"]
        expired = Scheduler(SchedulerConfig(hold_s=0.05))
        with expired.hold():  # an abandoned hold lapses: LIME is never starved
            assert expired.call(lambda: "ran", Lane.EXPLAIN) == "ran"
        expired.close()
        assert s.submitted()[Lane.EXPLAIN] == 1 and s.submitted()[Lane.INTERACTIVE] == 2
    finally:
        s.close()
