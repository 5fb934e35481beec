"""Fast path for single-frame JPEG 2000 DICOMs: imagecodecs' OpenJPEG with threads on the frame codestream.

Used only where its output is the one pydicom's own path (pylibjpeg-openjpeg) gives, value for value: a raw
J2K codestream (no JP2 box wrapper) with one component whose precision and signedness equal the header's
Bits Stored and Pixel Representation, decoded to the header's size. Anything else returns None and the
caller falls back to pydicom (``tests/test_decode_j2k.py`` compares both on 8/12/16-bit, MONOCHROME1 and signed
images). Set ``SPINE_J2K_THREADS=0`` to disable (1 or more: threads; default: all cores).
"""
from __future__ import annotations

import os

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID, JPEG2000, JPEG2000Lossless

_SYNTAXES = (JPEG2000Lossless, JPEG2000)
_SOC_SIZ = b"\xff\x4f\xff\x51"


def _threads() -> int:
    env = os.environ.get("SPINE_J2K_THREADS", "")
    return int(env) if env.strip() else (os.cpu_count() or 1)


def siz_component(codestream: bytes) -> tuple[int, int, int, bool] | None:
    """(rows, cols, precision, signed) of a one-component raw J2K codestream, else None."""
    if not codestream.startswith(_SOC_SIZ) or len(codestream) < 43:
        return None
    x, y, x0, y0 = (int.from_bytes(codestream[i:i + 4], "big") for i in (8, 12, 16, 20))
    if int.from_bytes(codestream[40:42], "big") != 1:
        return None
    ssiz = codestream[42]
    return y - y0, x - x0, (ssiz & 0x7F) + 1, bool(ssiz & 0x80)


def decode_j2k_fast(ds: Dataset, uid: UID, rows: int, cols: int, bits_stored: int,
                    bits_allocated: int) -> np.ndarray | None:
    """Decoded stored values (pydicom's dtype), or None when the fast path does not apply."""
    threads = _threads()
    if uid not in _SYNTAXES or threads <= 0 or bits_allocated not in (8, 16):
        return None
    try:
        import imagecodecs

        if not imagecodecs.JPEG2K.available:
            return None
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        if siz_component(frame) != (rows, cols, bits_stored, signed):
            return None
        arr = imagecodecs.jpeg2k_decode(frame, numthreads=threads)
    except Exception:  # anything unexpected: pydicom's path decides (and reports) instead
        return None
    want = np.dtype(f"{'i' if signed else 'u'}{bits_allocated // 8}")
    if arr.shape != (rows, cols) or arr.dtype.kind != want.kind or arr.dtype.itemsize > want.itemsize:
        return None
    return arr.astype(want, copy=False)
