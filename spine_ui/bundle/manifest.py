"""``manifest.json``: everything needed to serve a bundle, plus the sha256 of every file it names."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spine_ui._io import atomic_write_json
from spine_ui.bundle.precision import PrecisionCheck
from spine_ui.core.calibration import BundleCalibration
from spine_ui.config import (DetectorConfig, ExplainConfig, PreprocessConfig, TriageConfig, from_dict, to_dict)
from spine_ui.errors import BundleError, BundleIntegrityError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ClassifierEntry:
    arch: str
    input_size: int
    weight: float
    cam_layer: str
    onnx: str  # file names inside the bundle
    torch: str
    head: str  # npz with the linear head (w, b), for CAM on the ONNX path
    feature_channels: int = 0


@dataclass(frozen=True)
class DetectorEntry:
    arch: str
    onnx: str
    torch: str  # state dict (tensors only)
    yaml: str  # the ultralytics model definition the state dict belongs to


@dataclass
class Manifest:
    name: str
    version: str
    trained: bool
    classifiers: list[ClassifierEntry]
    detector: DetectorEntry | None
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    triage: TriageConfig = field(default_factory=TriageConfig)
    detector_config: DetectorConfig = field(default_factory=DetectorConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    ood: dict[str, Any] | None = None  # {"file": "ood.npz", "percentile": 99.0, "threshold": ...}
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256
    format_version: int = FORMAT_VERSION
    #: optional (a bundle without it serves the plain soft vote, as before); see core/calibration.py
    calibration: BundleCalibration | None = None
    #: optional: reduced-precision decision-path checks (bundle/precision.py); none -> fp32 decisions
    precision_checks: list[PrecisionCheck] = field(default_factory=list)

    @property
    def weights(self) -> dict[str, float]:
        return {c.arch: c.weight for c in self.classifiers}

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "name": self.name,
            "version": self.version,
            "trained": self.trained,
            "classifiers": [to_dict(c) for c in self.classifiers],
            "detector": to_dict(self.detector) if self.detector else None,
            "preprocess": to_dict(self.preprocess),
            "triage": to_dict(self.triage),
            "detector_config": to_dict(self.detector_config),
            "explain": to_dict(self.explain),
            "ood": self.ood,
            "metrics": self.metrics,
            "provenance": self.provenance,
            "files": self.files,
            **({"calibration": self.calibration.to_json()} if self.calibration else {}),
            **({"precision_checks": [c.to_json() for c in self.precision_checks]} if self.precision_checks else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Manifest":
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(f"Unsupported bundle format version {version!r} (this app reads {FORMAT_VERSION}).")
        try:
            det = data.get("detector")
            return cls(
                name=str(data["name"]),
                version=str(data["version"]),
                trained=bool(data["trained"]),
                classifiers=[ClassifierEntry(**c) for c in data["classifiers"]],
                detector=DetectorEntry(**det) if det else None,
                preprocess=from_dict(PreprocessConfig, data.get("preprocess")),
                triage=from_dict(TriageConfig, data.get("triage")),
                detector_config=from_dict(DetectorConfig, data.get("detector_config")),
                explain=from_dict(ExplainConfig, data.get("explain")),
                ood=data.get("ood"),
                metrics=data.get("metrics") or {},
                provenance=data.get("provenance") or {},
                files=dict(data.get("files") or {}),
                calibration=BundleCalibration.from_json(data["calibration"]) if data.get("calibration") else None,
                precision_checks=[PrecisionCheck.from_json(c) for c in data.get("precision_checks") or ()],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"The bundle manifest is malformed ({exc.__class__.__name__}: {exc}).") from exc

    def referenced_files(self) -> list[str]:
        names = [n for c in self.classifiers for n in (c.onnx, c.torch, c.head)]
        if self.detector:
            names += [self.detector.onnx, self.detector.torch, self.detector.yaml]
        if self.ood:
            names.append(self.ood["file"])
        return names


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(bundle_dir: Path, manifest: Manifest) -> Path:
    """Hash every referenced file and write ``manifest.json``."""
    bundle_dir = Path(bundle_dir)
    manifest.files = {name: sha256(bundle_dir / name) for name in sorted(set(manifest.referenced_files()))}
    return atomic_write_json(bundle_dir / MANIFEST, manifest.to_json(), sort_keys=False)


def read_manifest(bundle_dir: Path) -> Manifest:
    path = Path(bundle_dir) / MANIFEST
    if not path.is_file():
        raise BundleError(f"No model bundle at '{Path(bundle_dir).name}' (manifest.json missing).")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"The bundle manifest is not valid JSON ({exc.msg}).") from exc
    return Manifest.from_json(data)


def verify(bundle_dir: Path, manifest: Manifest) -> None:
    """Refuse a bundle whose files are missing, unlisted or do not match their recorded sha256."""
    bundle_dir = Path(bundle_dir)
    for name in manifest.referenced_files():
        if name not in manifest.files:
            raise BundleIntegrityError(f"Bundle file '{name}' has no recorded hash in the manifest; refusing it.")
    for name, digest in manifest.files.items():
        p = bundle_dir / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleIntegrityError(f"Bundle file name '{name}' escapes the bundle folder; refusing it.")
        if not p.is_file():
            raise BundleIntegrityError(f"Bundle file '{name}' is missing.")
        if sha256(p) != digest:
            raise BundleIntegrityError(
                f"Bundle file '{name}' does not match its sha256 in the manifest (modified or corrupt); refusing it.")
