"""The training orchestrator: ``train(TrainArgs)`` runs data -> classify -> detect -> select -> report ->
export (one module each under :mod:`spine_ui.train.stages`).

Protocol
--------
- Cross-validation: study-grouped, stratified K-fold (``spine_ui.train.folds.grouped_folds``, default 5) on
  the *train* split. Each DERNet member is trained on K-1 folds with early stopping on the held-out fold's
  AUROC; the held-out fold is then scored with the serving TTA views, giving out-of-fold (OOF) predictions.
- Selection: ensemble weights by grid search (0.05 steps) maximising OOF AUROC, gate by Youden's J on the
  OOF ensemble (``spine_ui.train.selection``). With ``folds < 2`` selection is skipped and the defaults
  (0.42 / 0.32 / 0.26, gate 0.478) are kept.
- Final classifiers (exported): by default each member is retrained on the whole train split for the median
  of its folds' best epochs ("refit"; ``ClassifierTrainConfig.final = "best_fold"`` keeps the fold model
  with the best validation AUROC instead). Without CV they train for ``epochs`` on the train split.
- Detector: YOLO11 via ultralytics on the train split minus a study-grouped holdout (1/5 of the studies)
  that ultralytics validates on to keep ``best.pt``.
- The test split is read only by the report stage.
- Preprocessing: ``TrainArgs.preprocess`` builds the cache, feeds the classifiers and is written into the
  manifest, which is what serving reads (``spine_ui.core.contract`` is the shared model input).

Run folder (default ``runs/<name>`` when the bundle goes to ``models/<name>``, else ``<out>_run``)::

    args.json  timings.json  folds.json  cache/ (enhanced PNGs + YOLO labels)
    classify/<arch>/fold<k>/{best.pt,last.pt,done.json,oof.csv}  classify/<arch>/final/...  classify/done.json
    detect/{train.txt,holdout.txt,data.yaml,<arch>.yaml,train/ (ultralytics run),done.json}
    select/{selection.json,done.json}  report/{report.md,report.html,metrics.json,*.png,done.json}
    export/done.json

Resuming: with ``resume`` a stage whose ``done.json`` fingerprint matches the current settings is skipped,
and unfinished classifier units / the ultralytics run continue from their ``last.pt``. Without it, the
requested stages are recomputed (the image cache is always reused). Stages not requested reuse whatever
earlier runs left in the run folder.

Progress goes to the ``spine_ui.train`` loggers; with ``TrainArgs.verbose`` they print to stderr with the
elapsed time, otherwise only warnings do.
"""
from __future__ import annotations

import datetime as _dt
import logging
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from spine_ui.train.config import TrainArgs
from spine_ui.train.stages.common import done, fingerprint, ids_key, read_json, write_json

__all__ = ["TrainArgs", "TrainResult", "train", "default_run_dir"]

LOGGER = "spine_ui.train"
log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Where a run left its outputs, and the report's metrics (or the selection when no report ran)."""

    run_dir: Path
    bundle: Path | None
    report: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def default_run_dir(out: Path) -> Path:
    """``runs/<name>`` for a bundle at ``models/<name>``, else ``<out>_run``."""
    out = Path(out)
    if out.parent.name == "models":
        return out.parent.parent / "runs" / out.name
    return out.with_name(out.name + "_run")


class _Elapsed(logging.Formatter):
    """``[train mm:ss.s] message`` (warnings prefixed ``WARNING:``), time since the run started."""

    def __init__(self) -> None:
        super().__init__()
        self.t0 = time.time()

    def format(self, record: logging.LogRecord) -> str:
        t = record.created - self.t0
        level = f"{record.levelname}: " if record.levelno >= logging.WARNING else ""
        return f"[train {int(t // 60):3d}:{t % 60:04.1f}] {level}{record.getMessage()}"


@contextmanager
def _progress_to_stderr(verbose: bool) -> Iterator[None]:
    """While training, the ``spine_ui.train`` loggers print to stderr: INFO and up when verbose, else warnings."""
    logger = logging.getLogger(LOGGER)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Elapsed())
    handler.setLevel(logging.INFO if verbose else logging.WARNING)
    saved = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the CLI's root handler would print every line twice
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def train(args: TrainArgs) -> TrainResult:
    """Run the requested stages; returns where the bundle and the report are."""
    import os

    args = args.resolved()
    with _progress_to_stderr(args.verbose and os.environ.get("RANK", "0") == "0"):  # rank 0 speaks for all
        return _train(args)


def _train(args: TrainArgs) -> TrainResult:
    from spine_ui._env import restore_threads
    from spine_ui.train import distributed
    from spine_ui.train.stages.classify import clf_key, stage_classify
    from spine_ui.train.stages.data import make_folds, prepare_data
    from spine_ui.train.stages.detect import stage_detect
    from spine_ui.train.stages.export import stage_export
    from spine_ui.train.stages.report import stage_report
    from spine_ui.train.stages.select import default_selection, stage_select

    run_dir = args.run_dir or default_run_dir(args.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    dist, device = distributed.setup(args.device)  # one rank of a torchrun job, or a plain single process
    threads = distributed.threads_per_rank()
    restore_threads(threads)
    log.info("run folder %s; device %s; stages %s%s%s", run_dir, device.type, ", ".join(args.stages),
             " (resuming)" if args.resume else "",
             f"; rank {dist.rank} of {dist.world} ({dist.backend})" if dist.enabled else "")
    timings: dict[str, float] = dict((read_json(run_dir / "timings.json") or {}).get("seconds", {}))

    t = time.perf_counter()
    if dist.is_main:  # rank 0 writes the data, the cache and the folds; the other ranks receive them
        write_json(run_dir / "args.json", asdict(args))
        prepared = prepare_data(args, run_dir)
        folds = make_folds(prepared[0], args, run_dir)
    train_split, test_split, _cache, folds = distributed.broadcast(
        (*prepared, folds) if dist.is_main else None, dist)
    timings["data"] = time.perf_counter() - t

    def run_stage(name: str, fp: str, fn: Callable[[], dict],
                  valid: Callable[[dict], bool] = lambda _r: True) -> dict | None:
        """Run (or skip, or reuse) one stage and record its ``done.json``."""
        marker = run_dir / name / "done.json"
        if not dist.is_main and name != "classify":  # only the classifiers train on every rank
            return None
        if name not in args.stages:
            d = read_json(marker)
            if d is not None and d.get("fingerprint") != fp:
                log.warning("the %s stage in the run folder was made with other settings; using it anyway", name)
            return d.get("result") if d and valid(d.get("result") or {}) else None
        if args.resume:
            d = done(marker, fp)
            if d is not None and valid(d.get("result") or {}):
                log.info("stage %s: done (skipped)", name)
                return d["result"]
        log.info("stage %s", name)
        t0 = time.perf_counter()
        result = fn()
        timings[name] = time.perf_counter() - t0
        if not dist.is_main:
            return result
        write_json(marker, {"fingerprint": fp, "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(
            timespec="seconds"), "seconds": timings[name], "result": result})
        write_json(run_dir / "timings.json", {"seconds": timings})
        return result

    fold_key = [[ids_key([train_split.ids[i] for i in va])] for _, va in folds]
    clf_fp = fingerprint("classify", clf_key(args), fold_key, ids_key(train_split.ids), args.selection.tta_views)
    classify = run_stage("classify", clf_fp, lambda: stage_classify(args, train_split, folds, run_dir, device))
    distributed.barrier(dist)
    distributed.teardown()  # the later stages run on rank 0 alone (ultralytics launches its own DDP)
    if not dist.is_main:
        return TrainResult(run_dir, None, None, {}, timings)
    det_fp = fingerprint("detect", asdict(args.detector), asdict(args.preprocess), ids_key(train_split.ids))
    detect = run_stage("detect", det_fp, lambda: stage_detect(args, train_split, run_dir, device),
                       valid=lambda r: Path(r.get("best", "")).is_file())
    restore_threads(threads)
    sel_fp = fingerprint("select", clf_fp, asdict(args.selection))
    selection = run_stage("select", sel_fp, lambda: stage_select(args, train_split, folds, run_dir))
    if selection is None:
        selection = default_selection(args, "the select stage has not run")
    rep_fp = fingerprint("report", clf_fp, det_fp if detect else None, selection, asdict(args.report),
                         ids_key(test_split.ids))
    report = run_stage("report", rep_fp, lambda: stage_report(args, train_split, test_split, folds, selection,
                                                              detect, classify, run_dir, device, timings))
    exp_fp = fingerprint("export", rep_fp, str(args.out), asdict(args.export), args.name)
    exported = run_stage("export", exp_fp, lambda: stage_export(
        args, train_split, test_split, folds, selection, detect, report["results"] if report else None, classify,
        run_dir, device), valid=lambda r: (Path(r.get("bundle", "")) / "manifest.json").is_file())
    restore_threads()
    write_json(run_dir / "timings.json", {"seconds": timings})
    bundle = Path(exported["bundle"]) if exported and "export" in args.stages else (
        args.out if (args.out / "manifest.json").is_file() else None)
    report_path = run_dir / "report" / "report.md" if report else None
    metrics = report["results"] if report else {"selection": selection}
    log.info("done: bundle %s, report %s", bundle, report_path)
    return TrainResult(run_dir, bundle, report_path, metrics, timings)
