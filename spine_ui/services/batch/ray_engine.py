"""The ``ray`` batch engine: the same worklist as the in-process batch, computed on a Ray cluster.

* The driver lists the inputs (``expand_inputs``: folders, zip members); every actor reads its own files, in
  a second thread of the actor, so the next study is read while one is analysed and reads run in parallel
  across actors and nodes. Separate reader tasks and Ray Data were measured and dropped: on the 2-core machine
  Ray started a worker process per 0-CPU read task (14 s for 24 files) and Ray Data took 5 s for what the
  actors read in milliseconds (``benchmarks/ray_batch.py``).
* A pool of :class:`TriageWorker` actors each open the bundle once: ONNX on CPU, torch on CUDA when Ray gave
  the actor a GPU (decided per actor from ``ray.get_gpu_ids()``). Each actor runs the local engine's own code
  (:func:`spine_ui.services.batch.analyze_each`) on one item, so rows, reasons and error rows are the same.
* An actor that dies is restarted by Ray (``max_restarts``) and its queued studies retried
  (``max_task_retries``); a study whose worker still failed is resubmitted to another actor up to
  ``max_attempts`` times, then reported as an unreadable row. Results are keyed by item index: none is lost,
  none reported twice.
* Without an address a local cluster is started on 127.0.0.1 only (no dashboard, no usage statistics) and
  stopped afterwards; with ``auto`` or ``HOST:PORT`` the running cluster is joined (every node needs
  spine_ui installed and the bundle and input files at the same paths, e.g. a shared filesystem).
"""
from __future__ import annotations

import copy
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from spine_ui.config import ClusterConfig, DecodeConfig
from spine_ui.errors import BundleError, EngineUnavailableError, InputError
from spine_ui.services.batch import GENERIC_FAILURE, Item, WorklistRow, analyze_each, read_source, safe_name
from spine_ui.services.batch.engines import BatchJob, BatchResult

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install -r requirements-extra.txt"
WORKER_FAILURE = ("The worker analysing this file stopped repeatedly; the file was not analysed (the other "
                  "studies were not affected).")


def import_ray(local: bool = True):
    """``ray``, imported on first use (an optional dependency). ``local``: a cluster started from this process
    listens on 127.0.0.1 only (Ray otherwise binds the machine's network address)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if local:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # node address = loopback
    try:
        import ray
    except ImportError as exc:
        raise EngineUnavailableError(f"The Ray engine needs the optional package 'ray' ({INSTALL_HINT}); "
                                     "or use --engine local.") from exc
    return ray


def start_local_cluster(num_cpus: int, object_store_mb: int = 512):
    """A private single-node Ray cluster on 127.0.0.1 whose workers import this spine_ui."""
    ray = import_ray(local=True)
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # read per call; the env switch only counts before ray's import
    root = str(Path(__file__).resolve().parents[3])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(address="local", num_cpus=max(1, int(num_cpus)), include_dashboard=False,
             _node_ip_address="127.0.0.1", object_store_memory=max(78, int(object_store_mb)) * 2 ** 20, log_to_driver=False,
             configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    return ray


# --------------------------------------------------------------------------- remote side
class _Unexpected:
    """Stands in for a file whose read failed unexpectedly: calling it raises, so the worker's
    ``analyze_each`` makes the same generic row the local engine makes."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __call__(self) -> bytes:
        raise RuntimeError(f"reading failed ({self.kind})")


def read_item(source: Any) -> Any:
    """The file's bytes, or the :class:`InputError` to report (never raises)."""
    try:
        return read_source(source, DecodeConfig())
    except InputError as exc:
        return exc
    except Exception as exc:  # the worker turns this into the generic row, as the local engine does
        return _Unexpected(type(exc).__name__)


class TriageWorker:
    """Runs as a Ray actor: opens the bundle once (ONNX on CPU; torch on the GPU Ray assigned, if any)."""

    def __init__(self, bundle: str, runtime: str, threads: int, options) -> None:
        import threading

        import ray

        from spine_ui.bundle.store import open_bundle
        from spine_ui.core.pipeline import Analyzer

        gpus = ray.get_gpu_ids()
        if runtime == "auto":
            runtime = "torch" if gpus else "onnx"
        self.options = options
        self.lock = threading.Lock()  # one analysis at a time; the other call reads its file meanwhile
        self.error: BundleError | None = None
        self.analyzer = None
        try:
            self.analyzer = Analyzer(open_bundle(bundle, runtime, threads), cache_size=4)
            self.analyzer.bundle.warm_up()
        except BundleError as exc:  # reported on the first study, by the driver, as the CLI reports it
            self.error = exc
        if runtime == "torch" or options.gradcam:
            from spine_ui._env import restore_threads

            restore_threads(threads)

    def info(self) -> dict[str, Any]:
        import ray

        label = self.analyzer.bundle.runtime.label if self.analyzer is not None else "unavailable"
        return {"pid": os.getpid(), "runtime": label, "gpus": [str(g) for g in ray.get_gpu_ids()],
                "node": ray.get_runtime_context().get_node_id()}

    def analyze(self, index: int, name: str, source: Any) -> tuple[int, WorklistRow, Any]:
        if self.error is not None:
            raise self.error
        data = read_item(source)
        with self.lock:
            row, a = next(analyze_each(self.analyzer, [(name, data)], self.options))
        return index, row, a.finding() if a is not None else None


# --------------------------------------------------------------------------- driver side
@dataclass
class RayBatch:
    """One run of the Ray engine. ``actors`` and ``workers`` (their ``info()``) are filled once started;
    ``startup_s`` is the time to connect (or start the cluster) and open the bundle in every actor."""

    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    actors: list = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)
    startup_s: float = 0.0
    resubmitted: int = 0

    def run(self, items: Sequence[Item], job: BatchJob) -> Iterator[BatchResult]:
        """Yield one :class:`BatchResult` per item as it finishes (any order; each index exactly once)."""
        t0 = time.perf_counter()
        ray, started = self._connect()
        try:
            self._start_actors(ray, job)
            self.startup_s = time.perf_counter() - t0
            yield from self._schedule(ray, items, job)
        finally:
            for actor in self.actors:
                ray.kill(actor)
            self.actors = []
            if started:
                ray.shutdown()

    # --- set-up -------------------------------------------------------------------------------------------
    def _connect(self):
        cfg = self.cluster
        address = (cfg.address or "").strip()
        ray = import_ray(local=not address)
        if ray.is_initialized():
            return ray, False
        if address:
            try:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise EngineUnavailableError(f"No Ray cluster could be joined at '{address}' "
                                             f"({type(exc).__name__}); start one with `ray start --head`, "
                                             "or leave --address out for a local cluster.") from exc
            return ray, True
        cpus = cfg.workers * cfg.cpus_per_worker if cfg.workers else (os.cpu_count() or 1)
        return start_local_cluster(cpus, cfg.object_store_mb), True

    def _start_actors(self, ray, job: BatchJob) -> None:
        cfg = self.cluster
        res = ray.cluster_resources()
        n = cfg.workers or max(1, int(res.get("CPU", 1)) // cfg.cpus_per_worker)
        gpus = int(res.get("GPU", 0))
        threads = job.threads or cfg.cpus_per_worker
        bundle = str(Path(job.bundle).resolve())
        for i in range(n):
            cls = ray.remote(num_cpus=cfg.cpus_per_worker, num_gpus=1 if i < gpus else 0,
                             max_restarts=cfg.max_restarts, max_task_retries=1,
                             max_concurrency=max(2, cfg.inflight_per_worker))(TriageWorker)
            self.actors.append(cls.remote(bundle, job.runtime, threads, job.options))
        try:
            self.workers = ray.get([a.info.remote() for a in self.actors])
        except ray.exceptions.RayActorError as exc:
            raise EngineUnavailableError("The Ray workers could not start (is spine_ui installed on every "
                                         f"node?): {type(exc).__name__}.") from exc

    # --- scheduling ---------------------------------------------------------------------------------------
    def _schedule(self, ray, items: Sequence[Item], job: BatchJob) -> Iterator[BatchResult]:
        cfg = self.cluster
        gate = _gate(job.bundle)
        pending = deque(range(len(items)))
        attempts = [0] * len(items)
        load = {i: 0 for i in range(len(self.actors))}
        inflight: dict[Any, tuple[int, int]] = {}  # result ref -> (item index, actor slot)
        done: set[int] = set()
        while pending or inflight:
            while pending and load and min(load.values()) < cfg.inflight_per_worker:
                slot = min(load, key=load.get)
                index = pending.popleft()
                name, source = items[index]
                inflight[self.actors[slot].analyze.remote(index, name, _portable(source))] = (index, slot)
                load[slot] += 1
            if not inflight:
                raise EngineUnavailableError("Every Ray worker stopped; the batch cannot go on.")
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                index, slot = inflight.pop(ref)
                if slot in load:
                    load[slot] -= 1
                try:
                    _i, row, finding = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # an error raised by our own code in the actor
                    if isinstance(exc.cause, BundleError):
                        raise exc.cause from None
                    log.error("Ray worker error on one study (%s).", type(exc.cause).__name__)
                    row, finding = WorklistRow(safe_name(items[index][0]), "unreadable", gate=gate,
                                               reason=GENERIC_FAILURE), None
                except ray.exceptions.RayError as exc:  # the worker process or its node went away
                    if isinstance(exc, ray.exceptions.ActorDiedError):
                        load.pop(slot, None)  # out of restarts: no more work for it
                    attempts[index] += 1
                    if attempts[index] < cfg.max_attempts:
                        log.warning("A Ray worker stopped (%s); its study is resubmitted.", type(exc).__name__)
                        self.resubmitted += 1
                        pending.appendleft(index)
                        continue
                    row, finding = WorklistRow(safe_name(items[index][0]), "unreadable", gate=gate,
                                               reason=WORKER_FAILURE), None
                if index in done:
                    continue
                done.add(index)
                yield BatchResult(index, row, finding)


def _portable(source: Any) -> Any:
    """A source another machine can open: absolute paths (bytes and in-memory archives travel as they are)."""
    if isinstance(source, (str, os.PathLike)):
        return os.path.abspath(os.fspath(source))
    inner = getattr(source, "source", None)  # an archive member's reader
    if isinstance(inner, (str, os.PathLike)):
        source = copy.copy(source)
        source.source = Path(os.path.abspath(os.fspath(inner)))
    return source


def _gate(bundle: Path) -> float:
    from spine_ui.bundle.manifest import read_manifest

    return read_manifest(Path(bundle)).triage.gate


__all__ = ["INSTALL_HINT", "WORKER_FAILURE", "RayBatch", "TriageWorker", "import_ray", "read_item",
           "start_local_cluster"]
