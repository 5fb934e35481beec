"""Stage ``report``: the final classifiers score the test split (the only place it is read), with bootstrap
CIs, threshold tables and curves; the detector is evaluated with ultralytics val; report.md/.html written."""
from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spine_ui.train.config import TrainArgs
from spine_ui.train.stages.classify import final_models, write_predictions
from spine_ui.train.stages.common import Fold, Split
from spine_ui.train.stages.detect import imbalance_measures
from spine_ui.train.stages.select import oof_predictions

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def _ensemble_metrics(args: TrainArgs, test: Split, test_probs: dict[str, np.ndarray], weights: dict,
                      gate: float) -> tuple[dict, dict, float, np.ndarray]:
    """(ensemble summary, per-model metrics, AUROC with the default weights, ensemble scores) on the test split."""
    from spine_ui.core.contract import weighted_vote
    from spine_ui.train.metrics import auroc, average_precision, binary_summary, bootstrap_ci, roc_curve

    rep, y = args.report, test.labels
    ens = weighted_vote(test_probs, weights)
    summary = binary_summary(y, ens, gate, thresholds=rep.thresholds, n_boot=rep.bootstrap, ci=rep.ci,
                             seed=rep.seed, groups=test.studies)
    two_classes = y.min() != y.max()
    if two_classes:
        summary["roc"] = dict(zip(("fpr", "tpr", "thresholds"), (a.tolist() for a in roc_curve(y, ens))))
    per_model = {}
    for arch, p in test_probs.items():
        per_model[arch] = {"auroc": auroc(y, p) if two_classes else float("nan"),
                           "auroc_ci": bootstrap_ci(y, p, auroc, n_boot=rep.bootstrap, ci=rep.ci, seed=rep.seed,
                                                    groups=test.studies) if two_classes else None,
                           "average_precision": average_precision(y, p) if y.sum() else float("nan")}
    default_auc = (auroc(y, weighted_vote(test_probs, dict(args.selection.default_weights))) if two_classes
                   else float("nan"))
    return summary, per_model, default_auc, ens


def stage_report(args: TrainArgs, train: Split, test: Split, folds: list[Fold], selection: dict,
                 detect: dict | None, classify: dict | None, run_dir: Path, device: "torch.device",
                 timings: dict) -> dict:
    """Score the test split, evaluate the detector and write the report; returns the results and file paths."""
    from spine_ui.core.contract import weighted_vote
    from spine_ui.train.classifier import predict
    from spine_ui.train.metrics import binary_summary
    from spine_ui.train.report import write_report

    cfg, rep, sel = args.classifier, args.report, args.selection
    amp = device.type == "cuda" and cfg.amp
    (run_dir / "report").mkdir(parents=True, exist_ok=True)
    test_probs = {}
    for arch, model in final_models(args, run_dir).items():
        log.info("scoring the test split with %s (%d TTA views)", arch, len(sel.tta_views))
        views = predict(model, test.paths(), cfg.input_size, sel.tta_views, device, preprocess=args.preprocess,
                        batch=cfg.eval_batch, amp=amp)
        write_predictions(run_dir / "report" / f"test_{arch}.csv", test.ids, test.labels, views)
        test_probs[arch] = views.mean(axis=1)
    weights, gate = selection["weights"], float(selection["gate"])
    summary, per_model, default_auc, ens = _ensemble_metrics(args, test, test_probs, weights, gate)
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
    curves = {"test": {"labels": test.labels, "scores": {"ensemble": ens, **test_probs}, "gate": gate}}
    if folds:
        oof = oof_predictions(args, train, folds, run_dir)
        oof_ens = weighted_vote(oof, weights)
        results["oof"] = binary_summary(train.labels, oof_ens, gate, thresholds=rep.thresholds,
                                        n_boot=rep.bootstrap, ci=rep.ci, seed=rep.seed, groups=train.studies)
        curves["oof"] = {"labels": train.labels, "scores": {"ensemble": oof_ens, **oof}, "gate": gate}
    if detect:
        from spine_ui.train.detector import evaluate

        log.info("evaluating the detector on the test split (ultralytics val)")
        results["detection"] = evaluate(Path(detect["best"]), run_dir / "cache", test.ids,
                                        run_dir / "report" / "detect", args.detector, device.type)
        results["detection"]["training"] = {k: detect.get(k) for k in ("arch", "n_train", "n_holdout", "balance",
                                                                         "holdout_is_train", "seconds")}
    else:
        results["detection"] = {"skipped": "the detect stage has not run"}
    paths = write_report(run_dir / "report", results, curves)
    auc = summary.get("auroc")
    if auc is not None and np.isfinite(auc):
        log.info("test AUROC %.4f", auc)
    else:
        log.info("test AUROC undefined (one class)")
    return {"results": results, "paths": {k: str(v) for k, v in paths.items() if k != "plots"}}


def protocol_text(args: TrainArgs, folds: list[Fold]) -> str:
    """One paragraph describing the evaluation protocol actually run."""
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
    """Sizes and class counts of both splits."""
    return {"dataset": args.data.name, "synthetic": bool(args.synthetic), "n_train": len(train.ids),
            "train_abnormal": int(train.labels.sum()), "train_studies": len(set(train.studies)),
            "n_test": len(test.ids), "test_abnormal": int(test.labels.sum()), "test_studies": len(set(test.studies))}
