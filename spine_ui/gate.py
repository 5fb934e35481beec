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
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .config import GateConfig
from .imagestats import colorfulness  # noqa: F401  (re-exported: the gate's reference metric)
from .decode.study import StudyMeta
from .errors import BundleError

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


def _ordinal(p: float) -> str:
    """99.0 -> "99th", 95.5 -> "95.5th", 1 -> "1st"."""
    if not float(p).is_integer():
        return f"{p:g}th"
    n = int(p)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


_OOD_KEYS = ("mean", "scale", "components", "location", "precision", "threshold", "percentile", "n_train",
             "residual_scale")


class FeatureOOD:
    """Mahalanobis out-of-distribution test on standardised image features.

    ``fit`` standardises the training features, projects them on k = min(max_components, (M - 1) // 2, D)
    principal components (M: the images each fit sees, below) and estimates a Ledoit-Wolf shrunk covariance
    there (stable for small N). The distance adds the part of a sample outside that subspace (reconstruction
    error, scaled so a typical training residual weighs like the k in-subspace dimensions): without it a
    shift orthogonal to the kept components would go unseen.

    The threshold is a percentile of the training images' distances, each measured *out of sample*: the
    statistics are fitted on K - 1 folds of the training features and the held-out fold is scored (cross-
    fitting, K = ``folds``). In-sample distances are far smaller than a new image's when N is not much larger
    than D (the fitted subspace and residual scale are tuned to those very images), and a threshold taken
    from them would reject unseen radiographs of the training distribution.
    """

    def __init__(self, mean: np.ndarray, scale: np.ndarray, components: np.ndarray, location: np.ndarray,
                 precision: np.ndarray, threshold: float, percentile: float, n_train: int,
                 residual_scale: float = 0.0) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.components = np.asarray(components, dtype=np.float64)
        self.location = np.asarray(location, dtype=np.float64)
        self.precision = np.asarray(precision, dtype=np.float64)
        self.threshold = float(threshold)
        self.percentile = float(percentile)
        self.n_train = int(n_train)
        self.residual_scale = float(residual_scale)  # mean squared training residual; 0 disables the term
        self._validate()

    # ------------------------------------------------------------------ construction

    @classmethod
    def fit(cls, features: np.ndarray, percentile: float = 99.0, max_components: int = 64, folds: int = 5,
            seed: int = 0) -> "FeatureOOD":
        """Fit on N x D training features (N >= 2, all finite); threshold from cross-fitted distances
        (``folds`` < 2, or N < 3: from in-sample distances)."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
            raise ValueError(f"need an N x D feature matrix with N >= 2, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("training features contain NaN or infinity")
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        n = x.shape[0]
        folds = min(int(folds), n) if n >= 3 else 1
        parts = np.array_split(np.random.default_rng(seed).permutation(n), folds) if folds >= 2 else []
        n_fit = n - max((len(p) for p in parts), default=0)
        # the same k for the fold fits and the final fit, so their distances are on one scale
        k = int(max(1, min(max_components, (n_fit - 1) // 2, x.shape[1])))
        ood = cls._fit_statistics(x, k, percentile)
        if parts:
            held_out = np.empty(n)
            for part in parts:
                rest = np.ones(n, dtype=bool)
                rest[part] = False
                held_out[part] = cls._fit_statistics(x[rest], k, percentile).distance(x[part])
        else:
            held_out = ood.distance(x)
        ood.threshold = float(np.percentile(held_out, percentile))
        return ood

    @classmethod
    def _fit_statistics(cls, x: np.ndarray, k: int, percentile: float) -> "FeatureOOD":
        """Standardisation, k principal components, Ledoit-Wolf covariance and residual scale (threshold 0)."""
        from sklearn.covariance import LedoitWolf
        from sklearn.decomposition import PCA

        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale < 1e-12] = 1.0
        z = (x - mean) / scale
        pca = PCA(n_components=k, svd_solver="full").fit(z)
        # PCA centres internally; z is already centred, so the projection is z @ components.T.
        proj = z @ pca.components_.T
        lw = LedoitWolf().fit(proj)
        residual = z - proj @ pca.components_
        return cls(mean, scale, pca.components_, lw.location_, lw.precision_, 0.0, percentile, x.shape[0],
                   float(np.mean(np.sum(residual ** 2, axis=1))))

    def _validate(self) -> None:
        d = self.mean.shape[0] if self.mean.ndim == 1 else -1
        k = self.components.shape[0] if self.components.ndim == 2 else -1
        ok = (
            d > 0 and k > 0
            and self.scale.shape == (d,)
            and self.components.shape == (k, d)
            and self.location.shape == (k,)
            and self.precision.shape == (k, k)
            and all(np.isfinite(a).all() for a in (self.mean, self.scale, self.components, self.location,
                                                     self.precision))
            and math.isfinite(self.threshold)
            and math.isfinite(self.residual_scale) and self.residual_scale >= 0
            and self.n_train >= 0
        )
        if not ok:
            raise BundleError("The feature statistics in the model bundle are malformed.")

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    # ------------------------------------------------------------------ scoring

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distances (N,) of N x D (or a single D) features; non-finite rows score +inf."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected features with {self.n_features} columns, got shape {x.shape}")
        bad = ~np.isfinite(x).all(axis=1)
        x = np.where(np.isfinite(x), x, 0.0)
        z = (x - self.mean) / self.scale
        proj = z @ self.components.T
        diff = proj - self.location
        d2 = np.einsum("ij,jk,ik->i", diff, self.precision, diff)
        if self.residual_scale > 0:
            residual = z - proj @ self.components
            d2 = d2 + self.n_components * np.sum(residual ** 2, axis=1) / self.residual_scale
        dist = np.sqrt(np.maximum(d2, 0.0))
        dist[bad] = np.inf
        return dist

    def check(self, features: np.ndarray) -> LayerResult:
        """Feature layer verdict for one image's features (1 x D or D)."""
        x = np.asarray(features)
        if x.ndim == 2 and x.shape[0] != 1:
            raise ValueError(f"check() takes the features of one image, got shape {x.shape}")
        dist = float(self.distance(x)[0])
        where = f"at the {_ordinal(self.percentile)} percentile"
        if not dist <= self.threshold:
            dist_text = "undefined" if not math.isfinite(dist) else f"{dist:.1f}"
            return _rejected("features", f"Image features are far from the training radiographs "
                                         f"(distance {dist_text} > threshold {self.threshold:.1f} {where}).")
        return _passed("features", f"Image features are close to the training radiographs "
                                   f"(distance {dist:.1f} <= threshold {self.threshold:.1f} {where} "
                                   f"of {self.n_train} training images).")

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """Write the statistics as a numpy-only .npz (loadable with ``allow_pickle=False``)."""
        path = Path(path)
        arrays = {
            "mean": self.mean, "scale": self.scale, "components": self.components,
            "location": self.location, "precision": self.precision,
            "threshold": np.float64(self.threshold), "percentile": np.float64(self.percentile),
            "n_train": np.int64(self.n_train), "residual_scale": np.float64(self.residual_scale),
        }
        with open(path, "wb") as fh:  # a file handle keeps the exact name (no ".npz" appended)
            np.savez(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "FeatureOOD":
        """Read statistics written by ``save``; raises ``BundleError`` if the file is unusable."""
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                missing = [k for k in _OOD_KEYS if k not in data.files]
                if missing:
                    raise BundleError("The feature statistics in the model bundle are incomplete.")
                arrays = {k: data[k] for k in _OOD_KEYS}
        except (OSError, ValueError) as exc:
            raise BundleError("The feature statistics in the model bundle could not be read.") from exc
        return cls(
            arrays["mean"], arrays["scale"], arrays["components"], arrays["location"], arrays["precision"],
            float(arrays["threshold"]), float(arrays["percentile"]), int(arrays["n_train"]),
            float(arrays["residual_scale"]),
        )


def check_features(features: np.ndarray | None, ood: FeatureOOD | None) -> LayerResult:
    """Feature layer; skipped when the bundle has no statistics or no features were computed."""
    if ood is None:
        return _skipped("features", "no feature statistics in this model bundle (untrained)")
    if features is None:
        return _skipped("features", "no image features were computed")
    return ood.check(features)


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
