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

from spine_ui._env import restore_threads
from spine_ui.bundle.architectures import ClassifierWithFeatures, head_parameters
from spine_ui.config import ClassifierSpec
from spine_ui.bundle.manifest import ClassifierEntry, DetectorEntry, Manifest, write_manifest

ONNX_OPSET = 17


def export_classifier(model: nn.Module, spec: ClassifierSpec, out_dir: Path) -> ClassifierEntry:
    """Save ``<arch>.pt`` (state dict), ``<arch>.head.npz`` and ``<arch>.onnx`` (outputs logit, features).

    Batch and spatial axes are dynamic (LIME scores at its own, smaller size). With the TorchScript exporter
    (``dynamo=False``) timm's ``tf_`` "same" padding stays shape-dependent in the graph; a test checks parity
    with torch at other sizes."""
    arch = spec.arch
    model = model.eval().cpu()
    torch.save(model.state_dict(), out_dir / f"{arch}.pt")
    w, b = head_parameters(model)
    np.savez(out_dir / f"{arch}.head.npz", weight=w.numpy().astype(np.float32), bias=np.float32(b))
    wrapped = ClassifierWithFeatures(model).eval()
    dummy = torch.zeros(1, 3, spec.input_size, spec.input_size)
    spatial = {0: "batch", 2: "height", 3: "width"}
    with torch.no_grad():
        channels = int(wrapped(dummy)[1].shape[1])
        torch.onnx.export(
            wrapped, (dummy,), str(out_dir / f"{arch}.onnx"), input_names=["image"],
            output_names=["logit", "features"], opset_version=ONNX_OPSET, dynamo=False,
            dynamic_axes={"image": spatial, "logit": {0: "batch"}, "features": {0: "batch", 2: "fh", 3: "fw"}})
    return ClassifierEntry(arch, spec.input_size, spec.weight, spec.cam_layer, f"{arch}.onnx", f"{arch}.pt",
                           f"{arch}.head.npz", channels)


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
    manifest.classifiers = [export_classifier(model, spec, out_dir) for spec, model in classifiers]
    if detector is not None:
        det_model, det_yaml = detector
        cfg = manifest.detector_config
        manifest.detector = export_detector(det_model, det_yaml, cfg.classes, cfg.arch, cfg.imgsz, out_dir)
    write_manifest(out_dir, manifest)
    return out_dir
