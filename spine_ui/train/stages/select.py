"""Stage ``select``: ensemble weights (grid search on out-of-fold AUROC) and the gate (Youden's J on the
OOF ensemble); without cross-validation the defaults (0.42 / 0.32 / 0.26, gate 0.478) are kept."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from spine_ui.train.config import TrainArgs
from spine_ui.train.stages.classify import oof_path, read_predictions
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
    log.info("selected weights %s (OOF AUROC %.4f; defaults %.4f), gate %.4f", result["weights"],
             result["oof_auroc"], result["oof_auroc_default_weights"], result["gate"])
    return result


def oof_predictions(args: TrainArgs, train: Split, folds: list[Fold], run_dir: Path) -> dict[str, np.ndarray]:
    """arch -> OOF probability of every training image (in ``train.ids`` order)."""
    out = {}
    for arch in args.classifier.archs:
        probs: dict[str, float] = {}
        for k in range(len(folds)):
            path = oof_path(run_dir, arch, k)
            if not path.exists():
                raise RuntimeError(f"out-of-fold predictions missing ({path.relative_to(run_dir)}); "
                                   "run the classify stage first")
            probs.update(read_predictions(path))
        missing = [i for i in train.ids if i not in probs]
        if missing:
            raise RuntimeError(f"{len(missing)} training images lack OOF predictions for {arch}; rerun classify")
        out[arch] = np.array([probs[i] for i in train.ids])
    return out
