"""Model runners behind one interface, so triage/detect/explain never know which runtime serves them.

- ``onnx``: onnxruntime CPU (threads = cores, full graph optimisation) - the default without a GPU.
- ``openvino``: OpenVINO CPU on the same ONNX files, fp32 or bf16 (``INFERENCE_PRECISION_HINT``).
- ``torch``: eager torch, on CUDA when present (the default there), else CPU.
``SPINE_RUNTIME=onnx|openvino|torch`` forces one for the decision path (triage, detection, Grad-CAM).

LIME's perturbation scoring has its own precision (``SPINE_LIME_PRECISION=auto|bf16|fp32``): ``auto`` is
bf16 through OpenVINO on a CPU that reports BF16 (AVX512-BF16 / AMX), else fp32 on the serving runtime.
The decision path (triage, detection) is fp32 unless the bundle passed its bf16 check (``bundle/precision.py``;
``SPINE_DECISION_PRECISION=auto``, the default) or ``SPINE_DECISION_PRECISION=bf16`` forces it.
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
    kind: str  # "onnx" | "openvino" | "torch"
    device: str  # "cpu" | "cuda"
    threads: int
    lime_precision: str = "fp32"  # "bf16": LIME scored by OpenVINO at bf16; "fp32": on ``kind``
    precision: str = "fp32"  # the decision path's (triage, detection): "bf16" only on OpenVINO, opt-in

    @property
    def label(self) -> str:
        if self.device == "cuda":
            return "GPU torch (CUDA)"
        name = {"onnx": "CPU onnxruntime", "openvino": "CPU OpenVINO"}.get(self.kind, "CPU torch")
        return f"{name} bf16" if self.precision == "bf16" else name


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def cpu_has_bf16() -> bool:
    """True when OpenVINO is installed and reports BF16 among the CPU's optimisation capabilities."""
    try:
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # no openvino, or no CPU plugin: fp32
        return False


def choose_lime_precision(requested: str, device: str) -> str:
    requested = (requested or "auto").lower()
    if requested not in ("auto", "bf16", "fp32"):
        raise BundleError(f"Unknown LIME precision {requested!r}: use auto, bf16 or fp32.")
    if device == "cuda" or requested == "fp32":
        return "fp32"
    if requested == "bf16" or cpu_has_bf16():
        return "bf16"
    return "fp32"


def choose_runtime(requested: str = "auto", threads: int = 0, lime_precision: str = "fp32",
                   decision_precision: str = "fp32") -> RuntimeInfo:
    """The serving runtime (``auto``: torch on CUDA, else onnx) and LIME's precision (``auto``: bf16 where the
    CPU has it). The default ``fp32`` keeps LIME on the serving runtime, as before. ``decision_precision``
    ``bf16`` serves triage and detection with OpenVINO at bf16 on the CPU (opt-in)."""
    if (decision_precision or "fp32").lower() not in ("fp32", "bf16"):
        raise BundleError(f"Unknown decision precision {decision_precision!r}: use fp32 or bf16.")
    requested = (requested or "auto").lower()
    if requested not in ("auto", *CLASSIFIER_RUNNERS, "torch"):
        raise BundleError(f"Unknown runtime {requested!r}: use onnx, openvino, torch or auto.")
    threads = threads or os.cpu_count() or 1
    gpu = cuda_available()
    if requested in CLASSIFIER_RUNNERS or (requested == "auto" and not gpu):
        kind = "onnx" if requested == "auto" else requested
        if decision_precision.lower() == "bf16":
            return RuntimeInfo("openvino", "cpu", threads, choose_lime_precision(lime_precision, "cpu"), "bf16")
        return RuntimeInfo(kind, "cpu", threads, choose_lime_precision(lime_precision, "cpu"))
    device = "cuda" if gpu else "cpu"
    return RuntimeInfo("torch", device, threads, choose_lime_precision(lime_precision, device))


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


# --- OpenVINO --------------------------------------------------------------------------------------------

def openvino_model(path: Path, threads: int, precision: str = "fp32"):
    """Compile an ONNX file for the CPU: one stream, ``threads`` inference threads, f32 or bf16 arithmetic."""
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
              "INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    return core.compile_model(core.read_model(str(path)), "CPU", config)


class OpenVinoClassifier:
    """Same contract as :class:`OnnxClassifier`; one infer request, serialised by a lock."""

    def __init__(self, path: Path, threads: int, precision: str = "fp32") -> None:
        self.precision = precision
        self.compiled = openvino_model(path, threads, precision)
        self._request = self.compiled.create_infer_request()
        self._logit = self.compiled.output("logit")
        self._features = self.compiled.output("features")
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            out = self._request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
            return np.array(out[self._logit], np.float32).reshape(-1), np.array(out[self._features], np.float32)


class OpenVinoDetector:
    def __init__(self, path: Path, threads: int, precision: str = "fp32") -> None:
        self.compiled = openvino_model(path, threads, precision)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            out = self._request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
            return np.array(out[self.compiled.output(0)], np.float32)


#: Runtimes that serve a bundle's ONNX files: kind -> (classifier factory, detector factory), each
#: called with (onnx path, threads, precision). Adding a runtime is adding an entry here.
CLASSIFIER_RUNNERS = {
    "onnx": lambda path, threads, precision: OnnxClassifier(path, threads),
    "openvino": lambda path, threads, precision: OpenVinoClassifier(path, threads, precision),
}
DETECTOR_RUNNERS = {
    "onnx": lambda path, threads, precision: OnnxDetector(path, threads),
    "openvino": lambda path, threads, precision: OpenVinoDetector(path, threads, precision),
}


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
