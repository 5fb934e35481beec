"""Training configuration: one frozen dataclass per concern, plus ``TrainArgs`` (what the CLI collects).

Defaults follow the DERNet / YOLO11-L protocol; the tiny CI run and the CPU learning check override sizes,
epochs and batch sizes through ``TrainArgs`` (command-line options) or by passing whole concern configs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spine_ui.config import DEFAULT_CLASSIFIERS, PreprocessConfig, TriageConfig

STAGES: tuple[str, ...] = ("classify", "detect", "select", "report", "export")

#: DERNet member -> training batch size (the paper's 32 / 24 / 32 at 384 px).
DEFAULT_BATCH: dict[str, int] = {"densenet121": 32, "tf_efficientnetv2_s": 24, "resnet50": 32}


@dataclass(frozen=True)
class ClassifierTrainConfig:
    """Training of each DERNet member (timm backbone, one logit)."""

    archs: tuple[str, ...] = tuple(s.arch for s in DEFAULT_CLASSIFIERS)
    input_size: int = 384
    epochs: int = 50  # upper bound; early stopping on validation AUROC ends most runs earlier
    batch: tuple[tuple[str, int], ...] = tuple(DEFAULT_BATCH.items())
    lr: float = 1e-4
    weight_decay: float = 1e-4
    patience: int = 10  # early stopping: epochs without a better validation AUROC
    seed: int = 42
    pretrained: bool = False  # ImageNet weights when asked for *and* obtainable; else from scratch
    amp: bool = True  # only takes effect on CUDA
    workers: int = 2  # DataLoader worker processes (0-2)
    # augmentation, on the enhanced working image before to_model_input()
    hflip: float = 0.5
    rotation: float = 15.0  # degrees, uniform in [-rotation, +rotation]
    brightness: float = 0.2  # multiplicative factor in [1 - b, 1 + b]
    contrast: float = 0.2  # blend with the mean, factor in [1 - c, 1 + c]
    blur_p: float = 0.3  # probability of a Gaussian blur
    blur_sigma: tuple[float, float] = (0.1, 1.5)  # sigma range in model-input pixels
    eval_batch: int = 32  # images per inference batch (x TTA views)
    #: final models for export: "refit" = retrain on the whole train split for the median best fold epoch;
    #: "best_fold" = keep the fold model with the best validation AUROC.
    final: str = "refit"

    def batch_for(self, arch: str) -> int:
        """Training batch size of ``arch`` (32 when not listed)."""
        return dict(self.batch).get(arch, 32)


@dataclass(frozen=True)
class DetectorTrainConfig:
    """YOLO11 training through ultralytics (arguments passed to ``YOLO.train``)."""

    arch: str = "yolo11l"
    #: ultralytics' own device string for training, e.g. "0,1,2,3" (its multi-GPU DDP); "" = the run's device
    device: str = ""
    epochs: int = 35
    imgsz: int = 640
    batch: int = 12
    nbs: int = 48
    optimizer: str = "SGD"
    lr0: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    cos_lr: bool = True
    warmup_epochs: float = 3.0
    mosaic: float = 0.5
    mixup: float = 0.1
    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    fliplr: float = 0.5
    #: ultralytics 8.4 takes a fraction (imgsz * (1 +/- f)); 0.5 is what ``multi_scale=True`` meant before.
    multi_scale: float = 0.5
    seed: int = 42
    workers: int = 2
    plots: bool = True
    #: class-imbalance measure: "sqrt" repeats images in the training list ~ 1/sqrt(class frequency);
    #: "none" keeps one copy of each image.
    balance: str = "sqrt"
    max_repeat: int = 4
    cls_pw: float = 0.0  # ultralytics' class-weighted BCE (power of inverse frequency); 0 = off
    holdout_folds: int = 5  # 1/k of the train studies are held out for ultralytics' validation / best.pt
    val_conf: float = 0.001  # confidence floor for mAP evaluation (ultralytics' val default)
    val_iou: float = 0.7


@dataclass(frozen=True)
class SelectionConfig:
    """Cross-validation and the choice of ensemble weights and gate."""

    folds: int = 5
    seed: int = 42
    weight_step: float = 0.05
    default_weights: tuple[tuple[str, float], ...] = tuple((s.arch, s.weight) for s in DEFAULT_CLASSIFIERS)
    default_gate: float = TriageConfig().gate
    tta_views: tuple[str, ...] = TriageConfig().tta_views  # the serving views score OOF and test images
    calibrate: bool = True  # fit the calibration on the OOF predictions; gate on the calibrated ensemble

    @property
    def enabled(self) -> bool:
        """Cross-validation (and so selection) runs with two or more folds."""
        return self.folds >= 2


@dataclass(frozen=True)
class ReportConfig:
    """Test-split report: threshold table, bootstrap CIs."""
    thresholds: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6)  # the gate is added to the table
    bootstrap: int = 2000
    ci: float = 0.95
    seed: int = 42


@dataclass(frozen=True)
class ExportConfig:
    """Bundle export: the feature-space outlier statistics and the version string."""
    ood_percentile: float = 99.0
    ood_max_images: int = 5000  # training images used for the feature statistics (random subset above)
    version: str = ""  # default: <spine_ui version>+trained.<UTC timestamp>
    precision_check_images: int = 20  # test images for the bf16 decision-path check (0: skip; BF16 CPUs only)


@dataclass
class TrainArgs:
    """Everything ``spine_ui.train.runner.train`` needs; the CLI fills it from ``python -m spine_ui train``.

    ``epochs``/``det_epochs``/``imgsz``/``det_imgsz``/``folds``/``batch``/``det_batch``/``workers`` override
    the matching fields of the concern configs when set (None keeps the config value).
    """

    data: Path
    out: Path
    synthetic: int = 0  # > 0: first write a synthetic dataset of this many images into ``data``
    synthetic_height: int = 512
    synthetic_seed: int = 0
    epochs: int | None = None
    det_epochs: int | None = None
    imgsz: int | None = None
    det_imgsz: int | None = None
    folds: int | None = None
    batch: int | None = None
    det_batch: int | None = None
    det_arch: str | None = None
    det_device: str | None = None
    workers: int | None = None
    stages: tuple[str, ...] = STAGES
    device: str = "auto"  # auto | cpu | cuda
    pretrained: bool = False
    resume: bool = False
    run_dir: Path | None = None  # default: see spine_ui.train.runner.default_run_dir
    name: str | None = None  # bundle name (default: the out folder's name)
    verbose: bool = True
    #: the preprocessing the cache, the classifiers and the exported manifest use (serving reads it back)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    classifier: ClassifierTrainConfig = field(default_factory=ClassifierTrainConfig)
    detector: DetectorTrainConfig = field(default_factory=DetectorTrainConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def resolved(self) -> "TrainArgs":
        """A copy with the scalar overrides folded into the concern configs and paths made ``Path``."""
        clf = self.classifier
        upd: dict[str, Any] = {}
        if self.epochs is not None:
            upd["epochs"] = int(self.epochs)
        if self.imgsz is not None:
            upd["input_size"] = int(self.imgsz)
        if self.batch is not None:
            upd["batch"] = tuple((a, int(self.batch)) for a in clf.archs)
        if self.workers is not None:
            upd["workers"] = int(self.workers)
        if self.pretrained:
            upd["pretrained"] = True
        clf = dataclasses.replace(clf, **upd)
        det_upd: dict[str, Any] = {}
        for key, attr in (("det_epochs", "epochs"), ("det_imgsz", "imgsz"), ("det_batch", "batch"),
                          ("det_arch", "arch"), ("det_device", "device"), ("workers", "workers")):
            value = getattr(self, key)
            if value is not None:
                det_upd[attr] = value
        det = dataclasses.replace(self.detector, **det_upd)
        sel = self.selection if self.folds is None else dataclasses.replace(self.selection, folds=int(self.folds))
        stages = tuple(self.stages)
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {', '.join(unknown)}; known: {', '.join(STAGES)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if clf.final not in ("refit", "best_fold"):
            raise ValueError(f"classifier final must be 'refit' or 'best_fold', got {clf.final!r}")
        if det.balance not in ("sqrt", "none"):
            raise ValueError(f"detector balance must be 'sqrt' or 'none', got {det.balance!r}")
        return dataclasses.replace(
            self, data=Path(self.data), out=Path(self.out),
            run_dir=Path(self.run_dir) if self.run_dir is not None else None,
            stages=tuple(s for s in STAGES if s in stages), classifier=clf, detector=det, selection=sel)
