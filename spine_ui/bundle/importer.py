"""Build a bundle from existing checkpoints (timm-style classifiers and an ultralytics YOLO11 ``best.pt``).

Everything is read with ``torch.load(weights_only=True)``. An ultralytics checkpoint pickles whole modules,
so its globals are inspected first and only ``torch.nn.Module`` subclasses from ``ultralytics.*`` /
``torch.nn.*`` (plus a few plain data types) are allowlisted; anything else refuses the file.
"""
from __future__ import annotations

import datetime as _dt
import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spine_ui import __version__
from spine_ui.config import DEFAULT_CLASSIFIERS, ClassifierSpec, DetectorConfig
from spine_ui.errors import BundleError
from spine_ui.bundle.architectures import build_classifier
from spine_ui.bundle.export import assemble
from spine_ui.bundle.manifest import Manifest

SAFE_DATA_GLOBALS = {"ultralytics.utils.IterableSimpleNamespace", "types.SimpleNamespace",
                     "pathlib.PosixPath", "pathlib.WindowsPath", "datetime.datetime"}
MODULE_PREFIXES = ("ultralytics.", "torch.nn.")


def classifier_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A timm state dict from a checkpoint: ``model_state_dict`` / ``state_dict`` entry or a bare dict."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BundleError(f"Checkpoint '{Path(path).name}' could not be loaded safely ({type(exc).__name__}).") from exc
    if isinstance(obj, dict):
        for key in ("model_state_dict", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BundleError(f"Checkpoint '{Path(path).name}' holds no state dict of tensors.")
    return {_strip(k): v for k, v in obj.items()}


def _strip(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def load_classifier(arch: str, path: Path) -> nn.Module:
    model = build_classifier(arch)
    sd = classifier_state_dict(path)
    if not any(k in model.state_dict() for k in sd) and all(k.startswith("model.") for k in sd):
        sd = {k[len("model."):]: v for k, v in sd.items()}
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"'{Path(path).name}' does not fit timm {arch} with a one-logit head: "
                          f"{str(exc).splitlines()[0]}") from exc
    return model.eval()


def _allowlist(path: Path) -> list[Any]:
    allowed = []
    for name in torch.serialization.get_unsafe_globals_in_checkpoint(str(path)):
        module, _, attr = name.rpartition(".")
        if name in SAFE_DATA_GLOBALS or name.startswith(MODULE_PREFIXES):
            obj = getattr(importlib.import_module(module), attr, None)
            if name in SAFE_DATA_GLOBALS or (isinstance(obj, type) and issubclass(obj, nn.Module)):
                allowed.append(obj)
                continue
        raise BundleError(f"YOLO checkpoint '{Path(path).name}' references '{name}', which is not an allowed "
                          "model class; refusing to load it.")
    return allowed


def load_yolo_checkpoint(path: Path) -> tuple[nn.Module, dict[str, Any], tuple[str, ...]]:
    """(model in float32 eval mode, its yaml dict, class names) from an ultralytics ``best.pt``."""
    try:
        with torch.serialization.safe_globals(_allowlist(path)):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except BundleError:
        raise
    except Exception as exc:
        raise BundleError(f"YOLO checkpoint '{Path(path).name}' could not be loaded safely "
                          f"({type(exc).__name__}).") from exc
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if not isinstance(model, nn.Module) or not isinstance(getattr(model, "yaml", None), dict):
        raise BundleError(f"'{Path(path).name}' is not an ultralytics detection checkpoint.")
    names = getattr(model, "names", None)
    names = tuple(names[i] for i in sorted(names)) if isinstance(names, dict) else tuple(names or ())
    return model.float().eval(), dict(model.yaml), names


def import_checkpoints(out_dir: Path, classifiers: dict[str, Path], sizes: dict[str, int] | None = None,
                       yolo: Path | None = None, *, name: str | None = None, version: str = "1.0.0",
                       trained: bool = True, weights: dict[str, float] | None = None,
                       gate: float | None = None, metrics: dict | None = None) -> Path:
    """Export the given checkpoints into a bundle at ``out_dir`` (ONNX + state dicts + manifest)."""
    from spine_ui.config import TriageConfig

    sizes, weights = sizes or {}, weights or {}
    specs = []
    for default in DEFAULT_CLASSIFIERS:
        if default.arch not in classifiers:
            raise BundleError(f"Missing checkpoint for {default.arch} (DERNet needs all three members).")
        specs.append(ClassifierSpec(default.arch, int(sizes.get(default.arch, default.input_size)),
                                    float(weights.get(default.arch, default.weight)), default.cam_layer))
    models = [(s, load_classifier(s.arch, Path(classifiers[s.arch]))) for s in specs]
    det, det_cfg = None, DetectorConfig()
    if yolo is not None:
        model, yaml_cfg, names = load_yolo_checkpoint(Path(yolo))
        arch = Path(str(yaml_cfg.get("yaml_file") or "yolo11l.yaml")).stem
        det_cfg = DetectorConfig(arch=arch, classes=names or det_cfg.classes)
        det = (model, yaml_cfg)
    manifest = Manifest(
        name=name or Path(out_dir).name, version=version, trained=trained, classifiers=[], detector=None,
        triage=TriageConfig(gate=gate) if gate is not None else TriageConfig(), detector_config=det_cfg,
        metrics=metrics or {},
        provenance={"kind": "imported", "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "spine_ui": __version__, "sources": {a: Path(p).name for a, p in classifiers.items()}
                    | ({"yolo": Path(yolo).name} if yolo else {})})
    return assemble(Path(out_dir), manifest, models, det)
