"""Stage ``classify``: each DERNet member on every CV fold (early stopping on the held-out fold, which is
then scored with the serving TTA views: out-of-fold predictions), then the final model for export."""
from __future__ import annotations

import logging
import shutil
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from spine_ui.train.config import TrainArgs
from spine_ui.train.stages.common import Fold, Split, done, fingerprint, ids_key

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)


def clf_key(args: TrainArgs) -> dict:
    """The classifier settings a trained model depends on (loader-only knobs left out, preprocessing in)."""
    cfg = asdict(args.classifier)
    for k in ("workers", "eval_batch"):
        cfg.pop(k, None)
    cfg["preprocess"] = asdict(args.preprocess)
    return cfg


def oof_path(run_dir: Path, arch: str, k: int) -> Path:
    """Where fold ``k``'s out-of-fold predictions of ``arch`` live."""
    return run_dir / "classify" / arch / f"fold{k}" / "oof.csv"


def write_predictions(path: Path, ids: Sequence[str], labels: Sequence[int], views: np.ndarray) -> None:
    """CSV ``image_id,label,probability,views`` (probability = mean over the TTA views)."""
    lines = ["image_id,label,probability,views"]
    for i, y, v in zip(ids, labels, views):
        lines.append(f"{i},{int(y)},{float(v.mean()):.8f},{';'.join(f'{x:.8f}' for x in v)}")
    path.write_text("\n".join(lines) + "\n")


def read_predictions(path: Path) -> dict[str, float]:
    """image_id -> probability from a :func:`write_predictions` file."""
    out = {}
    for line in Path(path).read_text().splitlines()[1:]:
        if line.strip():
            parts = line.split(",")
            out[parts[0]] = float(parts[2])
    return out


def stage_classify(args: TrainArgs, train: Split, folds: list[Fold], run_dir: Path,
                   device: "torch.device") -> dict:
    """Train every member on every fold (resumable per unit), write OOF predictions, fit the final models."""
    from spine_ui.train import distributed
    from spine_ui.train.classifier import fit, load_model, predict_all

    dist = distributed.current()  # under torchrun every rank trains; rank 0 writes
    cfg, sel = args.classifier, args.selection
    amp = device.type == "cuda" and cfg.amp
    base = clf_key(args)
    summary: dict[str, dict] = {}
    for arch in cfg.archs:
        fold_results = []
        for k, (tr, va) in enumerate(folds):
            unit = run_dir / "classify" / arch / f"fold{k}"
            fp = fingerprint("fold", arch, base, ids_key([train.ids[i] for i in tr]),
                             ids_key([train.ids[i] for i in va]), sel.tta_views)
            result = done(unit / "done.json", fp) if args.resume else None
            if result is None or not oof_path(run_dir, arch, k).exists():
                if not args.resume and dist.is_main:
                    shutil.rmtree(unit, ignore_errors=True)
                distributed.barrier(dist)
                log.info("%s fold %d/%d: %d train / %d validation images", arch, k + 1, len(folds), len(tr), len(va))
                res = fit(arch, train.paths(tr), train.labels[tr], unit, cfg, device, val_paths=train.paths(va),
                          val_labels=train.labels[va], fingerprint=fp, preprocess=args.preprocess, log=log.info)
                model = load_model(arch, unit / "best.pt")
                views = predict_all(model, train.paths(va), cfg.input_size, sel.tta_views, device, dist,
                                    preprocess=args.preprocess, batch=cfg.eval_batch, amp=amp)
                if dist.is_main:
                    write_predictions(oof_path(run_dir, arch, k), [train.ids[i] for i in va], train.labels[va],
                                      views)
                result = {"fingerprint": fp, **res.to_json()}
            else:
                log.info("%s fold %d/%d: done (resumed)", arch, k + 1, len(folds))
            fold_results.append(result)
        summary[arch] = _final_model(args, arch, train, fold_results, run_dir, device)
    return summary


def _final_model(args: TrainArgs, arch: str, train: Split, fold_results: list[dict], run_dir: Path,
                 device: "torch.device") -> dict:
    """Refit on the whole train split for the median best fold epoch, or keep the best fold model."""
    from spine_ui.train import distributed
    from spine_ui.train.classifier import fit

    dist = distributed.current()
    cfg = args.classifier
    unit = run_dir / "classify" / arch / "final"
    best_epochs = [int(r["best_epoch"]) for r in fold_results]
    info = {"fold_best_epochs": best_epochs, "fold_val_auroc": [r["best_score"] for r in fold_results],
            "fold_stopped_early": [r["stopped_early"] for r in fold_results]}
    if fold_results and cfg.final == "best_fold":
        k = int(np.nanargmax([r["best_score"] for r in fold_results]))
        if dist.is_main:
            unit.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run_dir / "classify" / arch / f"fold{k}" / "best.pt", unit / "best.pt")
        info.update(final=f"best fold ({k + 1})", final_epochs=best_epochs[k],
                    pretrained=fold_results[k]["pretrained"])
        return info
    epochs = max(1, int(round(statistics.median(best_epochs)))) if best_epochs else cfg.epochs
    fp = fingerprint("final", arch, clf_key(args), ids_key(train.ids), epochs)
    result = done(unit / "done.json", fp) if args.resume else None
    if result is None:
        if not args.resume and dist.is_main:
            shutil.rmtree(unit, ignore_errors=True)
        distributed.barrier(dist)
        log.info("%s final model: %d images, %d epochs", arch, len(train.ids), epochs)
        result = fit(arch, train.paths(), train.labels, unit, cfg, device, epochs=epochs, fingerprint=fp,
                     preprocess=args.preprocess, log=log.info).to_json()
    info.update(final="refit on the train split" if fold_results else "trained on the train split (no CV)",
                final_epochs=epochs, pretrained=result["pretrained"], final_seconds=result["seconds"])
    return info


def final_models(args: TrainArgs, run_dir: Path) -> dict[str, "nn.Module"]:
    """The exported classifiers (``classify/<arch>/final/best.pt``), loaded on the CPU."""
    from spine_ui.train.classifier import load_model

    models = {}
    for arch in args.classifier.archs:
        path = run_dir / "classify" / arch / "final" / "best.pt"
        if not path.exists():
            raise RuntimeError(f"final {arch} model missing ({path.relative_to(run_dir)}); run the classify stage")
        models[arch] = load_model(arch, path)
    return models
