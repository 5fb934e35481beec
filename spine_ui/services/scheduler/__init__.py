"""Priority scheduler for model work: one inference worker pool fed by a priority queue with two lanes.

``Lane.INTERACTIVE`` (decode, gate, triage, detection, Grad-CAM: a first answer) is always taken before
``Lane.EXPLAIN`` (LIME and explanation-check batches); within a lane, first come first served. The worker runs each task to the
end (no preemption inside a runtime call), so LIME is submitted in small batches and an interactive task
waits at most one batch. Each runtime call already uses every core (intra-op threads = cores), so the
default pool has ONE worker thread: cores are never shared by two competing model calls.

A first answer is several tasks (decode, triage, detection, Grad-CAM) submitted one after another by the
request's thread; between two of them the worker would otherwise take the next LIME batch. ``hold()`` marks a
first answer in progress: while any hold is live, explain tasks wait (each hold lapses after
``SchedulerConfig.hold_s``, so an abandoned one cannot starve LIME).

A :class:`CancelToken` stops queued work (a LIME run or its checks, once the study was closed or replaced); a task's
exception reaches only the caller waiting on its :class:`TaskHandle`, and the worker keeps serving.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from concurrent.futures import CancelledError, Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Callable, Generic, Iterator, TypeVar

from spine_ui.config import SchedulerConfig
from spine_ui.errors import SchedulerBusyError, SchedulerClosedError, TaskCancelledError

T = TypeVar("T")

__all__ = ["CancelToken", "Lane", "Scheduler", "SchedulerConfig", "TaskHandle"]


class Lane(IntEnum):
    """Lower value runs first."""

    INTERACTIVE = 0
    EXPLAIN = 1


class CancelToken:
    """A one-way switch shared by the tasks of one piece of work (e.g. one study's LIME run)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self.reason = ""

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self, reason: str = "cancelled") -> None:
        with self._lock:
            if self._event.is_set():
                return
            self.reason = reason
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb()

    def on_cancel(self, cb: Callable[[], None]) -> None:
        """Call ``cb`` once when cancelled (at once if already cancelled)."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(cb)
                return
        cb()

    def check(self) -> None:
        """Raise :class:`TaskCancelledError` when cancelled."""
        if self.cancelled:
            raise TaskCancelledError()


class TaskHandle(Generic[T]):
    """The caller's side of one submitted task."""

    def __init__(self, future: "Future[T]", lane: Lane) -> None:
        self._future = future
        self.lane = lane

    def result(self, timeout: float | None = None) -> T:
        """The task's value; re-raises its exception; ``TaskCancelledError`` when it was cancelled."""
        try:
            return self._future.result(timeout)
        except CancelledError as exc:
            raise TaskCancelledError() from exc

    def done(self) -> bool:
        return self._future.done()

    def cancel(self) -> bool:
        """Drop the task if it has not started (True), else let it finish (False)."""
        return self._future.cancel()


@dataclass(order=True)
class _Task:
    lane: int
    seq: int
    fn: Callable[[], object] = field(compare=False)
    future: Future = field(compare=False)
    token: CancelToken | None = field(compare=False, default=None)


class Scheduler:
    """One pool of ``cfg.workers`` threads taking tasks from a two-lane priority queue."""

    def __init__(self, cfg: SchedulerConfig = SchedulerConfig(), name: str = "spine-infer") -> None:
        self.cfg = cfg
        self._heap: list[_Task] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._queued = {Lane.INTERACTIVE: 0, Lane.EXPLAIN: 0}
        self._submitted = {Lane.INTERACTIVE: 0, Lane.EXPLAIN: 0}
        self._holds: dict[int, float] = {}  # hold id -> monotonic deadline
        self._closed = False
        self._workers = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(max(1, cfg.workers))]
        self._worker_ids: set[int] = set()
        for t in self._workers:
            t.start()
            self._worker_ids.add(t.ident)  # type: ignore[arg-type]

    # --- public -------------------------------------------------------------------------------------------
    def submit(self, fn: Callable[[], T], lane: Lane = Lane.INTERACTIVE,
               token: CancelToken | None = None) -> TaskHandle[T]:
        """Queue ``fn``; its result or exception comes back through the handle only."""
        future: Future[T] = Future()
        handle = TaskHandle(future, lane)
        if token is not None and token.cancelled:
            future.cancel()
            return handle
        limit = self.cfg.max_interactive if lane == Lane.INTERACTIVE else self.cfg.max_explain
        with self._cond:
            if self._closed:
                raise SchedulerClosedError()
            if self._queued[lane] >= limit:
                raise SchedulerBusyError()
            self._queued[lane] += 1
            self._submitted[lane] += 1
            heapq.heappush(self._heap, _Task(int(lane), next(self._seq), fn, future, token))
            self._cond.notify()
        if token is not None:
            token.on_cancel(handle.cancel)
        return handle

    def call(self, fn: Callable[[], T], lane: Lane = Lane.INTERACTIVE, token: CancelToken | None = None,
             timeout: float | None = None) -> T:
        """Submit and wait. On a worker thread (a task calling the scheduler) ``fn`` runs inline: no deadlock."""
        if token is not None:
            token.check()
        if self.on_worker():
            return fn()
        return self.submit(fn, lane, token).result(timeout)

    def interactive(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the first-answer lane (the Analyzer's ``Scheduling`` protocol)."""
        return self.call(fn, Lane.INTERACTIVE)

    def explain(self, fn: Callable[[], T], token: CancelToken | None = None) -> T:
        """Run ``fn`` on the explanation lane, stopped by ``token``."""
        return self.call(fn, Lane.EXPLAIN, token)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """While inside, explain tasks wait (a first answer between its tasks); lapses after ``cfg.hold_s``."""
        with self._cond:
            hid = next(self._seq)
            self._holds[hid] = time.monotonic() + self.cfg.hold_s
        try:
            yield
        finally:
            with self._cond:
                self._holds.pop(hid, None)
                self._cond.notify_all()

    def submitted(self) -> dict[Lane, int]:
        """Tasks accepted since start, per lane."""
        with self._cond:
            return dict(self._submitted)

    def on_worker(self) -> bool:
        return threading.get_ident() in self._worker_ids

    def queued(self) -> dict[Lane, int]:
        """Tasks waiting (not running) per lane."""
        with self._cond:
            return dict(self._queued)

    def close(self, wait: bool = True) -> None:
        """Refuse new tasks, cancel queued ones, stop the workers."""
        with self._cond:
            self._closed = True
            pending, self._heap = self._heap, []
            for lane in self._queued:
                self._queued[lane] = 0
            self._cond.notify_all()
        for task in pending:
            task.future.cancel()
        if wait:
            for t in self._workers:
                if t.ident != threading.get_ident():
                    t.join()

    def __enter__(self) -> "Scheduler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- worker -------------------------------------------------------------------------------------------
    def _held_until(self) -> float | None:
        """The latest deadline of the live holds (expired ones dropped), or None."""
        now = time.monotonic()
        for hid in [h for h, d in self._holds.items() if d <= now]:
            del self._holds[hid]
        return max(self._holds.values()) if self._holds else None

    def _next(self) -> _Task | None:
        with self._cond:
            while True:
                while not self._heap and not self._closed:
                    self._cond.wait()
                if not self._heap:
                    return None
                until = self._held_until() if self._heap[0].lane == Lane.EXPLAIN and not self._closed else None
                if until is None:
                    break
                self._cond.wait(max(0.001, until - time.monotonic()))
            task = heapq.heappop(self._heap)
            self._queued[Lane(task.lane)] -= 1
            return task

    def _work(self) -> None:
        while True:
            task = self._next()
            if task is None:
                return
            if task.token is not None and task.token.cancelled:
                task.future.cancel()
            if not task.future.set_running_or_notify_cancel():
                continue
            try:
                result = task.fn()
            except BaseException as exc:  # noqa: BLE001 - goes to the caller, the worker keeps serving
                task.future.set_exception(exc)
            else:
                task.future.set_result(result)
            del task
