"""DICOM pixel values to display values: Modality LUT / Rescale, then VOI (LUT, window or automatic), then
MONOCHROME1 inversion, so bone is bright. Each step notes what it applied; an invalid one is noted and skipped."""
from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

from spine_ui.core.decode.sniff import check_values, clean_text, to_unit

AUTO_PERCENTILES = (0.5, 99.5)


def to_display(arr: np.ndarray, ds: Dataset, photometric: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Modality LUT, VOI and polarity: float32 [0, 1], bone bright, the notes of what was applied, and the
    modality values (before VOI and polarity) for the viewer's window/level."""
    notes: list[str] = []
    values = modality_values(arr, ds, notes)
    check_values(values)
    out = voi_lut(values, ds, notes)
    if out is None:
        out = window(values, ds, notes)
    if out is None:
        out = auto_window(values, notes)
    if photometric == "MONOCHROME1":
        out = 1.0 - np.clip(out, 0.0, 1.0)
        notes.append("MONOCHROME1 inverted")
    return to_unit(out), notes, values


def modality_values(arr: np.ndarray, ds: Dataset, notes: list[str]) -> np.ndarray:
    """Apply the Modality LUT Sequence or Rescale Slope/Intercept when they change the values."""
    if arr.dtype.kind == "f":
        return arr.astype(np.float64)
    try:
        has_lut = bool(ds.get("ModalityLUTSequence"))
        both = "RescaleSlope" in ds and "RescaleIntercept" in ds  # pydicom needs the pair
        slope = float(ds.RescaleSlope) if both else 1.0
        intercept = float(ds.RescaleIntercept) if both else 0.0
        if not has_lut and slope == 1.0 and intercept == 0.0:
            return arr
        out = apply_modality_lut(arr, ds)
    except Exception:
        notes.append("invalid rescale ignored")
        return arr
    notes.append("modality LUT" if has_lut else f"rescale {slope:g}/{intercept:g}")
    return out


def voi_lut(values: np.ndarray, ds: Dataset, notes: list[str]) -> np.ndarray | None:
    """First VOI LUT Sequence item, scaled by the LUT's own output range; None when absent/unusable."""
    seq = ds.get("VOILUTSequence")
    if not seq:
        return None
    try:
        count, first = int(seq[0].LUTDescriptor[0]) or 65536, int(seq[0].LUTDescriptor[1])
        table = apply_voi(np.arange(first, first + count, dtype=np.int64), ds, 0).astype(np.float64)
        lo, hi = float(table.min()), float(table.max())
        if hi <= lo:
            raise ValueError("flat VOI LUT")
        inputs = np.clip(np.rint(values), first, first + count - 1).astype(np.int64)
        out = (apply_voi(inputs, ds, 0).astype(np.float64) - lo) / (hi - lo)
    except Exception:
        notes.append("invalid VOI LUT ignored")
        return None
    notes.append("VOI LUT")
    return out


def window(values: np.ndarray, ds: Dataset, notes: list[str]) -> np.ndarray | None:
    """First Window Center/Width (pydicom ``apply_windowing``), scaled to [0, 1]; None when absent/invalid."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    try:
        center, width = _first_value(ds.WindowCenter), _first_value(ds.WindowWidth)
        with np.errstate(over="ignore", invalid="ignore"):
            out = apply_windowing(values, ds, index=0)
            lo, hi = apply_windowing(np.array([-np.inf, np.inf]), ds, index=0)
        if not np.isfinite([lo, hi]).all() or hi == lo:
            raise ValueError("degenerate window output range")
    except Exception:
        notes.append("invalid window ignored")
        return None
    function = clean_text(ds.get("VOILUTFunction")) or "LINEAR"
    notes.append(f"window {center:g}/{width:g}" + ("" if function.upper() == "LINEAR" else f" {function}"))
    return (out - lo) / (hi - lo)


def _first_value(value: object) -> float:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]  # type: ignore[index]
    return float(value)  # type: ignore[arg-type]


def auto_window(values: np.ndarray, notes: list[str]) -> np.ndarray:
    """Robust min/max: the 0.5th and 99.5th percentiles of the values (a subsample of large images)."""
    step = max(1, int(np.sqrt(values.size / 1_000_000)))
    sample = values[::step, ::step]
    lo, hi = (float(v) for v in np.percentile(sample, AUTO_PERCENTILES))
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    notes.append(f"auto window p{AUTO_PERCENTILES[0]:g}-p{AUTO_PERCENTILES[1]:g}")
    return (values.astype(np.float64) - lo) / (hi - lo)
