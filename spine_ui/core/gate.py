"""Non-spine input rejection ("outlier gate").

Three layers run in order and the first rejection stops the gate:

1. ``tags``: DICOM Modality / BodyPartExamined (skipped for PNG/JPEG/TIFF uploads);
2. ``image``: cheap image statistics (colour photograph, implausible aspect ratio, blank image,
   black-and-white document or drawing);
3. ``features``: Mahalanobis distance of the model's image features from the training radiographs
   (``FeatureOOD``; skipped when the bundle carries no feature statistics).

Every layer returns a ``LayerResult`` whose ``detail`` is a plain sentence a radiologist can read.
The image rules are deliberately loose: any real grayscale spine radiograph (AP or lateral, any
region or size, with saturated metal implants) must pass; the feature layer catches the rest.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from spine_ui.config import GateConfig
from spine_ui.core.imagestats import colorfulness  # noqa: F401  (re-exported: the gate's reference metric)
from spine_ui.core.decode.study import StudyMeta
from spine_ui.core.ood import FeatureOOD, ordinal

Status = Literal["passed", "rejected", "skipped"]

_DEFAULT_CFG = GateConfig()
_STATS_MAX_PIXELS = 1_000_000  # image statistics are computed on a strided subsample of this size


@dataclass(frozen=True)
class GateExtras:
    """Gate settings beyond ``GateConfig`` (candidates to merge into it)."""

    #: Minimum share of pixels in the mid-tones (inner part of the p1..p99 range). Radiographs are
    #: continuous-tone; scanned reports, screenshots of text and line drawings are almost binary.
    min_midtone_fraction: float = 0.10
    #: Width of the excluded band at each end of the p1..p99 range when counting mid-tones.
    midtone_margin: float = 0.05
    #: Extra spine-related BodyPartExamined fragments (matched like ``GateConfig.spine_body_parts``).
    extra_spine_body_parts: tuple[str, ...] = ("SPINAL", "VERTEBR", "LUMBO", "SACRAL", "THORAX", "SCOLIOSIS")
    #: BodyPartExamined values that say nothing; treated as absent instead of "not the spine".
    placeholder_body_parts: tuple[str, ...] = ("", "OTHER", "UNKNOWN", "NONE", "NA", "UNSPECIFIED", "ANY")


DEFAULT_EXTRAS = GateExtras()


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class LayerResult:
    """Outcome of one gate layer."""

    name: str
    status: Status
    detail: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class GateResult:
    """Outcome of the whole gate; ``reason`` is the first rejecting layer's detail (None if accepted)."""

    accepted: bool
    reason: str | None
    layers: tuple[LayerResult, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "reason": self.reason,
            "layers": [layer.to_dict() for layer in self.layers],
        }


def _passed(name: str, detail: str) -> LayerResult:
    return LayerResult(name, "passed", detail)


def _rejected(name: str, detail: str) -> LayerResult:
    return LayerResult(name, "rejected", detail)


def _skipped(name: str, detail: str) -> LayerResult:
    return LayerResult(name, "skipped", detail)


# --------------------------------------------------------------------------- colourfulness


# --------------------------------------------------------------------------- layer 1: DICOM tags

_MODALITY_NAMES = {
    "CT": "a CT image",
    "MR": "an MRI image",
    "US": "an ultrasound image",
    "NM": "a nuclear-medicine image",
    "PT": "a PET image",
    "ES": "an endoscopy image",
    "XC": "a camera photograph",
    "OP": "an ophthalmic photograph",
    "SM": "a microscopy slide image",
    "SR": "a structured report",
    "DOC": "a document",
}


def _norm(text: str) -> str:
    """Upper-case with everything but letters and digits removed ("L-Spine" -> "LSPINE")."""
    return re.sub(r"[^A-Z0-9]", "", text.upper())


def _clean(text: str, limit: int = 64) -> str:
    """A tag value safe to echo in a message (printable, trimmed, bounded)."""
    text = "".join(ch for ch in text if ch.isprintable()).strip()
    return text[:limit]


def is_spine_body_part(body_part: str, cfg: GateConfig = _DEFAULT_CFG,
                       extras: GateExtras = DEFAULT_EXTRAS) -> bool:
    """Tolerant spine test: any spine fragment occurs in the normalised value ("SPINE LUMBAR", "C SPINE")."""
    value = _norm(body_part)
    fragments = (*cfg.spine_body_parts, *extras.extra_spine_body_parts)
    return any(_norm(f) and _norm(f) in value for f in fragments)


def _modality_verdict(modality: str | None, cfg: GateConfig) -> LayerResult | None:
    """A rejection if the modality is present and not a plain radiograph, else None."""
    code = _clean(modality or "").upper()
    if not code or code in {m.upper() for m in cfg.allowed_modalities}:
        return None
    desc = _MODALITY_NAMES.get(code, "not a plain radiograph")
    return _rejected("tags", f"This is {desc} (Modality {code}); only plain radiographs (X-ray) are supported.")


def check_tags(meta: StudyMeta, cfg: GateConfig = _DEFAULT_CFG,
               extras: GateExtras = DEFAULT_EXTRAS) -> LayerResult:
    """Reject non-radiograph modalities and non-spine body parts; absent tags pass."""
    if meta.source != "dicom":
        return _skipped("tags", "no DICOM tags")
    verdict = _modality_verdict(meta.modality, cfg)
    if verdict is not None:
        return verdict
    body = _clean(meta.body_part or "")
    body_known = _norm(body) not in {_norm(p) for p in extras.placeholder_body_parts}
    if body_known and not is_spine_body_part(body, cfg, extras):
        return _rejected("tags", f"Body part '{body}' is not the spine.")
    modality = _clean(meta.modality or "").upper()
    parts = [f"Modality {modality}" if modality else "Modality tag absent"]
    if body_known:
        parts.append(f"body part '{body}'")
    elif body:
        parts.append(f"body part '{body}' unspecific (ignored)")
    else:
        parts.append("BodyPartExamined tag absent")
    return _passed("tags", "; ".join(parts) + ".")


# --------------------------------------------------------------------------- layer 2: image statistics


def _as_gray(pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """2-D float image plus the colourfulness of the input when it still has colour channels."""
    arr = np.asarray(pixels)
    if arr.ndim == 3 and arr.shape[2] >= 3:
        gray = arr[..., :3].astype(np.float32).mean(axis=2)
        if np.issubdtype(arr.dtype, np.integer):
            gray /= float(np.iinfo(arr.dtype).max)
        return gray, colorfulness(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"expected an H x W image, got shape {arr.shape}")
    return arr, 0.0


def _subsample(gray: np.ndarray, max_pixels: int = _STATS_MAX_PIXELS) -> np.ndarray:
    """Finite values of a strided subsample (statistics do not need every pixel of a 3000 px image)."""
    step = max(1, math.ceil(math.sqrt(gray.size / max_pixels)))
    vals = np.asarray(gray[::step, ::step], dtype=np.float32).ravel()
    return vals[np.isfinite(vals)]


def _ratio_text(short: int, long: int) -> str:
    ratio = long / max(short, 1)
    text = f"{ratio:.1f}".rstrip("0").rstrip(".")
    return f"1:{text}"


def _check_colour(colour: float, cfg: GateConfig) -> str | None:
    if colour > cfg.max_colorfulness:
        return f"This looks like a colour photograph, not a radiograph (colourfulness {colour:.0f})."
    return None


def _check_aspect(shape: tuple[int, int], cfg: GateConfig) -> str | None:
    short, long = sorted(shape)
    if long == 0 or short / long < cfg.min_aspect:
        return f"Aspect ratio {_ratio_text(short, long)} is implausible for a radiograph."
    return None


def _check_contrast(vals: np.ndarray, cfg: GateConfig) -> str | None:
    if vals.size == 0:
        return "The image is blank or has almost no contrast."
    p1, p99 = np.percentile(vals, [1.0, 99.0])
    if float(p99 - p1) < cfg.min_dynamic_range or float(vals.std()) < cfg.min_std:
        return "The image is blank or has almost no contrast."
    return None


def midtone_fraction(vals: np.ndarray, margin: float = DEFAULT_EXTRAS.midtone_margin) -> float:
    """Share of values strictly inside the p1..p99 range shrunk by ``margin`` of its width at each end."""
    if vals.size == 0:
        return 0.0
    p1, p99 = (float(v) for v in np.percentile(vals, [1.0, 99.0]))
    width = p99 - p1
    if width <= 0:
        return 0.0
    lo, hi = p1 + margin * width, p99 - margin * width
    return float(np.count_nonzero((vals > lo) & (vals < hi)) / vals.size)


def _check_midtones(vals: np.ndarray, extras: GateExtras) -> str | None:
    frac = midtone_fraction(vals, extras.midtone_margin)
    if frac < extras.min_midtone_fraction:
        return (f"The image is almost purely black and white ({frac:.0%} mid-tones); it looks like a "
                "document, drawing or screenshot, not a radiograph.")
    return None


def check_image(pixels: np.ndarray, meta: StudyMeta, cfg: GateConfig = _DEFAULT_CFG,
                extras: GateExtras = DEFAULT_EXTRAS) -> LayerResult:
    """Colour photograph, aspect ratio, blank / low-contrast and black-and-white checks.

    ``pixels``: float32 H x W in [0, 1] (an H x W x 3 array is also accepted; its colour is measured).
    """
    gray, own_colour = _as_gray(pixels)
    colour = max(float(meta.colorfulness or 0.0), own_colour)
    reason = _check_colour(colour, cfg) or _check_aspect((gray.shape[0], gray.shape[1]), cfg)
    if reason is None:
        vals = _subsample(gray)
        reason = _check_contrast(vals, cfg) or _check_midtones(vals, extras)
    if reason is not None:
        return _rejected("image", reason)
    h, w = gray.shape
    return _passed("image", f"Grayscale {w}x{h} image with plausible contrast (colourfulness {colour:.0f}).")


# --------------------------------------------------------------------------- layer 3: feature space


def check_features(features: np.ndarray | None, ood: FeatureOOD | None) -> LayerResult:
    """Feature layer for one image's features (1 x D or D); skipped when the bundle has no statistics or no
    features were computed."""
    if ood is None:
        return _skipped("features", "no feature statistics in this model bundle (untrained)")
    if features is None:
        return _skipped("features", "no image features were computed")
    x = np.asarray(features)
    if x.ndim == 2 and x.shape[0] != 1:
        raise ValueError(f"check_features() takes the features of one image, got shape {x.shape}")
    dist = float(ood.distance(x)[0])
    where = f"at the {ordinal(ood.percentile)} percentile"
    if not dist <= ood.threshold:
        dist_text = "undefined" if not math.isfinite(dist) else f"{dist:.1f}"
        return _rejected("features", f"Image features are far from the training radiographs "
                                     f"(distance {dist_text} > threshold {ood.threshold:.1f} {where}).")
    return _passed("features", f"Image features are close to the training radiographs "
                               f"(distance {dist:.1f} <= threshold {ood.threshold:.1f} {where} "
                               f"of {ood.n_train} training images).")


# --------------------------------------------------------------------------- the gate

_LAYER_NAMES = ("tags", "image", "features")


def run_gate(study_pixels: np.ndarray, meta: StudyMeta, cfg: GateConfig = _DEFAULT_CFG,
             features: np.ndarray | None = None, ood: FeatureOOD | None = None,
             extras: GateExtras = DEFAULT_EXTRAS) -> GateResult:
    """Run tags -> image -> features, stopping at the first rejection (later layers: skipped, "not run")."""
    steps = (
        lambda: check_tags(meta, cfg, extras),
        lambda: check_image(study_pixels, meta, cfg, extras),
        lambda: check_features(features, ood),
    )
    layers: list[LayerResult] = []
    reason: str | None = None
    for name, step in zip(_LAYER_NAMES, steps):
        layer = _skipped(name, "not run") if reason is not None else step()
        if layer.status == "rejected":
            reason = layer.detail
        layers.append(layer)
    return GateResult(accepted=reason is None, reason=reason, layers=tuple(layers))
