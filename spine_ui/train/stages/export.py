"""Stage ``export``: the final classifiers (and the detector, when trained) into a versioned bundle whose
manifest records the preprocessing, weights, gate and TTA views used in training, plus the feature-space
outlier statistics of the training images; then a serving check on the written bundle."""
from __future__ import annotations

import datetime as _dt
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from spine_ui._io import atomic_dir
from spine_ui.config import PreprocessConfig
from spine_ui.train.config import TrainArgs
from spine_ui.train.stages.classify import final_models
from spine_ui.train.stages.common import Fold, Split
from spine_ui.train.stages.detect import imbalance_measures
from spine_ui.train.stages.report import data_summary, protocol_text

if TYPE_CHECKING:
    import torch
    from torch import nn

    from spine_ui.bundle.manifest import Manifest
    from spine_ui.config import ClassifierSpec

log = logging.getLogger(__name__)


def manifest_metrics(report: dict | None, selection: dict, data: dict) -> dict:
    """The compact metrics block stored in the bundle manifest (strict JSON: undefined values are null)."""
    from spine_ui.train.report import clean_json

    out: dict[str, Any] = {"selection": {k: selection.get(k) for k in ("source", "weights", "gate", "oof_auroc",
                                                                         "oof_auroc_default_weights", "folds",
                                                                         "gate_uncalibrated")
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
        if report.get("calibration"):
            out["calibration"] = {split: {"ece_before": c["ece_before"], "ece_after": c["ece_after"], "n": c["n"]}
                                  for split, c in report["calibration"].items()}
    return clean_json(out)


def build_manifest(args: TrainArgs, train: Split, test: Split, folds: list[Fold], selection: dict,
                   detect: dict | None, report: dict | None, classify: dict | None, device: "torch.device",
                   detector_classes: Sequence[str] = ()) -> "Manifest":
    """The bundle manifest before the models are exported into it (``args.preprocess`` is recorded)."""
    import timm
    import torch
    import ultralytics

    from spine_ui import __version__
    from spine_ui.bundle.manifest import Manifest
    from spine_ui.config import DetectorConfig, TriageConfig
    from spine_ui.train.report import clean_json

    now = _dt.datetime.now(_dt.timezone.utc)
    det_cfg = DetectorConfig()
    if detect:
        det_cfg = DetectorConfig(arch=args.detector.arch, imgsz=args.detector.imgsz,
                                 classes=tuple(detector_classes) or det_cfg.classes)
    provenance = {"kind": "trained", "created": now.isoformat(timespec="seconds"), "spine_ui": __version__,
                  "torch": torch.__version__, "timm": timm.__version__, "ultralytics": ultralytics.__version__,
                  "device": device.type, "dataset": args.data.name, "synthetic": bool(args.synthetic),
                  "protocol": protocol_text(args, folds), "classifiers": classify or {},
                  "classifier_config": asdict(args.classifier),
                  "detector_config": asdict(args.detector) if detect else None,
                  "yolo_imbalance": imbalance_measures(args) if detect else None,
                  "selection_source": selection.get("source")}
    from spine_ui.core.calibration import BundleCalibration

    cal = selection.get("calibration")
    return Manifest(
        calibration=BundleCalibration.from_json(cal) if cal else None,
        name=args.name or args.out.name, version=args.export.version or f"{__version__}+trained.{now:%Y%m%d%H%M}",
        trained=True, classifiers=[], detector=None, preprocess=args.preprocess,
        triage=TriageConfig(gate=float(selection["gate"]), tta_views=tuple(args.selection.tta_views)),
        detector_config=det_cfg, metrics=manifest_metrics(report, selection, data_summary(args, train, test)),
        provenance=clean_json(provenance))


def stage_export(args: TrainArgs, train: Split, test: Split, folds: list[Fold], selection: dict,
                 detect: dict | None, report: dict | None, classify: dict | None, run_dir: Path,
                 device: "torch.device") -> dict:
    """Write the bundle to ``args.out`` atomically (built in a sibling temp folder, then renamed)."""
    from spine_ui.bundle.export import assemble
    from spine_ui.bundle.importer import load_yolo_checkpoint
    from spine_ui.bundle.manifest import write_manifest
    from spine_ui.config import DEFAULT_CLASSIFIERS, ClassifierSpec
    from spine_ui.core.ood import FeatureOOD
    from spine_ui.train.classifier import pooled_features

    cfg, exp = args.classifier, args.export
    out = args.out
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise FileExistsError(f"{out} exists and is not a model bundle; refusing to replace it")
    models = final_models(args, run_dir)
    cams = {s.arch: s.cam_layer for s in DEFAULT_CLASSIFIERS}
    specs = [ClassifierSpec(a, cfg.input_size, float(selection["weights"][a]), cams.get(a, "")) for a in cfg.archs]
    det, names = None, ()
    if detect:
        model, yaml_cfg, names = load_yolo_checkpoint(Path(detect["best"]))
        det = (model, yaml_cfg)
    else:
        log.warning("no trained detector (detect stage not run); the bundle will have no lesion detector")
    manifest = build_manifest(args, train, test, folds, selection, detect, report, classify, device, names)
    with atomic_dir(out) as tmp:
        log.info("exporting %d classifiers%s (ONNX + state dicts)", len(specs), " + detector" if det else "")
        assemble(tmp, manifest, list(zip(specs, (models[s.arch] for s in specs))), det)
        ids = list(range(len(train.ids)))
        if len(ids) > exp.ood_max_images:
            ids = sorted(np.random.default_rng(0).choice(ids, exp.ood_max_images, replace=False).tolist())
        paths = train.paths(ids)
        log.info("feature statistics for the outlier gate on %d training images", len(paths))
        feats = np.concatenate([pooled_features(models[s.arch], paths, s.input_size, device, args.preprocess,
                                                batch=cfg.eval_batch) for s in specs], axis=1)
        ood = FeatureOOD.fit(feats, percentile=exp.ood_percentile)
        ood.save(tmp / "ood.npz")
        manifest.ood = {"file": "ood.npz", "percentile": float(exp.ood_percentile), "threshold": ood.threshold,
                        "n_train": ood.n_train, "features": "identity-view pooled features of every member"}
        write_manifest(tmp, manifest)
    check = serving_check(out, models, specs, test if test.ids else train, args.selection.tta_views,
                          args.preprocess, device)
    precision = precision_check(out, test if test.ids else train, exp.precision_check_images)
    return {"bundle": str(out), "name": manifest.name, "version": manifest.version, "ood_threshold": ood.threshold,
            "serving_check": check, "precision_check": precision}


def precision_check(bundle_dir: Path, split: Split, images: int) -> dict | None:
    """The bf16 decision-path check on up to ``images`` held-out images, recorded in the bundle (only on a CPU
    with BF16: elsewhere the bundle serves fp32 until ``bundle check-precision`` runs on one)."""
    from spine_ui.bundle.precision import record_check, run_check
    from spine_ui.bundle.runtime import cpu_has_bf16
    from spine_ui.train.classifier import read_enhanced

    if images <= 0 or not split.ids:
        return None
    if not cpu_has_bf16():
        log.info("precision check skipped: this CPU has no BF16 (the bundle serves fp32 decisions)")
        return None
    paths = split.paths(list(range(min(images, len(split.ids)))))
    check = run_check(bundle_dir, [read_enhanced(p) for p in paths], f"{len(paths)} held-out training-cache images",
                      enhanced=True)
    record_check(bundle_dir, check)
    log.info("precision check: %s", check.line())
    return check.to_json()


def serving_check(bundle_dir: Path, models: dict[str, "nn.Module"], specs: Sequence["ClassifierSpec"],
                  split: Split, views: Sequence[str], preprocess: PreprocessConfig, device: "torch.device") -> dict:
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
    entries = {e.arch: e for e in bundle.classifiers}
    diffs = {}
    for s in specs:
        entry = entries[s.arch]
        batch, _ = model_input(enhanced, entry.input_size, man.triage.tta_views, man.preprocess)
        served = float(sigmoid(bundle.classifier(entry.arch)(batch)[0]).mean())
        p = float(predict(models[s.arch], [path], s.input_size, tuple(views), device, preprocess).mean())
        diffs[s.arch] = abs(p - served)
    worst = max(diffs.values())
    if worst > 1e-3:
        log.warning("the exported bundle and the trained models disagree by %.2e on %s", worst, path.stem)
    else:
        log.info("serving check: bundle and torch models agree (max |dP| = %.1e)", worst)
    return {"image_id": path.stem, "max_abs_diff": worst, "per_model": diffs}
