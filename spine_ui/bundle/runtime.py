"""Model runners behind one interface, so triage/detect/explain never know which runtime serves them.

- ``onnx``: onnxruntime CPU (threads = cores, full graph optimisation) - the default without a GPU.
- ``torch``: eager torch, on CUDA when present (the default there), else CPU.
``SPINE_RUNTIME=onnx|torch`` forces one.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from spine_ui.errors import BundleError


class ClassifierRunner(Protocol):
    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """N x 3 x S x S float32 -> (logits [N], pre-pool features [N, C, h, w])."""


class DetectorRunner(Protocol):
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """N x 3 x H x W float32 in [0, 1] -> raw predictions [N, 4 + nc, anchors]."""


@dataclass(frozen=True)
class RuntimeInfo:
    kind: str  # "onnx" | "torch"
    device: str  # "cpu" | "cuda"
    threads: int

    @property
    def label(self) -> str:
        return "GPU torch (CUDA)" if self.device == "cuda" else (
            "CPU onnxruntime" if self.kind == "onnx" else "CPU torch")


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def choose_runtime(requested: str = "auto", threads: int = 0) -> RuntimeInfo:
    requested = (requested or "auto").lower()
    if requested not in ("auto", "onnx", "torch"):
        raise BundleError(f"Unknown runtime {requested!r}: use onnx, torch or auto.")
    threads = threads or os.cpu_count() or 1
    gpu = cuda_available()
    if requested == "onnx" or (requested == "auto" and not gpu):
        return RuntimeInfo("onnx", "cpu", threads)
    return RuntimeInfo("torch", "cuda" if gpu else "cpu", threads)


# --- onnxruntime -----------------------------------------------------------------------------------------

def onnx_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class OnnxClassifier:
    def __init__(self, path: Path, threads: int) -> None:
        self.session = onnx_session(path, threads)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, feats = self.session.run(["logit", "features"], {self.input_name: np.ascontiguousarray(batch)})
        return logits.reshape(-1), feats


class OnnxDetector:
    def __init__(self, path: Path, threads: int) -> None:
        self.session = onnx_session(path, threads)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch)})[0]


# --- torch -----------------------------------------------------------------------------------------------

def load_state_dict(path: Path) -> dict:
    """Tensors only: ``weights_only=True`` so a bundle can never run code on load."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # e.g. a pickle that asks for a callable: refused by torch, reported plainly
        raise BundleError(f"Bundle file '{Path(path).name}' could not be loaded safely (not a plain tensor "
                          "state dict); refusing it.") from exc


class TorchClassifier:
    def __init__(self, arch: str, weights: Path, device: str) -> None:
        import torch

        from spine_ui.bundle.architectures import ClassifierWithFeatures, build_classifier

        model = build_classifier(arch)
        model.load_state_dict(load_state_dict(weights))
        self.model = model.eval().to(device)
        self.wrapped = ClassifierWithFeatures(self.model).eval()
        self.device = device
        self._torch = torch

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            logit, feats = self.wrapped(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device))
        return logit.float().cpu().numpy(), feats.float().cpu().numpy()


class TorchDetector:
    def __init__(self, model_yaml: dict, names: tuple[str, ...], weights: Path, device: str) -> None:
        import torch

        from spine_ui.bundle.architectures import build_detector

        model = build_detector(model_yaml, names)
        model.load_state_dict(load_state_dict(weights))
        self.model = model.eval().to(device)
        self.device = device
        self._torch = torch

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device))
        out = out[0] if isinstance(out, (list, tuple)) else out
        return out.float().cpu().numpy()


class Lazy:
    """Build a value once, on first use, under a lock (bundles are shared across request threads)."""

    def __init__(self, factory) -> None:
        self._factory = factory
        self._value = None
        self._lock = threading.Lock()

    def get(self):
        if self._value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._factory()
        return self._value
