"""Network builders. Nothing here loads weights from the network: timm models are created with
``pretrained=False`` unless a caller asks otherwise, YOLO11-L is built from ultralytics' ``yolo11l.yaml``."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


def build_classifier(arch: str, pretrained: bool = False) -> nn.Module:
    """A timm backbone with a one-logit head (global average pool + linear)."""
    import timm

    return timm.create_model(arch, pretrained=pretrained, num_classes=1)


class ClassifierWithFeatures(nn.Module):
    """Wraps a timm classifier to return ``(logit[N], features[N, C, h, w])``.

    ``features`` is the pre-pool map of the last feature block (the Grad-CAM layer). For a global-average-
    pool + linear head, ``logit = w . mean_hw(features) + b``, so ``sum_c w_c F_c`` is exactly Grad-CAM.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.forward_features(x)
        logit = self.model.forward_head(feats)
        return logit[:, 0], feats


def head_parameters(model: nn.Module) -> tuple[torch.Tensor, float]:
    """(weight vector [C], bias) of a one-logit linear head."""
    head = model.get_classifier()
    if not isinstance(head, nn.Linear) or head.out_features != 1:
        raise ValueError("expected a one-logit nn.Linear classifier head")
    return head.weight.detach()[0].clone(), float(head.bias.detach()[0])


def detector_yaml(nc: int, arch: str = "yolo11l") -> dict[str, Any]:
    """The ultralytics model definition for ``arch`` (e.g. yolo11l) with ``nc`` classes, as a plain dict."""
    from ultralytics.nn.tasks import yaml_model_load

    cfg = dict(yaml_model_load(f"{arch}.yaml"))
    cfg["nc"] = nc
    return cfg


def build_detector(cfg: dict[str, Any], names: list[str] | tuple[str, ...]) -> nn.Module:
    """An ultralytics DetectionModel from a model dict (random init)."""
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(cfg=dict(cfg), nc=len(names), verbose=False)
    model.names = dict(enumerate(names))
    return model
