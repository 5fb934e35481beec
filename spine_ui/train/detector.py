"""YOLO11 lesion detector training and evaluation through ultralytics (8.4).

Class imbalance: image-level repeat-factor oversampling. Each lesion class c gets
``r_c = sqrt(f_max / f_c)`` (f_c = training images containing c, so the sampling weight of its images is
proportional to 1 / sqrt(f_c)); an image is listed ``r_i = max_{c in image} r_c`` times (stochastically
rounded, seeded, capped at ``max_repeat``; images without lesions once) in the training *list file* that the
ultralytics data yaml points at. Ultralytics reads list files verbatim (no de-duplication), so the
repeats reach its dataloader, mosaic included, with no change to ultralytics' own dataset or sampler.
Ultralytics' native ``cls_pw`` (inverse-frequency weights in the classification BCE) is available as
``DetectorTrainConfig.cls_pw`` and off by default (combining both would correct twice).

Validation during training (``val=True``: best.pt, plots) uses a study-grouped holdout of the train split;
the test split is only evaluated by ``evaluate`` for the final report.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from spine_ui._env import restore_threads
from spine_ui._io import atomic_write_json
from spine_ui.bundle.architectures import detector_yaml
from spine_ui.config import LESION_CLASSES
from spine_ui.train.config import DetectorTrainConfig
from spine_ui.train.metrics import ImageDetections, detection_map

#: progress callback (one line of text); defaults to this module's logger (``spine_ui.train`` hierarchy)
Log = Callable[[str], None]
_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- class balance
def label_classes(label_file: Path) -> set[int]:
    """Class indices present in a YOLO label file."""
    if not Path(label_file).exists():
        return set()
    return {int(line.split()[0]) for line in Path(label_file).read_text().splitlines() if line.strip()}


def repeat_factors(classes_per_image: Sequence[set[int]], nc: int, max_repeat: int = 4,
                   seed: int = 42) -> tuple[list[int], dict]:
    """Integer repeats per image (sampling weight of class c images ~ 1/sqrt(f_c)) and a summary."""
    freq = np.zeros(nc, dtype=np.int64)
    for cs in classes_per_image:
        for c in cs:
            freq[c] += 1
    present = freq > 0
    f_max = freq.max() if present.any() else 1
    r_class = np.ones(nc)
    r_class[present] = np.sqrt(f_max / freq[present])
    rng = np.random.default_rng(seed)
    repeats = []
    for cs in classes_per_image:
        r = min(float(max_repeat), max([r_class[c] for c in cs], default=1.0))
        whole = math.floor(r)
        repeats.append(int(whole + (rng.random() < r - whole)))
    before = freq.astype(float)
    after = np.zeros(nc)
    for cs, k in zip(classes_per_image, repeats):
        for c in cs:
            after[c] += k
    summary = {"images": len(repeats), "listed": int(sum(repeats)),
               "class_images": before.astype(int).tolist(), "class_images_after": after.astype(int).tolist(),
               "class_repeat": [round(float(x), 4) for x in r_class], "max_repeat": max_repeat}
    return repeats, summary


def write_list(path: Path, image_paths: Sequence[Path], repeats: Sequence[int] | None = None) -> Path:
    """An ultralytics image list file, each image repeated ``repeats[i]`` times (duplicates are kept)."""
    lines = []
    for i, p in enumerate(image_paths):
        lines += [str(Path(p).resolve())] * (1 if repeats is None else int(repeats[i]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- training
def _restore_torch() -> None:
    """Undo ultralytics' process-wide settings: its thread pinning and ``deterministic=True``'s
    ``torch.use_deterministic_algorithms`` (which would slow the classifiers scored afterwards)."""
    import torch

    restore_threads()
    torch.use_deterministic_algorithms(False)


class _OfflineAmpCheck:
    """Ultralytics' AMP self-test downloads yolo26n.pt to compare outputs; offline it would try the network
    first. Without that file locally, trust AMP (as ultralytics itself does when the download fails)."""

    def __enter__(self) -> None:
        import ultralytics.engine.trainer as trainer
        from ultralytics.utils import WEIGHTS_DIR

        self.module, self.original = trainer, trainer.check_amp
        if not (WEIGHTS_DIR / "yolo26n.pt").is_file():
            trainer.check_amp = lambda model: True

    def __exit__(self, *exc) -> None:
        self.module.check_amp = self.original


def write_model_yaml(out_dir: Path, arch: str, nc: int) -> Path:
    """The ultralytics model definition (e.g. yolo11l.yaml) with ``nc`` classes, as a file."""
    import yaml

    cfg = {k: v for k, v in detector_yaml(nc, arch).items() if k != "yaml_file"}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{arch}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def train_args(cfg: DetectorTrainConfig, data_yaml: Path, project: Path, device: str) -> dict:
    """Keyword arguments of ``YOLO.train`` for this configuration."""
    cuda = device == "cuda"
    return dict(
        data=str(data_yaml), epochs=cfg.epochs, imgsz=cfg.imgsz, batch=cfg.batch, nbs=cfg.nbs,
        optimizer=cfg.optimizer, lr0=cfg.lr0, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        cos_lr=cfg.cos_lr, warmup_epochs=cfg.warmup_epochs, mosaic=cfg.mosaic, mixup=cfg.mixup,
        hsv_h=cfg.hsv_h, hsv_s=cfg.hsv_s, hsv_v=cfg.hsv_v, fliplr=cfg.fliplr, multi_scale=cfg.multi_scale,
        cls_pw=cfg.cls_pw, seed=cfg.seed, deterministic=True, workers=cfg.workers, project=str(project),
        name="train", exist_ok=True, plots=cfg.plots, val=True, device=cfg.device or (0 if cuda else "cpu"),
        pretrained=False, amp=cuda, verbose=False)


def _fingerprint_ok(path: Path, fingerprint: str) -> bool:
    try:
        return json.loads(path.read_text()).get("fingerprint") == fingerprint
    except (OSError, ValueError):
        return False


def train_detector(cache_dir: Path, train_ids: Sequence[str], holdout_ids: Sequence[str], work_dir: Path,
                   cfg: DetectorTrainConfig, device: str, *, fingerprint: str = "",
                   names: Sequence[str] = LESION_CLASSES, log: Log = _log.info) -> dict:
    """Train YOLO on ``train_ids`` (oversampled), validating on ``holdout_ids``; returns a JSON summary
    with the path of ``best.pt``. Resumes an interrupted ultralytics run from its ``last.pt``."""
    from ultralytics import YOLO

    from spine_ui.train.vindr import write_yolo_yaml

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    images = Path(cache_dir) / "train" / "images"
    labels = Path(cache_dir) / "train" / "labels"
    train_paths = [images / f"{i}.png" for i in train_ids]
    classes = [label_classes(labels / f"{i}.txt") for i in train_ids]
    if cfg.balance == "sqrt":
        repeats, balance = repeat_factors(classes, len(names), cfg.max_repeat, cfg.seed)
    else:
        repeats, balance = [1] * len(train_ids), {"images": len(train_ids), "listed": len(train_ids)}
    train_list = write_list(work_dir / "train.txt", train_paths, repeats)
    val_ids = list(holdout_ids) or list(train_ids)
    val_list = write_list(work_dir / "holdout.txt", [images / f"{i}.png" for i in val_ids])
    data_yaml = write_yolo_yaml(work_dir, names, train=str(train_list), val=str(val_list))
    project = work_dir
    state_file = work_dir / "train_state.json"
    last = project / "train" / "weights" / "last.pt"
    t0 = time.perf_counter()
    resumed = False
    if last.exists() and _fingerprint_ok(state_file, fingerprint):
        log(f"  detector: resuming {last}")
        try:
            model = YOLO(str(last))
            with _OfflineAmpCheck():
                model.train(resume=True, **{k: v for k, v in train_args(cfg, data_yaml, project, device).items()
                                            if k in ("device", "workers", "batch", "imgsz")})
            resumed = True
        except AssertionError as exc:  # the run had finished: ultralytics refuses to resume it
            if "nothing to resume" not in str(exc):
                raise
            log("  detector: previous run had finished")
        finally:
            _restore_torch()
    else:
        shutil.rmtree(project / "train", ignore_errors=True)  # a stale run made with other settings
        atomic_write_json(state_file, {"fingerprint": fingerprint})
        yaml_path = write_model_yaml(work_dir, cfg.arch, len(names))
        model = YOLO(str(yaml_path), task="detect")
        log(f"  detector: {cfg.arch} from {yaml_path.name}, {len(train_ids)} images listed "
            f"{balance['listed']} times, holdout {len(holdout_ids)} images, {cfg.epochs} epochs at {cfg.imgsz} px")
        try:
            with _OfflineAmpCheck():
                model.train(**train_args(cfg, data_yaml, project, device))
        finally:
            _restore_torch()
    best = project / "train" / "weights" / "best.pt"
    if not best.exists():
        best = last
    if not best.exists():
        raise RuntimeError("ultralytics finished without writing best.pt or last.pt")
    return {"best": str(best), "seconds": time.perf_counter() - t0, "resumed": resumed, "arch": cfg.arch,
            "balance": balance, "n_train": len(train_ids), "n_holdout": len(holdout_ids),
            "holdout_is_train": not holdout_ids, "args": {k: v for k, v in asdict(cfg).items()}}


# --------------------------------------------------------------------------- evaluation
def evaluate(weights: Path, cache_dir: Path, test_ids: Sequence[str], work_dir: Path, cfg: DetectorTrainConfig,
             device: str, names: Sequence[str] = LESION_CLASSES, own_check: bool = True) -> dict:
    """Ultralytics ``val`` on the test split (per-class AP@0.5, mAP@0.5, mAP@0.5:0.95) and, when
    ``own_check``, the same measures from ``spine_ui.train.metrics.detection_map`` on ultralytics'
    predictions (``predict``, same conf/IoU) as an independent cross-check."""
    from ultralytics import YOLO

    from spine_ui.train.vindr import read_labels, write_yolo_yaml

    work_dir = Path(work_dir)
    images = Path(cache_dir) / "test" / "images"
    paths = [images / f"{i}.png" for i in test_ids]
    test_list = write_list(work_dir / "test.txt", paths)
    data_yaml = write_yolo_yaml(work_dir / "test_data", names, train=str(test_list), val=str(test_list))
    model = YOLO(str(weights))
    cuda = device == "cuda"
    try:
        m = model.val(data=str(data_yaml), split="val", imgsz=cfg.imgsz, batch=cfg.batch, conf=cfg.val_conf,
                      iou=cfg.val_iou, device=0 if cuda else "cpu", plots=cfg.plots, project=str(work_dir),
                      name="test", exist_ok=True, workers=cfg.workers, verbose=False, half=cuda)
    finally:
        restore_threads()
    box = m.box
    per_class = {names[int(c)]: {"ap50": float(box.ap50[k]), "ap50_95": float(box.ap[k])}
                 for k, c in enumerate(box.ap_class_index)}
    out = {"source": "ultralytics val", "n_images": len(paths), "map50": float(box.map50),
           "map50_95": float(box.map), "precision": float(box.mp), "recall": float(box.mr),
           "per_class": per_class, "conf": cfg.val_conf, "iou": cfg.val_iou, "imgsz": cfg.imgsz}
    if own_check:
        dets = []
        try:
            results = model.predict(source=[str(p) for p in paths], imgsz=cfg.imgsz, conf=cfg.val_conf,
                                    iou=cfg.val_iou, max_det=300, device=0 if cuda else "cpu", stream=True,
                                    verbose=False, half=cuda)
            for p, r in zip(paths, results):
                h, w = r.orig_shape
                gt = read_labels(Path(cache_dir) / "test" / "labels" / f"{p.stem}.txt", w, h)
                dets.append(ImageDetections(
                    r.boxes.xyxy.cpu().numpy(), r.boxes.conf.cpu().numpy(), r.boxes.cls.cpu().numpy(),
                    np.array([[b.xmin, b.ymin, b.xmax, b.ymax] for b in gt]).reshape(-1, 4),
                    np.array([list(names).index(b.label) for b in gt], dtype=np.int64)))
        finally:
            restore_threads()
        own = detection_map(dets, names, method="all")
        own["source"] = "spine_ui.train.metrics (all-point AP, COCO greedy matching, on ultralytics predict)"
        out["own_check"] = own
    return out
