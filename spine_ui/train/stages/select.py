"""Stage ``select``: ensemble weights (grid search on out-of-fold AUROC) and the gate (Youden's J on the
OOF ensemble); without cross-validation the defaults (0.42 / 0.32 / 0.26, gate 0.478) are kept.

With ``SelectionConfig.calibrate`` (default) the calibration (``spine_ui.train.calibration``) is fitted on the
same OOF predictions after the weights, and the gate is Youden's J on the calibrated OOF ensemble
(``gate_uncalibrated`` keeps the one on the plain vote)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from spine_ui.train.config import TrainArgs
from spine_ui.train.stages.classify import oof_path, read_predictions, read_view_predictions
from spine_ui.train.stages.common import Fold, Split

log = logging.getLogger(__name__)


def default_selection(args: TrainArgs, reason: str) -> dict:
    """The default weights and gate, labelled with why they are used."""
    return {"source": f"defaults ({reason})", "weights": dict(args.selection.default_weights),
            "gate": args.selection.default_gate}


def stage_select(args: TrainArgs, train: Split, folds: list[Fold], run_dir: Path) -> dict:
    """Weights and gate from the OOF predictions of the classify stage."""
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
    if sel.calibrate:
        gate_plain = result["gate"]
        result.update(calibrate_selection(args, train, folds, run_dir, result["weights"]))
        result["gate_uncalibrated"] = gate_plain
    log.info("selected weights %s (OOF AUROC %.4f; defaults %.4f), gate %.4f", result["weights"],
             result["oof_auroc"], result["oof_auroc_default_weights"], result["gate"])
    return result


def calibrate_selection(args: TrainArgs, train: Split, folds: list[Fold], run_dir: Path,
                        weights: dict[str, float]) -> dict:
    """Calibration fitted on the OOF predictions, and the gate on the calibrated OOF ensemble."""
    from spine_ui.core.contract import weighted_vote
    from spine_ui.train.calibration import calibrated_scores, ece_summary, fit_bundle_calibration
    from spine_ui.train.metrics import youden_threshold

    views = oof_predictions(args, train, folds, run_dir, per_view=True)
    cal = fit_bundle_calibration(views, train.labels, weights)
    after = calibrated_scores(cal, views, weights)
    before = weighted_vote({a: v.mean(axis=1) for a, v in views.items()}, weights)
    yj = youden_threshold(train.labels, after)
    ece = ece_summary(train.labels, before, after)
    info = {"fitted_on": f"out-of-fold predictions of {len(train.ids)} training images ({len(folds)} folds)",
            "method": "member temperature scaling, then Platt scaling of the weighted vote",
            "ece_oof_before": ece["ece_before"], "ece_oof_after": ece["ece_after"], "bins": ece["bins"]}
    cal = type(cal)(cal.members, cal.ensemble, None, info)
    log.info("calibration: OOF ECE %.4f -> %.4f; gate on the calibrated ensemble %.4f", ece["ece_before"],
             ece["ece_after"], yj["threshold"])
    return {"calibration": cal.to_json(), "gate": round(yj["threshold"], 6),
            "youden_calibrated": yj}


def oof_predictions(args: TrainArgs, train: Split, folds: list[Fold], run_dir: Path,
                    per_view: bool = False) -> dict[str, np.ndarray]:
    """arch -> OOF probability of every training image (in ``train.ids`` order); with ``per_view`` the
    N x V per-view probabilities instead."""
    out = {}
    for arch in args.classifier.archs:
        probs: dict = {}
        for k in range(len(folds)):
            path = oof_path(run_dir, arch, k)
            if not path.exists():
                raise RuntimeError(f"out-of-fold predictions missing ({path.relative_to(run_dir)}); "
                                   "run the classify stage first")
            probs.update(read_view_predictions(path) if per_view else read_predictions(path))
        missing = [i for i in train.ids if i not in probs]
        if missing:
            raise RuntimeError(f"{len(missing)} training images lack OOF predictions for {arch}; rerun classify")
        out[arch] = np.array([probs[i] for i in train.ids])
    return out
