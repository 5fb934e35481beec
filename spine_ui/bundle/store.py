"""Open a bundle: verify every hash, then build runners once and share them across requests."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spine_ui.errors import BundleError
from spine_ui.bundle.manifest import ClassifierEntry, Manifest, read_manifest, verify
from spine_ui.bundle.runtime import (CLASSIFIER_RUNNERS, DETECTOR_RUNNERS, ClassifierRunner, DetectorRunner, Lazy,
                                    RuntimeInfo, TorchClassifier, TorchDetector, choose_runtime)


@dataclass(frozen=True)
class Head:
    weight: np.ndarray  # [C]
    bias: float


class Bundle:
    """A verified model bundle. Runners are created lazily, once, under a lock; ``warm_up`` builds all."""

    def __init__(self, path: Path, runtime: RuntimeInfo) -> None:
        self.path = Path(path)
        self.manifest: Manifest = read_manifest(self.path)
        verify(self.path, self.manifest)
        self.runtime = runtime
        self.heads = {c.arch: self._read_head(c) for c in self.manifest.classifiers}
        self._classifiers = {c.arch: Lazy(lambda c=c: self._make_classifier(c)) for c in self.manifest.classifiers}
        self._lime_classifiers = {c.arch: Lazy(lambda c=c: self._make_lime_classifier(c))
                                  for c in self.manifest.classifiers}
        self._torch_classifiers = {c.arch: Lazy(lambda c=c: self._make_torch_classifier(c))
                                   for c in self.manifest.classifiers}
        self._detector = Lazy(self._make_detector)
        self._ood = Lazy(self._make_ood)

    # --- public -------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def trained(self) -> bool:
        return self.manifest.trained

    @property
    def classifiers(self) -> list[ClassifierEntry]:
        return list(self.manifest.classifiers)

    def classifier(self, arch: str) -> ClassifierRunner:
        """The runner for ``arch``; it accepts any input size (batch and spatial axes are dynamic)."""
        return self._classifiers[arch].get()

    def lime_classifier(self, arch: str) -> ClassifierRunner:
        """The runner that scores LIME perturbations: OpenVINO bf16 when ``runtime.lime_precision`` is bf16,
        else the serving runner (fp32)."""
        return self._lime_classifiers[arch].get()

    def torch_classifier(self, arch: str) -> TorchClassifier:
        """The eager torch model (for backprop Grad-CAM), whatever the serving runtime is."""
        if self.runtime.kind == "torch":
            return self.classifier(arch)  # type: ignore[return-value]
        return self._torch_classifiers[arch].get()

    def detector(self) -> DetectorRunner | None:
        return self._detector.get() if self.manifest.detector else None

    def ood(self):
        """The feature-space outlier model, or None when the bundle has no statistics."""
        return self._ood.get() if self.manifest.ood else None

    def warm_up(self) -> None:
        for arch in self._classifiers:
            self.classifier(arch)
            self.lime_classifier(arch)
        self.detector()
        self.ood()

    def info(self) -> dict[str, Any]:
        return {"name": self.manifest.name, "version": self.manifest.version, "trained": self.manifest.trained,
                "runtime": self.runtime.label}

    # --- builders -----------------------------------------------------------------------------------------
    def _file(self, name: str) -> Path:
        return self.path / name

    def _read_head(self, entry: ClassifierEntry) -> Head:
        with np.load(self._file(entry.head), allow_pickle=False) as z:
            return Head(z["weight"].astype(np.float32), float(z["bias"]))

    def _make_classifier(self, entry: ClassifierEntry) -> ClassifierRunner:
        if self.runtime.kind in CLASSIFIER_RUNNERS:
            return CLASSIFIER_RUNNERS[self.runtime.kind](self._file(entry.onnx), self.runtime.threads,
                                                         self.runtime.precision)
        return TorchClassifier(entry.arch, self._file(entry.torch), self.runtime.device)

    def _make_lime_classifier(self, entry: ClassifierEntry) -> ClassifierRunner:
        if self.runtime.lime_precision == "bf16" and self.runtime.precision != "bf16":
            return CLASSIFIER_RUNNERS["openvino"](self._file(entry.onnx), self.runtime.threads, "bf16")
        return self.classifier(entry.arch)

    def _make_torch_classifier(self, entry: ClassifierEntry) -> TorchClassifier:
        return TorchClassifier(entry.arch, self._file(entry.torch), "cpu")

    def _make_detector(self) -> DetectorRunner:
        det = self.manifest.detector
        assert det is not None
        if self.runtime.kind in DETECTOR_RUNNERS:
            return DETECTOR_RUNNERS[self.runtime.kind](self._file(det.onnx), self.runtime.threads,
                                                       self.runtime.precision)
        import yaml

        from spine_ui._env import restore_threads

        cfg = yaml.safe_load(self._file(det.yaml).read_text())
        runner = TorchDetector(cfg, self.manifest.detector_config.classes, self._file(det.torch),
                               self.runtime.device)
        restore_threads(self.runtime.threads)
        return runner

    def _make_ood(self):
        from spine_ui.core.ood import FeatureOOD

        return FeatureOOD.load(self._file(self.manifest.ood["file"]))


_CACHE: dict[tuple[str, str, str, str, str], Bundle] = {}
_CACHE_LOCK = threading.Lock()


def open_bundle(path: str | Path, runtime: str = "auto", threads: int = 0, lime_precision: str = "fp32",
                decision_precision: str = "fp32") -> Bundle:
    """Open (or reuse) the bundle at ``path``. Raises BundleError / BundleIntegrityError.

    ``lime_precision`` (auto | bf16 | fp32) picks how LIME scores perturbations, ``decision_precision``
    (auto | fp32 | bf16) how triage and detection run (auto: bf16 only for a bundle that passed its bf16
    check, on a CPU with BF16; see ``bundle.precision``) and ``bundle.runtime``."""
    from spine_ui.bundle.precision import decision_precision_for

    if (runtime or "auto").lower() == "torch":
        decision_precision = "fp32"  # eager torch serves its own dtype
    decision_precision = decision_precision_for(path, decision_precision)
    info = choose_runtime(runtime, threads, lime_precision, decision_precision)
    key = (str(Path(path).resolve()), info.kind, info.device, info.lime_precision, info.precision)
    with _CACHE_LOCK:
        if key not in _CACHE:
            if not Path(path).is_dir():
                raise BundleError(f"No model bundle folder '{Path(path).name}'.")
            _CACHE[key] = Bundle(Path(path), info)
        return _CACHE[key]


def forget_bundles() -> None:
    """Drop cached bundles (tests, or after replacing a bundle on disk)."""
    with _CACHE_LOCK:
        _CACHE.clear()
