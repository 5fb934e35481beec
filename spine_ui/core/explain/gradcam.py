"""Grad-CAM per backbone and the fused ensemble map.

For a global-average-pool + linear head, d logit / d F_c(i, j) = w_c / (h w), so Grad-CAM's channel weights
are w_c / (h w) and Grad-CAM = ReLU(sum_c w_c F_c) up to a positive constant: on the ONNX path the map is
computed exactly from the exported pre-pool features and the head, with no backprop. On the torch path
pytorch-grad-cam computes it by backprop at the configured layer; a test shows the two agree.

Fused map: sum_m w_m * sigma'(z_m) * CAM_m on a common grid (the gradient of the ensemble probability).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from spine_ui.bundle.store import Bundle, Head
from spine_ui.core.contract import model_input, sigmoid
from spine_ui.core.preprocess import Placement
from spine_ui.core.triage import TriageResult


def class_activation(features: np.ndarray, head: Head) -> np.ndarray:
    """Raw CAM: sum_c w_c F_c for features [C, h, w] (signed, unnormalised)."""
    return np.tensordot(head.weight, features, axes=(0, 0)).astype(np.float32)


def normalise_map(cam: np.ndarray) -> np.ndarray:
    """ReLU then min-max to [0, 1] (pytorch-grad-cam's convention)."""
    cam = np.maximum(cam, 0)
    cam = cam - cam.min()
    return (cam / (1e-7 + cam.max())).astype(np.float32)


def resize_map(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize to (width, height), as pytorch-grad-cam does."""
    return cv2.resize(cam.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)


def exact_gradcam(features: np.ndarray, head: Head, input_size: int) -> np.ndarray:
    """Grad-CAM from features (ONNX path) on the square model input, scaled as pytorch-grad-cam does:
    ReLU + min-max, bilinear resize, min-max again (upsampling moves the minimum between cells)."""
    return normalise_map(resize_map(normalise_map(class_activation(features, head)), (input_size, input_size)))


def torch_gradcam(model, layer_name: str, batch: np.ndarray) -> np.ndarray:
    """Grad-CAM by backprop with pytorch-grad-cam (torch path). ``batch`` is 1 x 3 x S x S; returns S x S."""
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = dict(model.named_modules())[layer_name]
    device = next(model.parameters()).device
    with GradCAM(model=model, target_layers=[layer]) as cam:
        out = cam(input_tensor=torch.from_numpy(batch).to(device), targets=[ClassifierOutputTarget(0)])
    return out[0].astype(np.float32)


@dataclass(frozen=True)
class CamResult:
    """Maps aligned with the enhanced image (H x W, values in [0, 1])."""

    fused: np.ndarray
    per_model: dict[str, np.ndarray] = field(default_factory=dict)
    method: str = "exact-cam"


def to_image(square_map: np.ndarray, placement: Placement, shape: tuple[int, int]) -> np.ndarray:
    """Map on the square model input (any resolution) -> map over the image region, resized to ``shape``."""
    return np.clip(resize_map(placement.crop(square_map), (shape[1], shape[0])), 0.0, 1.0)


def fused_map(triage: TriageResult, bundle: Bundle, grid: int) -> np.ndarray:
    """sum_m w_m sigma'(z_m) CAM_m on a ``grid`` x ``grid`` square, ReLU + min-max normalised."""
    total = np.zeros((grid, grid), np.float32)
    wsum = sum(m.weight for m in triage.models)
    for m in triage.models:
        s = float(sigmoid(m.logit))
        raw = class_activation(triage.feature_maps[m.arch], bundle.heads[m.arch])
        total += (m.weight / wsum) * s * (1.0 - s) * resize_map(raw, (grid, grid))
    return normalise_map(total)


def explain_gradcam(triage: TriageResult, bundle: Bundle, enhanced: np.ndarray,
                    per_model_backprop: bool | None = None) -> CamResult:
    """Fused and per-model maps for the identity view, aligned with ``enhanced``.

    Per-model maps use pytorch-grad-cam when serving on torch (or when asked), else the exact CAM."""
    shape = enhanced.shape[:2]
    placement0 = next(iter(triage.placements.values()))
    fused = to_image(fused_map(triage, bundle, bundle.manifest.explain.cam_grid), placement0, shape)
    backprop = bundle.runtime.kind == "torch" if per_model_backprop is None else per_model_backprop
    per_model = {}
    for entry in bundle.classifiers:
        placement = triage.placements[entry.arch]
        if backprop:
            batch, _ = model_input(enhanced, entry.input_size, ("identity",), bundle.manifest.preprocess)
            square = torch_gradcam(bundle.torch_classifier(entry.arch).model, entry.cam_layer, batch)
        else:
            square = exact_gradcam(triage.feature_maps[entry.arch], bundle.heads[entry.arch], entry.input_size)
        per_model[entry.arch] = to_image(square, placement, shape)
    return CamResult(fused, per_model, "pytorch-grad-cam" if backprop else "exact-cam")
