"""A seeded, random-initialised bundle so the app and CLI run on a fresh machine with no weights.

Batch-norm statistics are settled on synthetic spine phantoms and each head is rescaled so logits on those
phantoms have mean 0 and spread 0.5: outputs are finite and not saturated, and mean nothing clinically.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spine_ui import __version__
from spine_ui.config import DEFAULT_CLASSIFIERS, ClassifierSpec, DetectorConfig, PreprocessConfig
from spine_ui.core.contract import to_model_input
from spine_ui.core.preprocess import enhance
from spine_ui.bundle.architectures import build_classifier, build_detector, detector_yaml
from spine_ui.bundle.export import assemble
from spine_ui.bundle.manifest import Manifest


def calibration_images(n: int, seed: int) -> list[np.ndarray]:
    """Enhanced (CLAHE) uint8 phantoms, half of them with lesions."""
    from spine_ui.config import LESION_CLASSES
    from spine_ui.synth.phantom import render_spine

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        lesions = [LESION_CLASSES[i % len(LESION_CLASSES)]] if i % 2 else []
        img, _ = render_spine(rng, lesions, height=512)
        out.append(enhance(img, PreprocessConfig()))
    return out


def settle_batchnorm(model: nn.Module, batch: torch.Tensor) -> None:
    """Replace BN running statistics with the exact statistics of ``batch`` (cumulative average)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(batch)
    model.eval()


def calibrate_head(model: nn.Module, batch: torch.Tensor, spread: float = 0.5) -> None:
    """Rescale the one-logit head so logits on ``batch`` have mean 0 and standard deviation ``spread``."""
    head = model.get_classifier()
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(batch), pre_logits=True)
        z = pooled @ head.weight[0]
        scale = spread / float(z.std().clamp_min(1e-6))
        head.weight.mul_(scale)
        head.bias.fill_(-float(z.mean()) * scale)


def untrained_classifier(spec: ClassifierSpec, images: list[np.ndarray], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = build_classifier(spec.arch, pretrained=False)
    batch = torch.from_numpy(np.stack([to_model_input(im, spec.input_size)[0] for im in images]))
    settle_batchnorm(model, batch)
    calibrate_head(model, batch)
    return model


def init_untrained(out_dir: Path, *, seed: int = 0, sizes: dict[str, int] | None = None,
                   detector: bool = True, n_calibration: int = 12, name: str = "untrained") -> Path:
    """Create the untrained bundle at ``out_dir`` (``sizes`` overrides per-architecture input sizes)."""
    sizes = sizes or {}
    images = calibration_images(n_calibration, seed)
    specs = [ClassifierSpec(s.arch, sizes.get(s.arch, s.input_size), s.weight, s.cam_layer)
             for s in DEFAULT_CLASSIFIERS]
    classifiers = [(s, untrained_classifier(s, images, seed + i)) for i, s in enumerate(specs)]
    det = None
    if detector:
        cfg = DetectorConfig()
        torch.manual_seed(seed)
        yaml_cfg = detector_yaml(len(cfg.classes), cfg.arch)
        det = (build_detector(yaml_cfg, cfg.classes).eval(), yaml_cfg)
    manifest = Manifest(
        name=name, version=f"{__version__}+untrained.seed{seed}", trained=False, classifiers=[], detector=None,
        provenance={"kind": "untrained", "seed": seed, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(
            timespec="seconds"), "spine_ui": __version__, "torch": torch.__version__,
            "note": "Random weights; BN statistics settled on synthetic phantoms. Results carry no meaning."})
    return assemble(Path(out_dir), manifest, classifiers, det)
