"""The training orchestrator: ``train(TrainArgs)`` runs classify -> detect -> select -> report -> export.

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
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from spine_ui.train.config import STAGES, TrainArgs

__all__ = ["TrainArgs", "TrainResult", "train", "add_train_parser", "cmd_train", "default_run_dir"]


@dataclass
class TrainResult:
    run_dir: Path
    bundle: Path | None
    report: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Split:
    ids: list[str]
    studies: list[str]
    labels: np.ndarray
    root: Path  # cache_dir/<split>

    def paths(self, idx: Sequence[int] | None = None) -> list[Path]:
        ids = self.ids if idx is None else [self.ids[i] for i in idx]
        return [self.root / "images" / f"{i}.png" for i in ids]


def default_run_dir(out: Path) -> Path:
    out = Path(out)
    if out.parent.name == "models":
        return out.parent.parent / "runs" / out.name
    return out.with_name(out.name + "_run")


def fingerprint(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _ids_key(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: Any) -> Path:
    from spine_ui.train.report import clean_json

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(clean_json(data), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def _done(path: Path, fp: str) -> dict | None:
    d = _read_json(path)
    return d if d and d.get("fingerprint") == fp else None


class _Logger:
    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.verbose:
            t = time.perf_counter() - self.t0
            print(f"[train {int(t // 60):3d}:{t % 60:04.1f}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data
def prepare_data(args: TrainArgs, run_dir: Path, log: Callable[[str], None]) -> tuple[Split, Split, Path]:
    """Synthetic data (when asked), then the enhanced cache of both splits."""
    from spine_ui.train.vindr import build_cache

    data = args.data
    if args.synthetic and args.synthetic > 0:
        from spine_ui.synth.dataset import make_dataset

        marker = data / ".synthetic.json"
        want = {"n": int(args.synthetic), "seed": int(args.synthetic_seed), "height": int(args.synthetic_height)}
        have = _read_json(marker)
        if have != want:
            if (data / "annotations" / "train.csv").exists() and have is None:
                raise FileExistsError(f"{data} already holds a dataset that --synthetic did not write; "
                                      "give --data an empty folder to generate a synthetic set")
            log(f"writing {args.synthetic} synthetic images (height {args.synthetic_height}) into {data}")
            for split in ("train", "test"):
                shutil.rmtree(data / f"{split}_images", ignore_errors=True)
            make_dataset(data, int(args.synthetic), seed=int(args.synthetic_seed), height=int(args.synthetic_height),
                         progress=False)
            _write_json(marker, want)
            shutil.rmtree(run_dir / "cache", ignore_errors=True)  # same image ids, new pixels
    for split in ("train", "test"):
        if not (data / "annotations" / f"{split}.csv").is_file():
            raise FileNotFoundError(f"{data}/annotations/{split}.csv not found (VinDr-SpineXR layout expected)")
    cache = run_dir / "cache"
    splits = []
    for split in ("train", "test"):
        index = build_cache(data, split, cache, args.preprocess, progress=args.verbose and sys.stderr.isatty())
        log(f"cache {split}: {len(index)} images ({index.built} built, {index.skipped} reused)")
        splits.append(Split([r.image_id for r in index.rows], [r.study_id for r in index.rows],
                            np.array([int(r.abnormal) for r in index.rows]), index.root))
    return splits[0], splits[1], cache


def make_folds(train: Split, args: TrainArgs, run_dir: Path, log) -> list[tuple[np.ndarray, np.ndarray]]:
    from spine_ui.train.folds import grouped_folds

    sel = args.selection
    if not sel.enabled:
        return []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            folds = grouped_folds(train.studies, train.labels, n_folds=sel.folds, seed=sel.seed)
        for w in caught:
            log(f"WARNING: {w.message}")
    except ValueError as exc:
        log(f"WARNING: cross-validation impossible ({exc}); selection falls back to the defaults")
        return []
    assignment = {}
    for k, (_, va) in enumerate(folds):
        for i in va:
            assignment[train.ids[int(i)]] = k
    _write_json(run_dir / "folds.json", {"folds": len(folds), "seed": sel.seed, "fold_of": assignment})
    return folds


# --------------------------------------------------------------------------- classify
def _clf_key(args: TrainArgs) -> dict:
    cfg = asdict(args.classifier)
    for k in ("workers", "eval_batch"):
        cfg.pop(k, None)
    cfg["preprocess"] = asdict(args.preprocess)
    return cfg


def _oof_path(run_dir: Path, arch: str, k: int) -> Path:
    return run_dir / "classify" / arch / f"fold{k}" / "oof.csv"


def _write_predictions(path: Path, ids: Sequence[str], labels: Sequence[int], views: np.ndarray) -> None:
    lines = ["image_id,label,probability,views"]
    for i, y, v in zip(ids, labels, views):
        lines.append(f"{i},{int(y)},{float(v.mean()):.8f},{';'.join(f'{x:.8f}' for x in v)}")
    path.write_text("\n".join(lines) + "\n")


def _read_predictions(path: Path) -> dict[str, float]:
    out = {}
    for line in Path(path).read_text().splitlines()[1:]:
        if line.strip():
            parts = line.split(",")
            out[parts[0]] = float(parts[2])
    return out


def stage_classify(args: TrainArgs, train: Split, folds, run_dir: Path, device, log) -> dict:
    from spine_ui.train.classifier import fit, load_model, predict

    cfg = args.classifier
    sel = args.selection
    amp = device.type == "cuda" and cfg.amp
    base = _clf_key(args)
    summary: dict[str, dict] = {}
    for arch in cfg.archs:
        fold_results = []
        for k, (tr, va) in enumerate(folds):
            unit = run_dir / "classify" / arch / f"fold{k}"
            fp = fingerprint("fold", arch, base, _ids_key([train.ids[i] for i in tr]),
                             _ids_key([train.ids[i] for i in va]), sel.tta_views)
            done = _done(unit / "done.json", fp) if args.resume else None
            if done is None or not _oof_path(run_dir, arch, k).exists():
                if not args.resume:
                    shutil.rmtree(unit, ignore_errors=True)
                log(f"{arch} fold {k + 1}/{len(folds)}: {len(tr)} train / {len(va)} validation images")
                res = fit(arch, train.paths(tr), train.labels[tr], unit, cfg, device, val_paths=train.paths(va),
                          val_labels=train.labels[va], fingerprint=fp, preprocess=args.preprocess, log=log)
                model = load_model(arch, unit / "best.pt")
                views = predict(model, train.paths(va), cfg.input_size, sel.tta_views, device,
                                preprocess=args.preprocess, batch=cfg.eval_batch, amp=amp)
                _write_predictions(_oof_path(run_dir, arch, k), [train.ids[i] for i in va], train.labels[va], views)
                done = {"fingerprint": fp, **res.to_json()}
            else:
                log(f"{arch} fold {k + 1}/{len(folds)}: done (resumed)")
            fold_results.append(done)
        summary[arch] = _final_model(args, arch, train, fold_results, run_dir, device, log)
    return summary


def _final_model(args: TrainArgs, arch: str, train: Split, fold_results: list[dict], run_dir: Path, device,
                 log) -> dict:
    from spine_ui.train.classifier import fit

    cfg = args.classifier
    unit = run_dir / "classify" / arch / "final"
    best_epochs = [int(r["best_epoch"]) for r in fold_results]
    info = {"fold_best_epochs": best_epochs, "fold_val_auroc": [r["best_score"] for r in fold_results],
            "fold_stopped_early": [r["stopped_early"] for r in fold_results]}
    if fold_results and cfg.final == "best_fold":
        k = int(np.nanargmax([r["best_score"] for r in fold_results]))
        unit.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_dir / "classify" / arch / f"fold{k}" / "best.pt", unit / "best.pt")
        info.update(final=f"best fold ({k + 1})", final_epochs=best_epochs[k],
                    pretrained=fold_results[k]["pretrained"])
        return info
    epochs = max(1, int(round(statistics.median(best_epochs)))) if best_epochs else cfg.epochs
    fp = fingerprint("final", arch, _clf_key(args), _ids_key(train.ids), epochs)
    done = _done(unit / "done.json", fp) if args.resume else None
    if done is None:
        if not args.resume:
            shutil.rmtree(unit, ignore_errors=True)
        log(f"{arch} final model: {len(train.ids)} images, {epochs} epochs")
        done = fit(arch, train.paths(), train.labels, unit, cfg, device, epochs=epochs, fingerprint=fp,
                   preprocess=args.preprocess, log=log).to_json()
    info.update(final="refit on the train split" if fold_results else "trained on the train split (no CV)",
                final_epochs=epochs, pretrained=done["pretrained"], final_seconds=done["seconds"])
    return info


# --------------------------------------------------------------------------- select
def default_selection(args: TrainArgs, reason: str) -> dict:
    return {"source": f"defaults ({reason})", "weights": dict(args.selection.default_weights),
            "gate": args.selection.default_gate}


def stage_select(args: TrainArgs, train: Split, folds, run_dir: Path, log) -> dict:
    from spine_ui.train.metrics import auroc
    from spine_ui.train.selection import select

    sel = args.selection
    if not folds:
        return default_selection(args, "selection skipped: no cross-validation")
    oof = oof_predictions(args, train, folds, run_dir)
    result = select(oof, train.labels, dict(sel.default_weights), sel.weight_step)
    result["source"] = "cross-validation"
    result["folds"] = len(folds)
    result["per_model_oof_auroc"] = {a: auroc(train.labels, p) for a, p in oof.items()}
    log(f"selected weights {result['weights']} (OOF AUROC {result['oof_auroc']:.4f}; defaults "
        f"{result['oof_auroc_default_weights']:.4f}), gate {result['gate']:.4f}")
    return result


def oof_predictions(args: TrainArgs, train: Split, folds, run_dir: Path) -> dict[str, np.ndarray]:
    out = {}
    for arch in args.classifier.archs:
        probs: dict[str, float] = {}
        for k in range(len(folds)):
            path = _oof_path(run_dir, arch, k)
            if not path.exists():
                raise RuntimeError(f"out-of-fold predictions missing ({path.relative_to(run_dir)}); "
                                   "run the classify stage first")
            probs.update(_read_predictions(path))
        missing = [i for i in train.ids if i not in probs]
        if missing:
            raise RuntimeError(f"{len(missing)} training images lack OOF predictions for {arch}; rerun classify")
        out[arch] = np.array([probs[i] for i in train.ids])
    return out


# --------------------------------------------------------------------------- detect
def stage_detect(args: TrainArgs, train: Split, run_dir: Path, device, log) -> dict:
    from spine_ui.train.detector import train_detector
    from spine_ui.train.folds import grouped_folds

    cfg = args.detector
    work = run_dir / "detect"
    holdout: list[int] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            folds = grouped_folds(train.studies, train.labels, n_folds=cfg.holdout_folds, seed=cfg.seed)
        holdout = sorted(int(i) for i in folds[0][1])
    except ValueError as exc:
        log(f"WARNING: no study-grouped holdout for the detector ({exc}); validating on the training images")
    keep = [i for i in range(len(train.ids)) if i not in set(holdout)]
    train_ids = [train.ids[i] for i in keep]
    holdout_ids = [train.ids[i] for i in holdout]
    key = {k: v for k, v in asdict(cfg).items() if k not in ("workers", "plots")}
    fp = fingerprint("detect", key, _ids_key(train_ids), _ids_key(holdout_ids))
    if not args.resume:
        shutil.rmtree(work, ignore_errors=True)
    res = train_detector(run_dir / "cache", train_ids, holdout_ids, work, cfg, device.type, fingerprint=fp, log=log)
    res["holdout_ids"] = holdout_ids
    return {"fingerprint": fp, **res}


def imbalance_measures(args: TrainArgs) -> list[dict]:
    cfg = args.detector
    return [
        {"measure": "class-balanced image sampling (repeat factor ~ 1/sqrt(class frequency))",
         "applied": cfg.balance == "sqrt",
         "note": f"images listed r_i = max_c sqrt(f_max / f_c) times (cap {cfg.max_repeat}) in the ultralytics "
                 "training list file; ultralytics keeps duplicates, so mosaic and batches see them"},
        {"measure": "class-weighted classification loss (ultralytics cls_pw)", "applied": cfg.cls_pw > 0,
         "note": f"cls_pw = {cfg.cls_pw}; off by default because the sampler already rebalances"},
        {"measure": "mosaic / mixup / HSV / flip augmentation", "applied": True,
         "note": f"mosaic {cfg.mosaic}, mixup {cfg.mixup}, fliplr {cfg.fliplr}, multi_scale +/-{cfg.multi_scale}"},
        {"measure": "focal loss", "applied": False,
         "note": "not possible without replacing ultralytics' detection loss (8.4 has no fl_gamma setting)"},
        {"measure": "copy-paste of rare-class objects", "applied": False,
         "note": "ultralytics copy_paste needs segmentation masks; the VinDr labels are boxes only"},
    ]


# --------------------------------------------------------------------------- report
def _final_models(args: TrainArgs, run_dir: Path) -> dict:
    from spine_ui.train.classifier import load_model

    models = {}
    for arch in args.classifier.archs:
        path = run_dir / "classify" / arch / "final" / "best.pt"
        if not path.exists():
            raise RuntimeError(f"final {arch} model missing ({path.relative_to(run_dir)}); run the classify stage")
        models[arch] = load_model(arch, path)
    return models


def stage_report(args: TrainArgs, train: Split, test: Split, folds, selection: dict, detect: dict | None,
                 classify: dict | None, run_dir: Path, device, timings: dict, log) -> dict:
    from spine_ui.core.contract import weighted_vote
    from spine_ui.train.classifier import predict
    from spine_ui.train.metrics import auroc, average_precision, binary_summary, bootstrap_ci, roc_curve
    from spine_ui.train.report import write_report

    cfg, rep, sel = args.classifier, args.report, args.selection
    amp = device.type == "cuda" and cfg.amp
    models = _final_models(args, run_dir)
    (run_dir / "report").mkdir(parents=True, exist_ok=True)
    test_probs = {}
    for arch, model in models.items():
        log(f"scoring the test split with {arch} ({len(sel.tta_views)} TTA views)")
        views = predict(model, test.paths(), cfg.input_size, sel.tta_views, device, preprocess=args.preprocess,
                        batch=cfg.eval_batch, amp=amp)
        _write_predictions(run_dir / "report" / f"test_{arch}.csv", test.ids, test.labels, views)
        test_probs[arch] = views.mean(axis=1)
    weights = selection["weights"]
    gate = float(selection["gate"])
    ens = weighted_vote(test_probs, weights)
    y = test.labels
    summary = binary_summary(y, ens, gate, thresholds=rep.thresholds, n_boot=rep.bootstrap, ci=rep.ci,
                             seed=rep.seed, groups=test.studies)
    per_model = {}
    two_classes = y.min() != y.max()
    if two_classes:
        summary["roc"] = dict(zip(("fpr", "tpr", "thresholds"), (a.tolist() for a in roc_curve(y, ens))))
    for arch, p in test_probs.items():
        per_model[arch] = {"auroc": auroc(y, p) if two_classes else float("nan"),
                           "auroc_ci": bootstrap_ci(y, p, auroc, n_boot=rep.bootstrap, ci=rep.ci, seed=rep.seed,
                                                    groups=test.studies) if two_classes else None,
                           "average_precision": average_precision(y, p) if y.sum() else float("nan")}
    default_auc = auroc(y, weighted_vote(test_probs, dict(sel.default_weights))) if two_classes else float("nan")
    results: dict[str, Any] = {
        "name": args.name or args.out.name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "protocol": protocol_text(args, folds),
        "data": data_summary(args, train, test),
        "selection": selection,
        "test": {"ensemble": summary, "per_model": per_model, "auroc_default_weights": default_auc},
        "training": classify or {},
        "yolo_imbalance": imbalance_measures(args),
        "timings": dict(timings),
    }
    curves = {"test": {"labels": y, "scores": {"ensemble": ens, **test_probs}, "gate": gate}}
    if folds:
        oof = oof_predictions(args, train, folds, run_dir)
        oof_ens = weighted_vote(oof, weights)
        results["oof"] = binary_summary(train.labels, oof_ens, gate, thresholds=rep.thresholds,
                                        n_boot=rep.bootstrap, ci=rep.ci, seed=rep.seed, groups=train.studies)
        curves["oof"] = {"labels": train.labels, "scores": {"ensemble": oof_ens, **oof}, "gate": gate}
    if detect:
        from spine_ui.train.detector import evaluate

        log("evaluating the detector on the test split (ultralytics val)")
        results["detection"] = evaluate(Path(detect["best"]), run_dir / "cache", test.ids, run_dir / "report" / "detect",
                                        args.detector, device.type)
        results["detection"]["training"] = {k: detect.get(k) for k in ("arch", "n_train", "n_holdout", "balance",
                                                                         "holdout_is_train", "seconds")}
    else:
        results["detection"] = {"skipped": "the detect stage has not run"}
    paths = write_report(run_dir / "report", results, curves)
    auc = summary.get("auroc")
    log(f"test AUROC {auc:.4f}" if auc is not None and np.isfinite(auc) else "test AUROC undefined (one class)")
    return {"results": results, "paths": {k: str(v) for k, v in paths.items() if k != "plots"}}


def protocol_text(args: TrainArgs, folds) -> str:  # noqa: N802 (a sentence, not a value)
    if folds:
        sel = (f"Study-grouped stratified {len(folds)}-fold cross-validation on the train split; ensemble weights "
               f"by grid search ({args.selection.weight_step:g} steps) maximising out-of-fold AUROC; gate by "
               "Youden's J on the out-of-fold ensemble.")
    else:
        sel = "No cross-validation: default ensemble weights and gate."
    final = ("final classifiers retrained on the whole train split for the median best fold epoch"
             if args.classifier.final == "refit" or not folds else "final classifiers = best fold models")
    return (f"{sel} {final[0].upper() + final[1:]}. The test split is used only for this report. "
            f"Classifiers at {args.classifier.input_size} px; detector {args.detector.arch} at "
            f"{args.detector.imgsz} px, validated on a study-grouped holdout of the train split.")


def data_summary(args: TrainArgs, train: Split, test: Split) -> dict:
    return {"dataset": args.data.name, "synthetic": bool(args.synthetic), "n_train": len(train.ids),
            "train_abnormal": int(train.labels.sum()), "train_studies": len(set(train.studies)),
            "n_test": len(test.ids), "test_abnormal": int(test.labels.sum()), "test_studies": len(set(test.studies))}


# --------------------------------------------------------------------------- export
def manifest_metrics(report: dict | None, selection: dict, data: dict) -> dict:
    """The compact metrics block stored in the bundle manifest (strict JSON: undefined values are null)."""
    from spine_ui.train.report import clean_json

    out: dict[str, Any] = {"selection": {k: selection.get(k) for k in ("source", "weights", "gate", "oof_auroc",
                                                                         "oof_auroc_default_weights", "folds")
                                         if k in selection},
                           "data": data}
    if report:
        ens = report["test"]["ensemble"]
        ci = ens.get("auroc_ci") or {}
        g = ens["at_gate"]
        out["test"] = {"auroc": ens.get("auroc"), "auroc_ci95": [ci.get("low"), ci.get("high")] if ci else None,
                       "average_precision": ens.get("average_precision"), "gate": ens["gate"],
                       "sensitivity": g["sensitivity"], "specificity": g["specificity"], "f1": g["f1"],
                       "ppv": g["ppv"], "npv": g["npv"], "n": ens["n"], "n_abnormal": ens["n_abnormal"],
                       "per_model_auroc": {a: m["auroc"] for a, m in report["test"]["per_model"].items()}}
        det = report.get("detection") or {}
        if det.get("per_class") is not None:
            out["detection"] = {"map50": det["map50"], "map50_95": det["map50_95"],
                                "per_class_ap50": {k: v["ap50"] for k, v in det["per_class"].items()},
                                "source": det.get("source")}
        out["protocol"] = report.get("protocol")
    return clean_json(out)


def stage_export(args: TrainArgs, train: Split, test: Split, folds, selection: dict, detect: dict | None,
                 report: dict | None, classify: dict | None, run_dir: Path, device, log) -> dict:
    import torch

    from spine_ui import __version__
    from spine_ui.bundle.export import assemble
    from spine_ui.bundle.importer import load_yolo_checkpoint
    from spine_ui.bundle.manifest import Manifest, write_manifest
    from spine_ui.config import DEFAULT_CLASSIFIERS, ClassifierSpec, DetectorConfig, TriageConfig
    from spine_ui.core.ood import FeatureOOD
    from spine_ui.train.classifier import pooled_features
    from spine_ui.train.report import clean_json

    cfg, exp, sel = args.classifier, args.export, args.selection
    out = args.out
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise FileExistsError(f"{out} exists and is not a model bundle; refusing to replace it")
    models = _final_models(args, run_dir)
    cams = {s.arch: s.cam_layer for s in DEFAULT_CLASSIFIERS}
    specs = [ClassifierSpec(a, cfg.input_size, float(selection["weights"][a]), cams.get(a, "")) for a in cfg.archs]
    det = None
    det_cfg = DetectorConfig()
    if detect:
        model, yaml_cfg, names = load_yolo_checkpoint(Path(detect["best"]))
        det_cfg = DetectorConfig(arch=args.detector.arch, imgsz=args.detector.imgsz,
                                 classes=tuple(names) or det_cfg.classes)
        det = (model, yaml_cfg)
    else:
        log("WARNING: no trained detector (detect stage not run); the bundle will have no lesion detector")
    now = _dt.datetime.now(_dt.timezone.utc)
    name = args.name or out.name
    import timm
    import ultralytics

    data = data_summary(args, train, test)
    manifest = Manifest(
        name=name, version=exp.version or f"{__version__}+trained.{now:%Y%m%d%H%M}", trained=True, classifiers=[],
        detector=None, preprocess=args.preprocess, triage=TriageConfig(gate=float(selection["gate"]), tta_views=tuple(sel.tta_views)),
        detector_config=det_cfg, metrics=manifest_metrics(report, selection, data),
        provenance={"kind": "trained", "created": now.isoformat(timespec="seconds"), "spine_ui": __version__,
                    "torch": torch.__version__, "timm": timm.__version__, "ultralytics": ultralytics.__version__,
                    "device": device.type, "dataset": args.data.name, "synthetic": bool(args.synthetic),
                    "protocol": protocol_text(args, folds),
                    "classifiers": classify or {}, "classifier_config": asdict(cfg),
                    "detector_config": asdict(args.detector) if detect else None,
                    "yolo_imbalance": imbalance_measures(args) if detect else None,
                    "selection_source": selection.get("source")})
    manifest.provenance = clean_json(manifest.provenance)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent if out.parent.exists() else None))
    try:
        log(f"exporting {len(specs)} classifiers{' + detector' if det else ''} (ONNX + state dicts)")
        assemble(tmp, manifest, list(zip(specs, (models[s.arch] for s in specs))), det)
        ids = list(range(len(train.ids)))
        if len(ids) > exp.ood_max_images:
            ids = sorted(np.random.default_rng(0).choice(ids, exp.ood_max_images, replace=False).tolist())
        paths = train.paths(ids)
        log(f"feature statistics for the outlier gate on {len(paths)} training images")
        feats = np.concatenate([pooled_features(models[s.arch], paths, s.input_size, device, args.preprocess,
                                                batch=cfg.eval_batch) for s in specs], axis=1)
        ood = FeatureOOD.fit(feats, percentile=exp.ood_percentile)
        ood.save(tmp / "ood.npz")
        manifest.ood = {"file": "ood.npz", "percentile": float(exp.ood_percentile), "threshold": ood.threshold,
                        "n_train": ood.n_train, "features": "identity-view pooled features of every member"}
        write_manifest(tmp, manifest)
        tmp.chmod(0o755)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    check = serving_check(out, models, specs, test if test.ids else train, sel.tta_views, args.preprocess, device,
                          log)
    return {"bundle": str(out), "name": name, "version": manifest.version, "ood_threshold": ood.threshold,
            "serving_check": check}


def serving_check(bundle_dir: Path, models: dict, specs, split: Split, views, preprocess, device, log) -> dict:
    """Score one image as the server does (the exported ONNX models on the contract's input built from the
    bundle manifest's preprocessing and TTA views) and with the torch models as trained; the two must agree."""
    from spine_ui.bundle.runtime import choose_runtime
    from spine_ui.bundle.store import Bundle
    from spine_ui.core.contract import model_input, sigmoid
    from spine_ui.train.classifier import predict, read_enhanced

    path = split.paths([0])[0]
    bundle = Bundle(bundle_dir, choose_runtime("onnx", threads=os.cpu_count() or 1))
    man = bundle.manifest
    enhanced = read_enhanced(path)
    diffs = {}
    entries = {e.arch: e for e in bundle.classifiers}
    for s in specs:
        entry = entries[s.arch]
        batch, _ = model_input(enhanced, entry.input_size, man.triage.tta_views, man.preprocess)
        served = float(sigmoid(bundle.classifier(entry.arch)(batch)[0]).mean())
        p = float(predict(models[s.arch], [path], s.input_size, tuple(views), device, preprocess).mean())
        diffs[s.arch] = abs(p - served)
    worst = max(diffs.values())
    if worst > 1e-3:
        log(f"WARNING: the exported bundle and the trained models disagree by {worst:.2e} on {path.stem}")
    else:
        log(f"serving check: bundle and torch models agree (max |dP| = {worst:.1e})")
    return {"image_id": path.stem, "max_abs_diff": worst, "per_model": diffs}


# --------------------------------------------------------------------------- orchestration
def train(args: TrainArgs) -> TrainResult:
    """Run the requested stages; returns where the bundle and the report are."""
    from spine_ui._env import restore_threads
    from spine_ui.train.classifier import resolve_device

    args = args.resolved()
    run_dir = args.run_dir or default_run_dir(args.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = _Logger(args.verbose)
    device = resolve_device(args.device)
    restore_threads()
    log(f"run folder {run_dir}; device {device.type}; stages {', '.join(args.stages)}"
        f"{' (resuming)' if args.resume else ''}")
    _write_json(run_dir / "args.json", {k: v for k, v in asdict(args).items()})
    timings: dict[str, float] = dict((_read_json(run_dir / "timings.json") or {}).get("seconds", {}))

    t = time.perf_counter()
    train_split, test_split, _cache = prepare_data(args, run_dir, log)
    timings["data"] = time.perf_counter() - t
    folds = make_folds(train_split, args, run_dir, log)

    def run_stage(name: str, fp: str, fn: Callable[[], dict],
                  valid: Callable[[dict], bool] = lambda _r: True) -> dict | None:
        marker = run_dir / name / "done.json"
        if name not in args.stages:
            d = _read_json(marker)
            if d is not None and d.get("fingerprint") != fp:
                log(f"WARNING: the {name} stage in the run folder was made with other settings; using it anyway")
            return d.get("result") if d and valid(d.get("result") or {}) else None
        if args.resume:
            d = _done(marker, fp)
            if d is not None and valid(d.get("result") or {}):
                log(f"stage {name}: done (skipped)")
                return d["result"]
        log(f"stage {name}")
        t0 = time.perf_counter()
        result = fn()
        timings[name] = time.perf_counter() - t0
        _write_json(marker, {"fingerprint": fp, "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(
            timespec="seconds"), "seconds": timings[name], "result": result})
        _write_json(run_dir / "timings.json", {"seconds": timings})
        return result

    fold_key = [[_ids_key([train_split.ids[i] for i in va])] for _, va in folds]
    clf_fp = fingerprint("classify", _clf_key(args), fold_key, _ids_key(train_split.ids), args.selection.tta_views)
    classify = run_stage("classify", clf_fp,
                         lambda: stage_classify(args, train_split, folds, run_dir, device, log))
    det_fp = fingerprint("detect", asdict(args.detector), asdict(args.preprocess), _ids_key(train_split.ids))
    detect = run_stage("detect", det_fp, lambda: stage_detect(args, train_split, run_dir, device, log),
                       valid=lambda r: Path(r.get("best", "")).is_file())
    restore_threads()
    sel_fp = fingerprint("select", clf_fp, asdict(args.selection))
    selection = run_stage("select", sel_fp, lambda: stage_select(args, train_split, folds, run_dir, log))
    if selection is None:
        selection = default_selection(args, "the select stage has not run")
    rep_fp = fingerprint("report", clf_fp, det_fp if detect else None, selection, asdict(args.report),
                         _ids_key(test_split.ids))
    report = run_stage("report", rep_fp, lambda: stage_report(args, train_split, test_split, folds, selection,
                                                              detect, classify, run_dir, device, timings, log))
    exp_fp = fingerprint("export", rep_fp, str(args.out), asdict(args.export), args.name)
    exported = run_stage("export", exp_fp, lambda: stage_export(
        args, train_split, test_split, folds, selection, detect, report["results"] if report else None, classify,
        run_dir, device, log), valid=lambda r: (Path(r.get("bundle", "")) / "manifest.json").is_file())
    restore_threads()
    _write_json(run_dir / "timings.json", {"seconds": timings})
    bundle = Path(exported["bundle"]) if exported and "export" in args.stages else (
        args.out if (args.out / "manifest.json").is_file() else None)
    report_path = run_dir / "report" / "report.md" if report else None
    metrics = report["results"] if report else {"selection": selection}
    log(f"done: bundle {bundle}, report {report_path}")
    return TrainResult(run_dir, bundle, report_path, metrics, timings)


# --------------------------------------------------------------------------- CLI
def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``train`` to the ``python -m spine_ui`` sub-commands (sets ``func=cmd_train``)."""
    p = subparsers.add_parser(
        "train", help="train the DERNet classifiers and the YOLO11 detector into a bundle",
        description="Study-grouped cross-validation on the train split, weight/gate selection on out-of-fold "
                    "predictions, final report on the test split, export to a bundle. Research use only.")
    p.add_argument("--data", required=True, type=Path, help="VinDr-SpineXR-layout folder (annotations/, *_images/)")
    p.add_argument("--out", required=True, type=Path, help="bundle folder to write, e.g. models/NAME")
    p.add_argument("--synthetic", type=int, default=0, metavar="N",
                   help="first write N synthetic images into --data (an empty folder)")
    p.add_argument("--synthetic-height", type=int, default=512, help="height of the synthetic images")
    p.add_argument("--epochs", type=int, help="classifier epochs (upper bound with early stopping; default 50)")
    p.add_argument("--det-epochs", type=int, help="detector epochs (default 35)")
    p.add_argument("--imgsz", type=int, help="classifier input size (default 384)")
    p.add_argument("--det-imgsz", type=int, help="detector image size (default 640)")
    p.add_argument("--folds", type=int, help="cross-validation folds (default 5; 0 or 1 skips selection)")
    p.add_argument("--batch", type=int, help="classifier batch size for every member (default 32/24/32)")
    p.add_argument("--det-batch", type=int, help="detector batch size (default 12)")
    p.add_argument("--det-arch", help="detector definition (default yolo11l)")
    p.add_argument("--workers", type=int, help="data-loader workers (default 2)")
    p.add_argument("--stages", default=",".join(STAGES),
                   help=f"comma-separated subset of {','.join(STAGES)} (default: all)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--pretrained", action="store_true",
                   help="start classifiers from ImageNet weights when they can be loaded (else from scratch)")
    p.add_argument("--resume", action="store_true", help="skip finished stages, continue unfinished ones")
    p.add_argument("--run-dir", type=Path, help="run folder (default runs/NAME for models/NAME, else OUT_run)")
    p.add_argument("--name", help="bundle name in the manifest (default: the --out folder name)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_train)
    return p


def args_from_namespace(ns: argparse.Namespace) -> TrainArgs:
    stages = tuple(s.strip() for s in ns.stages.split(",") if s.strip())
    return TrainArgs(data=ns.data, out=ns.out, synthetic=ns.synthetic, synthetic_height=ns.synthetic_height,
                     epochs=ns.epochs, det_epochs=ns.det_epochs, imgsz=ns.imgsz, det_imgsz=ns.det_imgsz,
                     folds=ns.folds, batch=ns.batch, det_batch=ns.det_batch, det_arch=ns.det_arch,
                     workers=ns.workers, stages=stages, device=ns.device, pretrained=ns.pretrained,
                     resume=ns.resume, run_dir=ns.run_dir, name=ns.name, verbose=not ns.quiet)


def cmd_train(ns: argparse.Namespace) -> int:
    try:
        args = args_from_namespace(ns)
        args.resolved()  # validate before any work
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = train(args)
    except (FileNotFoundError, FileExistsError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    test = (result.metrics.get("test") or {}).get("ensemble") or {}
    print(json.dumps({"bundle": str(result.bundle) if result.bundle else None, "run_dir": str(result.run_dir),
                      "report": str(result.report) if result.report else None,
                      "test_auroc": test.get("auroc"), "gate": (result.metrics.get("selection") or {}).get("gate"),
                      "weights": (result.metrics.get("selection") or {}).get("weights")}, default=str))
    return 0


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="python -m spine_ui.train.runner")
    add_train_parser(parser.add_subparsers(dest="cmd", required=True))
    ns = parser.parse_args()
    raise SystemExit(ns.func(ns))
