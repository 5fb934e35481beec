"""Content-based format detection and the checks both decoders share (limits, sanitising, output).

The file name and extension are never trusted: only the leading bytes decide the decoder.
"""
from __future__ import annotations

import numpy as np

from spine_ui.config import DecodeConfig
from spine_ui.errors import (
    EmptyFileError,
    ImageTooLargeError,
    ImageTooSmallError,
    InvalidPixelDataError,
    UnsupportedFormatError,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
BMP_MAGIC = b"BM"
#: Sizes of the Windows/OS2 BMP info headers (BITMAPCOREHEADER .. BITMAPV5HEADER); "BM" alone is too weak.
_BMP_DIB_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_EXPLICIT_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OD",
    b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI",
    b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
}
_MAX_TEXT = 64


def sniff(data: bytes) -> str:
    """Return "dicom", "png", "jpeg", "tiff" or "bmp" from the content; raise for anything else."""
    if not data:
        raise EmptyFileError()
    if data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(TIFF_MAGICS):
        return "tiff"
    if looks_like_bmp(data):
        return "bmp"
    if looks_like_bare_dicom(data):
        return "dicom"
    raise UnsupportedFormatError()


def looks_like_bmp(data: bytes) -> bool:
    """"BM", then a known DIB header size at offset 14 (the two-byte magic alone matches stray text)."""
    return (len(data) >= 26 and data.startswith(BMP_MAGIC)
            and int.from_bytes(data[14:18], "little") in _BMP_DIB_SIZES)


def looks_like_bare_dicom(data: bytes) -> bool:
    """A DICOM data set without the 128-byte preamble: starts with a group 0002/0008 element."""
    if len(data) < 12:
        return False
    group_le = int.from_bytes(data[0:2], "little")
    group_be = int.from_bytes(data[0:2], "big")
    if group_le in (0x0002, 0x0008):
        return data[4:6] in _EXPLICIT_VRS or int.from_bytes(data[4:8], "little") < len(data)
    return group_be in (0x0002, 0x0008) and data[4:6] in _EXPLICIT_VRS


def check_dimensions(rows: int, cols: int, cfg: DecodeConfig) -> None:
    """Refuse images outside the configured limits (called with header values, before decoding)."""
    if rows <= 0 or cols <= 0:
        raise ImageTooSmallError("The image header declares no pixels (zero rows or columns).")
    if rows * cols > cfg.max_pixels or max(rows, cols) > cfg.max_side:
        raise ImageTooLargeError(
            f"The image is too large ({cols} x {rows} pixels); the limit is {cfg.max_side} pixels per side "
            f"and {cfg.max_pixels / 1e6:.0f} megapixels."
        )
    if min(rows, cols) < cfg.min_side:
        raise ImageTooSmallError(
            f"The image is too small ({cols} x {rows} pixels); a radiograph needs at least "
            f"{cfg.min_side} pixels per side."
        )


def check_file_size(size: int, cfg: DecodeConfig) -> None:
    """Empty or oversized uploads are refused before they are read or parsed."""
    if size <= 0:
        raise EmptyFileError()
    if size > cfg.max_file_bytes:
        raise ImageTooLargeError(
            f"The file is too large ({size / 2**20:.0f} MiB); the limit is {cfg.max_file_bytes / 2**20:.0f} MiB."
        )


def check_values(arr: np.ndarray) -> None:
    """NaN/inf or a constant image cannot be displayed or analysed."""
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InvalidPixelDataError("The image contains invalid pixel values (NaN or infinity).")
    if arr.size == 0 or arr.min() == arr.max():
        raise InvalidPixelDataError("The image has no contrast: every pixel has the same value.")


def to_unit(arr: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] and return a contiguous float32 copy."""
    return np.ascontiguousarray(np.clip(arr, 0.0, 1.0), dtype=np.float32)


def clean_text(value: object) -> str | None:
    """A tag value made safe for display/logging: printable characters only, stripped, capped length."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)  # type: ignore[union-attr]
    text = "".join(ch for ch in str(value) if ch.isprintable()).strip()[:_MAX_TEXT].strip()
    return text or None
