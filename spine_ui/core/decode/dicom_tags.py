"""DICOM tags read without touching the pixels: the Image Pixel header as integers and the sanitised technical
metadata of a :class:`StudyMeta` (modality, view, body part, windows, transfer syntax), never patient identity."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from spine_ui.core.decode.sniff import clean_text
from spine_ui.core.decode.study import StudyMeta
from spine_ui.errors import CorruptFileError, MissingPixelDataError

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True)
class Header:
    """Image Pixel module values, as integers, read before any pixel data is touched."""

    rows: int
    cols: int
    samples: int
    frames: int
    bits_allocated: int
    bits_stored: int
    photometric: str


def read_header(ds: Dataset) -> Header:
    """Image Pixel module as integers; a missing pixel element is reported before header problems."""
    if not any(k in ds for k in PIXEL_KEYWORDS):
        raise MissingPixelDataError()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns before failing on values like IS "1A"
            return _header_values(ds)
    except Exception as exc:
        raise CorruptFileError(
            "The DICOM image header is invalid (a size or bit-depth value is not a number)."
        ) from exc


def _header_values(ds: Dataset) -> Header:
    return Header(
        rows=int(ds.get("Rows") or 0),
        cols=int(ds.get("Columns") or 0),
        samples=int(ds.get("SamplesPerPixel") or 1),
        frames=int(ds.get("NumberOfFrames") or 1),
        bits_allocated=int(ds.get("BitsAllocated") or 0),
        bits_stored=int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0),
        photometric=(clean_text(ds.get("PhotometricInterpretation")) or "MONOCHROME2").upper(),
    )


def syntax_name(uid: UID) -> str:
    """Human name of a transfer syntax (the UID itself when pydicom does not know it)."""
    name = uid.name if uid.is_transfer_syntax else ""
    return clean_text(name or f"unknown transfer syntax {uid}") or "unknown transfer syntax"


def _tag(ds: Dataset, keyword: str) -> str | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return clean_text(ds.get(keyword))
    except Exception:
        return None


def file_windows(ds: Dataset) -> tuple[tuple[float, float, str], ...]:
    """Every Window Center/Width pair of the file (modality units) with its explanation; () when absent/invalid."""
    try:
        centers, widths = _values(ds.get("WindowCenter")), _values(ds.get("WindowWidth"))
        names = _values(ds.get("WindowCenterWidthExplanation"))
        out = []
        for i, (c, w) in enumerate(zip(centers, widths)):
            c, w = float(c), float(w)
            if np.isfinite([c, w]).all() and w > 0:
                out.append((c, w, (clean_text(names[i]) if i < len(names) else None) or ""))
        return tuple(out)
    except Exception:
        return ()


def _values(value: object) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]


def build_meta(ds: Dataset, h: Header, uid: UID, arr: np.ndarray, notes: list[str]) -> StudyMeta:
    """Technical tags only (sanitised); nothing that identifies the patient."""
    body_part = _tag(ds, "BodyPartExamined")
    return StudyMeta(
        source="dicom",
        modality=_tag(ds, "Modality"),
        body_part=body_part.upper() if body_part else None,
        view_position=_tag(ds, "ViewPosition"),
        photometric=h.photometric,
        bits_stored=h.bits_stored,
        transfer_syntax=syntax_name(uid),
        original_shape=(h.rows, h.cols),
        original_dtype=arr.dtype.name,
        windows=file_windows(ds),
        notes=tuple(notes),
    )
