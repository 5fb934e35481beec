"""Write models into a bundle folder: torch state dicts, ONNX files (with the CAM output) and the manifest.

Used by ``bundle init-untrained``, ``bundle import-checkpoints`` and the training backend, so every bundle
is assembled the same way.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._env import restore_threads
from .architectures import ClassifierWithFeatures, head_parameters
from ..config import ClassifierSpec
from .manifest import ClassifierEntry, DetectorEntry, Manifest, write_manifest

ONNX_OPSET = 17


def fixed_size_only(arch: str) -> bool:
    """timm ``tf_`` models compute "same" padding from the traced size: their ONNX is valid at one size only."""
    return arch.startswith("tf_")


def _export_onnx(wrapped: nn.Module, size: int, path: Path, dynamic_size: bool) -> None:
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    feat_axes = {0: "batch", 2: "fh", 3: "fw"} if dynamic_size else {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(
            wrapped, (torch.zeros(1, 3, size, size),), str(path), input_names=["image"],
            output_names=["logit", "features"], opset_version=ONNX_OPSET, dynamo=False,
            dynamic_axes={"image": axes, "logit": {0: "batch"}, "features": feat_axes})


def export_classifier(model: nn.Module, spec: ClassifierSpec, out_dir: Path,
                      extra_sizes: tuple[int, ...] = ()) -> ClassifierEntry:
    """Save ``<arch>.pt`` (state dict), ``<arch>.head.npz`` and ``<arch>.onnx`` (outputs logit, features).

    Batch is dynamic; spatial size too, except for ``tf_`` models, which get one more fixed-size file per
    size in ``extra_sizes`` (LIME scores perturbations at its own, smaller size)."""
    arch = spec.arch
    model = model.eval().cpu()
    torch.save(model.state_dict(), out_dir / f"{arch}.pt")
    w, b = head_parameters(model)
    np.savez(out_dir / f"{arch}.head.npz", weight=w.numpy().astype(np.float32), bias=np.float32(b))
    wrapped = ClassifierWithFeatures(model).eval()
    with torch.no_grad():
        channels = int(wrapped(torch.zeros(1, 3, spec.input_size, spec.input_size))[1].shape[1])
    dynamic = not fixed_size_only(arch)
    _export_onnx(wrapped, spec.input_size, out_dir / f"{arch}.onnx", dynamic)
    by_size = {}
    for size in sorted(set(extra_sizes) - {spec.input_size}):
        if not dynamic:
            by_size[str(size)] = f"{arch}.{size}.onnx"
            _export_onnx(wrapped, size, out_dir / by_size[str(size)], False)
    return ClassifierEntry(arch, spec.input_size, spec.weight, spec.cam_layer, f"{arch}.onnx", f"{arch}.pt",
                           f"{arch}.head.npz", channels, dynamic, by_size)


def export_detector(model: nn.Module, model_yaml: dict[str, Any], names: tuple[str, ...], arch: str,
                    imgsz: int, out_dir: Path) -> DetectorEntry:
    """Save the YOLO state dict + model yaml and export ONNX with ultralytics' own exporter
    (dynamic batch/height/width, onnxslim-simplified)."""
    import yaml
    from ultralytics import YOLO

    cfg = {k: v for k, v in model_yaml.items() if k != "yaml_file"}
    cfg["nc"] = len(names)
    (out_dir / f"{arch}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, out_dir / f"{arch}.pt")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(out_dir / f"{arch}.yaml", Path(tmp) / f"{arch}.yaml")
        yolo = YOLO(str(Path(tmp) / f"{arch}.yaml"), task="detect")
        yolo.model.load_state_dict(state)
        yolo.model.names = dict(enumerate(names))
        yolo.model.pt_path = str(Path(tmp) / f"{arch}.pt")
        onnx_path = yolo.export(format="onnx", imgsz=imgsz, dynamic=True, simplify=True, opset=ONNX_OPSET,
                                device="cpu", verbose=False)
        shutil.move(onnx_path, out_dir / f"{arch}.onnx")
    restore_threads()
    return DetectorEntry(arch=arch, onnx=f"{arch}.onnx", torch=f"{arch}.pt", yaml=f"{arch}.yaml")


def assemble(out_dir: Path, manifest: Manifest, classifiers: list[tuple[ClassifierSpec, nn.Module]],
             detector: tuple[nn.Module, dict[str, Any]] | None) -> Path:
    """Export every model into ``out_dir`` and write a hashed manifest. Returns the bundle folder."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lime_size = manifest.explain.lime_size
    manifest.classifiers = [export_classifier(model, spec, out_dir, (lime_size,)) for spec, model in classifiers]
    if detector is not None:
        det_model, det_yaml = detector
        cfg = manifest.detector_config
        manifest.detector = export_detector(det_model, det_yaml, cfg.classes, cfg.arch, cfg.imgsz, out_dir)
    write_manifest(out_dir, manifest)
    return out_dir
