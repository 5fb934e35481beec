"""Learning check: a reduced, CPU-sized training run on synthetic radiographs must beat chance on the held-out
test split by a clear margin. Prints a JSON summary (held-out AUROC with bootstrap CI, per-model AUROC, OOF
AUROC, selected weights and gate, timings) and exits 1 when the test AUROC is below ``--min-auroc``.

    python benchmarks/learning_check.py                 # ~10-15 min on 2 CPU cores
    python benchmarks/learning_check.py --full          # + YOLO11n, 30 epochs at 256 px (~4 min), and the export
    python benchmarks/learning_check.py --dataset vindr-synth --lesions 0   # make_dataset's distribution

Data. ``--dataset dense`` (default) writes phantoms in the VinDr-SpineXR layout where every abnormal image
carries ``--lesions`` (4) different lesion types; ``vindr-synth`` uses ``spine_ui.synth.dataset.make_dataset``
(1-3 lesions per abnormal image, half of them a single small one). From-scratch CNNs need far more images
or epochs than a CPU allows to pick up single small lesions at 128 px (about chance after 10 epochs on
150-450 images in our trials), so the default makes the signal dense enough to show learning in minutes.

Protocol deviations (CPU budget): classifiers at 128 px, 10 epochs, AdamW lr 1e-3 (protocol: 1e-4, tuned for
ImageNet-initialised models over 50 epochs), batch 16, 2 folds. Everything else is the training pipeline
unchanged (``spine_ui.train.runner.train``). Files go under ``--work`` (default ``.cache/learning_check``).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import spine_ui  # noqa: E402,F401  (offline environment first)
from spine_ui.train.config import (ClassifierTrainConfig, DetectorTrainConfig, ReportConfig,  # noqa: E402
                                   TrainArgs)
from spine_ui.train.runner import train  # noqa: E402

COLUMNS = ("study_id", "series_id", "image_id", "rad_id", "lesion_type", "xmin", "ymin", "xmax", "ymax")


def write_dense_dataset(root: Path, n: int, lesions: int, height: int, seed: int = 0,
                        test_fraction: float = 0.25) -> Path:
    """VinDr-SpineXR layout, one image per study, half abnormal with ``lesions`` distinct lesion types each."""
    from spine_ui.config import LESION_CLASSES
    from spine_ui.synth.dicom_writer import write_dicom
    from spine_ui.synth.phantom import render_spine, to_stored

    marker = root / ".dense.json"
    want = {"n": n, "lesions": lesions, "height": height, "seed": seed, "test_fraction": test_fraction}
    if marker.exists() and json.loads(marker.read_text()) == want:
        return root
    rng = np.random.default_rng(seed)
    n_test = int(round(n * test_fraction))
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n - n_test), ("test", n_test)):
        folder = root / f"{split}_images"
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(count):
            abnormal = i % 2 == 1
            while True:  # some lesion combinations do not fit one column: draw again
                kinds = [str(c) for c in rng.choice(LESION_CLASSES, lesions, replace=False)] if abnormal else []
                try:
                    img, boxes = render_spine(np.random.default_rng(int(rng.integers(2**63))), kinds, height=height)
                    break
                except ValueError:
                    continue
            image_id, study_id, series_id = (rng.bytes(16).hex() for _ in range(3))
            mono1 = bool(rng.random() < 0.5)
            write_dicom(folder / f"{image_id}.dicom", to_stored(img, 12, monochrome1=mono1), bits_stored=12,
                        photometric="MONOCHROME1" if mono1 else "MONOCHROME2", modality=None)
            if boxes:
                rows += [[study_id, series_id, image_id, "rad1", label, *(f"{v:.3f}" for v in box)]
                         for label, box in boxes]
            else:
                rows.append([study_id, series_id, image_id, "rad1", "No finding", "", "", "", ""])
        with open(root / "annotations" / f"{split}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(COLUMNS)
            w.writerows(rows)
    marker.write_text(json.dumps(want))
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("dense", "vindr-synth"), default="dense")
    p.add_argument("--n", type=int, default=200, help="synthetic images (train + test)")
    p.add_argument("--lesions", type=int, default=4, help="lesion types per abnormal image (dense dataset)")
    p.add_argument("--height", type=int, default=256, help="synthetic image height")
    p.add_argument("--imgsz", type=int, default=128, help="classifier input size")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (protocol: 1e-4)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--final", choices=("refit", "best_fold"), default="refit")
    p.add_argument("--full", action="store_true", help="also train a tiny YOLO11n detector and export the bundle")
    p.add_argument("--det-epochs", type=int, default=30, help="detector epochs (with --full)")
    p.add_argument("--det-imgsz", type=int, default=256, help="detector image size (with --full)")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--work", type=Path, default=ROOT / ".cache" / "learning_check")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--min-auroc", type=float, default=0.75)
    p.add_argument("--quiet", action="store_true")
    ns = p.parse_args(argv)

    t0 = time.perf_counter()
    data = ns.work / f"data-{ns.dataset}"
    synthetic = 0
    if ns.dataset == "dense":
        write_dense_dataset(data, ns.n, ns.lesions, ns.height)
    else:
        synthetic = ns.n
    t_data = time.perf_counter() - t0
    clf = dataclasses.replace(ClassifierTrainConfig(), lr=ns.lr, final=ns.final, patience=max(3, ns.epochs // 2))
    stages = ("classify", "select", "report") + (("detect", "export") if ns.full else ())
    args = TrainArgs(
        data=data, out=ns.work / "bundle", run_dir=ns.work / f"run-{ns.dataset}", synthetic=synthetic,
        synthetic_height=ns.height, epochs=ns.epochs, imgsz=ns.imgsz, folds=ns.folds, batch=ns.batch,
        workers=ns.workers, device="cpu", stages=stages, resume=ns.resume, verbose=not ns.quiet,
        det_arch="yolo11n", det_epochs=ns.det_epochs, det_imgsz=ns.det_imgsz, det_batch=8, classifier=clf,
        detector=DetectorTrainConfig(nbs=8, plots=False), report=ReportConfig(bootstrap=1000))
    result = train(args)
    wall = time.perf_counter() - t0
    m = result.metrics
    ens = m["test"]["ensemble"]
    training = m.get("training", {})
    summary = {
        "config": {"dataset": ns.dataset, "n": ns.n, "lesions": ns.lesions if ns.dataset == "dense" else None,
                   "height": ns.height, "imgsz": ns.imgsz, "epochs": ns.epochs, "folds": ns.folds, "lr": ns.lr,
                   "batch": ns.batch, "final": ns.final, "full": ns.full, "device": "cpu",
                   "det_epochs": ns.det_epochs if ns.full else None, "det_imgsz": ns.det_imgsz if ns.full else None},
        "data": m["data"],
        "test_auroc": ens["auroc"],
        "test_auroc_ci95": [ens["auroc_ci"]["low"], ens["auroc_ci"]["high"]] if ens.get("auroc_ci") else None,
        "test_at_gate": {k: ens["at_gate"][k] for k in ("sensitivity", "specificity", "f1")},
        "test_per_model_auroc": {a: v["auroc"] for a, v in m["test"]["per_model"].items()},
        "test_auroc_default_weights": m["test"].get("auroc_default_weights"),
        "oof_auroc": (m.get("oof") or {}).get("auroc"),
        "weights": m["selection"]["weights"], "gate": m["selection"]["gate"],
        "selection_source": m["selection"]["source"],
        "fold_val_auroc": {a: t.get("fold_val_auroc") for a, t in training.items()},
        "fold_best_epochs": {a: t.get("fold_best_epochs") for a, t in training.items()},
        "detection": {k: m["detection"].get(k) for k in ("map50", "map50_95")} if ns.full else None,
        "timings_s": {"dataset": round(t_data, 1), **{k: round(v, 1) for k, v in result.timings.items()}},
        "wall_s": round(wall, 1),
        "calibration": {split: {k: c[k] for k in ("n", "ece_before", "ece_after")}
                        for split, c in (m.get("calibration") or {}).items()},
        "reliability_diagrams": sorted(str(p) for p in Path(result.report).parent.glob("reliability_*.png"))
        if result.report else [],
        "report": str(result.report) if result.report else None,
        "bundle": str(result.bundle) if result.bundle else None,
    }
    print(json.dumps(summary, indent=2))
    auc = ens["auroc"]
    ok = auc is not None and np.isfinite(auc) and auc >= ns.min_auroc
    print(f"learning check {'PASSED' if ok else 'FAILED'}: held-out AUROC {auc:.3f} (threshold {ns.min_auroc})",
          file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
