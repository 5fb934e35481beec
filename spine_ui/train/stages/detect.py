"""Stage ``detect``: YOLO11 through ultralytics on the train split minus a study-grouped holdout (1/k of the
studies) that ultralytics validates on to keep ``best.pt``."""
from __future__ import annotations

import logging
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from spine_ui.train.config import TrainArgs
from spine_ui.train.stages.common import Split, fingerprint, ids_key

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def stage_detect(args: TrainArgs, train: Split, run_dir: Path, device: "torch.device") -> dict:
    """Train the detector; returns ultralytics' summary with the ``best`` checkpoint path and the holdout."""
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
        log.warning("no study-grouped holdout for the detector (%s); validating on the training images", exc)
    held = set(holdout)
    train_ids = [train.ids[i] for i in range(len(train.ids)) if i not in held]
    holdout_ids = [train.ids[i] for i in holdout]
    key = {k: v for k, v in asdict(cfg).items() if k not in ("workers", "plots")}
    fp = fingerprint("detect", key, ids_key(train_ids), ids_key(holdout_ids))
    if not args.resume:
        shutil.rmtree(work, ignore_errors=True)
    res = train_detector(run_dir / "cache", train_ids, holdout_ids, work, cfg, device.type, fingerprint=fp,
                         log=log.info)
    res["holdout_ids"] = holdout_ids
    return {"fingerprint": fp, **res}


def imbalance_measures(args: TrainArgs) -> list[dict]:
    """The class-imbalance measures considered for the detector, applied or not, and why (for the report)."""
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
