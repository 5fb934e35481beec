"""The viewer's display copy of a study: its original values (downsampled, uint16) with window presets.

``make_display`` keeps, per analysed study, the stored values after the Modality LUT (DICOM) or the gray samples
(raster) at most ``ViewerConfig.max_side`` pixels on the long side, so window/level works on the original data
after the full-resolution pixels are released. ``render_view`` applies a window and draws overlays server-side
(PDF report, screenshots, tests); the browser viewer does the same from ``client_payload``.

Window semantics (linear, in modality units): values at or below ``center - width / 2`` are black, at or above
``center + width / 2`` white; MONOCHROME1 studies are shown inverted (bone bright).
"""
from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from spine_ui.config import ViewerConfig
from spine_ui.core.decode.study import Study
from spine_ui.core.detect import Lesion
from spine_ui.core.overlays import draw_lesions, gray_to_rgb, heatmap_overlay, lime_overlay
from spine_ui.core.preprocess import shrink_to

_U16 = 65535
AUTO_RANGE = (0.5, 99.5)
HIGH_CONTRAST_RANGE = (5.0, 95.0)


@dataclass(frozen=True)
class WindowPreset:
    """A named window in modality units."""

    name: str
    center: float
    width: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "center": round(self.center, 4), "width": round(self.width, 4)}


@dataclass(frozen=True)
class DisplayImage:
    """``values`` (uint16, h x w) map to modality units as ``offset + slope * values``. ``presets[0]`` is the
    window the analysis used (or its nearest linear equivalent)."""

    values: np.ndarray
    offset: float
    slope: float
    presets: tuple[WindowPreset, ...]
    invert: bool
    original_shape: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.values.shape[0]), int(self.values.shape[1])

    @property
    def value_range(self) -> tuple[float, float]:
        """Smallest and largest modality value of the copy."""
        return self.offset, self.offset + self.slope * float(self.values.max())

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes)


def make_display(study: Study, cfg: ViewerConfig = ViewerConfig()) -> DisplayImage | None:
    """The display copy of ``study`` (None when the decoder kept no original values)."""
    if study.original is None or study.original.size == 0:
        return None
    values = np.asarray(study.original)
    small = shrink_to(values.astype(np.float32, copy=False), cfg.max_side)
    lo, hi = float(small.min()), float(small.max())
    integral = values.dtype.kind in "uib" or bool(np.all(small == np.round(small)))
    if integral and hi - lo <= _U16:
        offset, slope = lo, 1.0
    else:
        offset, slope = lo, (hi - lo) / _U16 if hi > lo else 1.0
    u16 = np.clip(np.rint((small - offset) / slope), 0, _U16).astype(np.uint16)
    shape = (int(values.shape[0]), int(values.shape[1]))
    disp = DisplayImage(u16, offset, slope, (), study.meta.photometric == "MONOCHROME1", shape)
    return DisplayImage(u16, offset, slope, _presets(disp, study), disp.invert, shape)


def _percentile_window(disp: DisplayImage, lo_p: float, hi_p: float) -> tuple[float, float]:
    step = max(1, int(np.sqrt(disp.values.size / 250_000)))
    lo, hi = np.percentile(disp.values[::step, ::step], (lo_p, hi_p))
    lo, hi = disp.offset + disp.slope * float(lo), disp.offset + disp.slope * float(hi)
    if hi <= lo:
        lo, hi = disp.value_range
    return (lo + hi) / 2.0, max(hi - lo, disp.slope)


def _presets(disp: DisplayImage, study: Study) -> tuple[WindowPreset, ...]:
    """As analysed first, then the file's own windows, then full range, auto and high contrast."""
    meta = study.meta
    lo, hi = disp.value_range
    full = WindowPreset("Full range", (lo + hi) / 2.0, max(hi - lo, disp.slope))
    auto = WindowPreset("Auto (0.5-99.5 %)", *_percentile_window(disp, *AUTO_RANGE))
    contrast = WindowPreset("High contrast (5-95 %)", *_percentile_window(disp, *HIGH_CONTRAST_RANGE))
    files = [WindowPreset(f"File: {name}" if name else f"File window {i + 1}", c, w)
             for i, (c, w, name) in enumerate(meta.windows)]
    window_used = any(n.startswith("window ") for n in meta.notes)
    if files and window_used:
        first = WindowPreset("As analysed (file window)", files[0].center, files[0].width)
    elif meta.source == "raster" and meta.bits_stored:
        top = float(2 ** meta.bits_stored - 1)
        first = WindowPreset("As analysed (full bit range)", top / 2.0, top)
    elif meta.source == "raster":
        first = WindowPreset("As analysed (full range)", full.center, full.width)
    else:
        first = WindowPreset("As analysed (auto 0.5-99.5 %)", auto.center, auto.width)
    out: list[WindowPreset] = []
    for p in (first, *files, full, auto, contrast):
        if not any(abs(p.center - q.center) < 1e-6 and abs(p.width - q.width) < 1e-6 for q in out):
            out.append(p)
    return tuple(out)


# ---- rendering -------------------------------------------------------------------------------------

def window_lut(disp: DisplayImage, center: float, width: float) -> np.ndarray:
    """uint8 lookup table over every uint16 value of ``disp`` for the window (center, width)."""
    width = max(float(width), 1e-9)
    modality = disp.offset + disp.slope * np.arange(_U16 + 1, dtype=np.float64)
    y = np.clip((modality - (center - width / 2.0)) / width, 0.0, 1.0)
    if disp.invert:
        y = 1.0 - y
    return np.rint(y * 255.0).astype(np.uint8)


def apply_window(disp: DisplayImage, center: float, width: float) -> np.ndarray:
    """The display copy windowed to uint8 (h x w)."""
    return window_lut(disp, center, width)[disp.values]


def render_view(disp: DisplayImage, center: float, width: float, *, lesions: Sequence[Lesion] = (),
                heat: np.ndarray | None = None, heat_alpha: float = 0.45, lime: np.ndarray | None = None,
                lime_alpha: float = 0.5, region: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """RGB uint8 picture: the window, then LIME, Grad-CAM and lesion boxes, cropped to ``region``
    ((x0, y0, x1, y1) in original pixels) when given. Overlay maps of any size are resized to the copy."""
    img = gray_to_rgb(apply_window(disp, center, width))
    h, w = disp.shape
    if lime is not None and lime_alpha > 0:
        img = lime_overlay(img, cv2.resize(lime.astype(np.float32), (w, h), interpolation=cv2.INTER_NEAREST),
                           lime_alpha)
    if heat is not None and heat_alpha > 0:
        img = heatmap_overlay(img, cv2.resize(heat.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR),
                              heat_alpha)
    if lesions:
        img = draw_lesions(img, lesions, disp.original_shape)
    if region is not None:
        sy, sx = h / disp.original_shape[0], w / disp.original_shape[1]
        x0, y0, x1, y1 = region
        c0, r0 = max(0, int(x0 * sx)), max(0, int(y0 * sy))
        c1, r1 = min(w, max(c0 + 1, int(np.ceil(x1 * sx)))), min(h, max(r0 + 1, int(np.ceil(y1 * sy))))
        img = img[r0:r1, c0:c1]
    return np.ascontiguousarray(img)


def client_payload(disp: DisplayImage, cfg: ViewerConfig = ViewerConfig()) -> dict[str, Any]:
    """What the browser viewer needs for window/level: the uint16 copy (little endian, zlib, base64) and the
    mapping to modality units, the presets and the polarity."""
    raw = np.ascontiguousarray(disp.values, dtype="<u2").tobytes()
    lo, hi = disp.value_range
    return {
        "w": disp.shape[1], "h": disp.shape[0], "orig_w": disp.original_shape[1], "orig_h": disp.original_shape[0],
        "data": base64.b64encode(zlib.compress(raw, cfg.compress_level)).decode("ascii"),
        "offset": disp.offset, "slope": disp.slope, "min": lo, "max": hi, "invert": disp.invert,
        "presets": [p.to_dict() for p in disp.presets],
    }


def decode_payload(payload: dict[str, Any]) -> np.ndarray:
    """The uint16 array inside ``client_payload`` (tests; the browser does this in JS)."""
    raw = zlib.decompress(base64.b64decode(payload["data"]))
    return np.frombuffer(raw, dtype="<u2").reshape(payload["h"], payload["w"])
