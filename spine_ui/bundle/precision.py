"""May this bundle serve its decision path at bf16? A recorded comparison against fp32, per bundle.

The decision path (triage, the feature-space gate layer, detection) runs fp32 unless the bundle's manifest
holds a passed bf16 check: on the studies checked, the ensemble probability at bf16 (OpenVINO) moved by less
than :data:`TOLERANCE` from fp32 (onnxruntime), no verdict flipped and no feature-gate decision flipped.
``SPINE_DECISION_PRECISION=auto`` (the default) then serves bf16 on CPUs that have it; ``fp32`` / ``bf16``
force either. ``python -m spine_ui bundle check-precision BUNDLE`` runs the check and records it; training
runs it when it exports a bundle. The untrained bundle does not pass (its random weights move P by ~0.005).
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from spine_ui.errors import BundleError

TOLERANCE = 0.005  # the largest |dP| (triage probability) a reduced-precision decision path may cause
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class PrecisionCheck:
    """One comparison of a reduced-precision decision path against fp32 on ``studies`` images."""

    precision: str  # "bf16"
    studies: int
    max_abs_dp: float
    median_abs_dp: float
    verdict_flips: int
    gate_flips: int  # feature-space gate layer decisions that differ (0 without statistics)
    boxes_fp32: int  # detector boxes at fp32 over all studies
    boxes_matched: int  # of those, boxes with a same-class box at the reduced precision, IoU >= 0.5
    max_abs_dconf: float  # largest confidence change among matched boxes
    source: str  # what was checked, e.g. "20 synthetic phantoms" or "12 images from a folder"
    runtime: str  # e.g. "openvino 2026.4.1 vs onnxruntime 1.24.1"
    checked: str  # ISO time, UTC
    tolerance: float = TOLERANCE

    @property
    def passed(self) -> bool:
        return (self.studies > 0 and self.max_abs_dp < self.tolerance and self.verdict_flips == 0
                and self.gate_flips == 0)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PrecisionCheck":
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in fields})

    def line(self) -> str:
        return (f"{self.precision} vs fp32 on {self.source}: max |dP| {self.max_abs_dp:.5f} (median "
                f"{self.median_abs_dp:.5f}, allowed < {self.tolerance}), verdict flips {self.verdict_flips}, "
                f"gate flips {self.gate_flips}, boxes matched {self.boxes_matched}/{self.boxes_fp32} "
                f"(max |d conf| {self.max_abs_dconf:.4f}) -> {'PASSED' if self.passed else 'not passed'}")


def passed_check(manifest: Any, precision: str = "bf16") -> PrecisionCheck | None:
    """The manifest's passed check for ``precision``, if any."""
    for check in getattr(manifest, "precision_checks", ()) or ():
        if check.precision == precision and check.passed:
            return check
    return None


def decision_precision_for(path: str | Path, requested: str) -> str:
    """``auto`` -> "bf16" when the CPU has BF16 and the bundle at ``path`` passed its bf16 check, else "fp32"."""
    from spine_ui.bundle.manifest import read_manifest
    from spine_ui.bundle.runtime import cpu_has_bf16, cuda_available

    requested = (requested or "auto").lower()
    if requested not in PRECISIONS:
        raise BundleError(f"Unknown decision precision {requested!r}: use auto, fp32 or bf16.")
    if requested != "auto":
        return requested
    if not Path(path, "manifest.json").is_file() or cuda_available():
        return "fp32"
    return "bf16" if passed_check(read_manifest(Path(path))) is not None and cpu_has_bf16() else "fp32"


def phantoms(n: int, height: int = 1024, seed: int = 100) -> list[np.ndarray]:
    """``n`` synthetic spine radiographs, lesion sets cycling through normal and each lesion type."""
    from spine_ui.synth.phantom import render_spine

    sets = (["Osteophytes"], ["Surgical implant"], ["Disc space narrowing", "Vertebral collapse"], [],
            ["Spondylolysthesis", "Osteophytes"], ["Foraminal stenosis"], [], ["Other lesions"])
    return [render_spine(np.random.default_rng(seed + i), list(sets[i % len(sets)]), height=height)[0]
            for i in range(n)]


def folder_images(folder: str | Path, limit: int = 50) -> list[np.ndarray]:
    """Decoded pixels of up to ``limit`` readable images (DICOM, PNG, JPEG, ...) under ``folder``."""
    from spine_ui.core.decode import decode_file
    from spine_ui.errors import InputError

    out = []
    for p in sorted(Path(folder).rglob("*")):
        if len(out) >= limit:
            break
        if p.is_file():
            try:
                out.append(decode_file(p).pixels)
            except InputError:
                continue
    if not out:
        raise BundleError(f"No readable images under '{Path(folder).name}'.")
    return out


def _matched(a: Sequence[Any], b: Sequence[Any]) -> tuple[int, float]:
    """Boxes of ``a`` with a same-class box in ``b`` at IoU >= 0.5, and the largest confidence change."""
    import torch
    from torchvision.ops import box_iou

    if not a or not b:
        return 0, 0.0
    iou = box_iou(torch.tensor([l.box for l in a]), torch.tensor([l.box for l in b])).numpy()
    matched, dconf = 0, 0.0
    for i, la in enumerate(a):
        same = [j for j, lb in enumerate(b) if lb.class_id == la.class_id and iou[i, j] >= 0.5]
        if same:
            j = max(same, key=lambda j: iou[i, j])
            matched += 1
            dconf = max(dconf, abs(la.confidence - b[j].confidence))
    return matched, dconf


def run_check(path: str | Path, images: Iterable[np.ndarray], source: str, precision: str = "bf16",
              threads: int = 0, enhanced: bool = False) -> PrecisionCheck:
    """Serve ``images`` through the decision path at fp32 (onnxruntime) and at ``precision`` (OpenVINO) and
    compare: triage probability, verdict, feature-gate decision, detector boxes. ``enhanced``: the images are
    working images already (CLAHE applied, e.g. the training cache's)."""
    import onnxruntime
    import openvino

    from spine_ui.bundle.runtime import cpu_has_bf16
    from spine_ui.bundle.store import open_bundle
    from spine_ui.core.detect import run_detection
    from spine_ui.core.gate import check_features
    from spine_ui.core.preprocess import enhance
    from spine_ui.core.triage import run_triage

    if precision != "bf16":
        raise BundleError(f"Only the bf16 decision path can be checked, not {precision!r}.")
    if not cpu_has_bf16():  # OpenVINO would quietly run f32: a check here would test nothing
        raise BundleError("This CPU has no BF16 support, so a bf16 check cannot be run here.")
    ref = open_bundle(path, "onnx", threads, lime_precision="fp32", decision_precision="fp32")
    low = open_bundle(path, "openvino", threads, lime_precision="fp32", decision_precision=precision)
    dps, flips, gate_flips, boxes, matched, dconf = [], 0, 0, 0, 0, 0.0
    for img in images:
        e = img if enhanced else enhance(img, ref.manifest.preprocess)
        a, b = run_triage(e, ref), run_triage(e, low)
        dps.append(abs(a.probability - b.probability))
        flips += int(a.abnormal != b.abnormal)
        if ref.ood() is not None:
            ga = check_features(a.pooled_features[None, :], ref.ood()).status
            gb = check_features(b.pooled_features[None, :], low.ood()).status
            gate_flips += int(ga != gb)
        if ref.manifest.detector:
            da, db = run_detection(e, img.shape[:2], ref), run_detection(e, img.shape[:2], low)
            m, d = _matched(da.lesions, db.lesions)
            boxes, matched, dconf = boxes + len(da), matched + m, max(dconf, d)
    if not dps:
        raise BundleError("The precision check needs at least one image.")
    return PrecisionCheck(precision, len(dps), float(max(dps)), float(np.median(dps)), flips, gate_flips, boxes,
                          matched, float(dconf), source,
                          f"openvino {openvino.get_version()} on {_cpu_name()} vs onnxruntime "
                          f"{onnxruntime.__version__}",
                          _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def _cpu_name() -> str:
    import openvino as ov

    try:
        return str(ov.Core().get_property("CPU", "FULL_DEVICE_NAME")).strip()
    except Exception:  # a name is only for the record
        return "CPU"


def record_check(path: str | Path, check: PrecisionCheck) -> None:
    """Write ``check`` into the bundle's manifest (replacing an earlier one for the same precision). The
    bundle is verified first and its file hashes are kept as they are, so a modified file is never blessed."""
    from spine_ui._io import atomic_write_json
    from spine_ui.bundle.manifest import MANIFEST, read_manifest, verify

    path = Path(path)
    manifest = read_manifest(path)
    verify(path, manifest)
    manifest.precision_checks = [c for c in manifest.precision_checks if c.precision != check.precision] + [check]
    atomic_write_json(path / MANIFEST, manifest.to_json(), sort_keys=False)
