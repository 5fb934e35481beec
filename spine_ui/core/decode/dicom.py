"""DICOM decoding: header checks first, then pixels (pydicom + pylibjpeg), then Modality LUT, VOI, polarity.

Order of operations for a single-frame grayscale image:

1. parse the data set (a truncated file is refused here), read the image header as integers
   (``dicom_tags.py``, which also builds the study's safe technical metadata);
2. refuse missing pixel data, multi-frame, colour, out-of-limit sizes and codecs without a decoder
   *before* any pixel buffer is allocated (the compressed codestream's own size is checked too);
3. decode: JPEG 2000 through imagecodecs with threads where it gives pydicom's pixels (``j2k.py``), else
   pydicom (Bits Stored masking and signedness are handled there);
4. Modality LUT / Rescale Slope-Intercept (``apply_modality_lut``; steps 4-6 in ``dicom_voi.py``);
5. VOI: the first VOI LUT Sequence item, else the first Window Center/Width, else an automatic window
   at the 0.5th-99.5th percentiles of the (rescaled) pixel values; the result is scaled to [0, 1];
6. MONOCHROME1 is inverted last, so bone is bright.
"""
from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_fragments
from pydicom.pixels import get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from spine_ui.config import DecodeConfig
from spine_ui.errors import (
    ColorImageError,
    CorruptFileError,
    ImageTooLargeError,
    MissingPixelDataError,
    MultiFrameError,
    UnsupportedCodecError,
)
from spine_ui.core.decode.dicom_tags import PIXEL_KEYWORDS, Header, build_meta, read_header, syntax_name
from spine_ui.core.decode.dicom_voi import to_display
from spine_ui.core.decode.j2k import decode_j2k_fast
from spine_ui.core.decode.sniff import check_dimensions
from spine_ui.core.decode.study import Study

__all__ = ["Header", "build_meta", "check_header", "decode_dicom", "decode_pixels", "read_dataset", "read_header",
           "syntax_name", "to_display", "transfer_syntax"]

_GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
_UNDEFINED = 0xFFFFFFFF
_ITEM_TAG = b"\xfe\xff\x00\xe0"
_PIXEL_TAGS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}


class _NoPluginTracebacks(logging.Filter):
    """pydicom logs each failing decoding plugin with a full traceback (``LOGGER.exception``) before it raises;
    that failure reaches the user as an InputError, so the traceback record is dropped (CLI stderr, app log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is None


logging.getLogger("pydicom.pixels.decoders.base").addFilter(_NoPluginTracebacks())


def decode_dicom(data: bytes, cfg: DecodeConfig) -> Study:
    """Decode a single-frame grayscale DICOM into a display-ready :class:`Study`."""
    ds = read_dataset(data)
    header = read_header(ds)
    check_header(ds, header, cfg)
    syntax = transfer_syntax(ds)
    check_decoder(syntax)
    check_payload(ds, header, syntax)
    arr = decode_j2k_fast(ds, syntax, header.rows, header.cols, header.bits_stored, header.bits_allocated)
    if arr is None:
        arr = decode_pixels(ds, syntax)
    pixels, notes, values = to_display(arr, ds, header.photometric)
    return Study(pixels, build_meta(ds, header, syntax, arr, notes), original=values)


# ---- parsing ----------------------------------------------------------------------------------------

def read_dataset(data: bytes) -> Dataset:
    """Parse the whole file (size was checked by the caller); refuse unreadable or truncated files."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        except Exception as exc:  # pydicom raises many types for malformed input
            raise CorruptFileError("The DICOM file is damaged and its header could not be read.") from exc
    if any("end of file" in str(w.message).lower() for w in caught) or _has_short_element(ds):
        raise CorruptFileError("The DICOM file is truncated: it ends before its last element is complete.")
    if len(ds) == 0:
        raise CorruptFileError("The DICOM file is damaged: no data elements could be read.")
    if not any(k in ds for k in PIXEL_KEYWORDS) and any(t in data[-12:] for t in _PIXEL_TAGS):
        raise CorruptFileError("The DICOM file is truncated inside its Pixel Data element header.")
    return ds


def _has_short_element(ds: Dataset) -> bool:
    """A defined-length element whose value is shorter than declared means the file was cut."""
    for elem in ds.elements():
        if isinstance(elem, RawDataElement) and elem.length != _UNDEFINED and isinstance(elem.value, bytes):
            if len(elem.value) < elem.length:
                return True
    return False


def check_header(ds: Dataset, h: Header, cfg: DecodeConfig) -> None:
    """Refuse what cannot be a single grayscale radiograph, using header values only."""
    if h.frames > 1:
        raise MultiFrameError(
            f"Multi-frame DICOM ({h.frames} frames, a series or cine loop) is not supported: "
            "upload a single radiograph."
        )
    if h.samples != 1 or h.photometric not in _GRAYSCALE:
        raise ColorImageError(
            f"Colour DICOM images ({h.photometric}, {h.samples} samples per pixel) are not radiographs: "
            "upload a grayscale X-ray."
        )
    if h.bits_allocated not in (1, 8, 16, 32, 64):
        raise CorruptFileError(f"The DICOM image header is invalid (Bits Allocated = {h.bits_allocated}).")
    check_dimensions(h.rows, h.cols, cfg)
    if "PhotometricInterpretation" not in ds:
        ds.PhotometricInterpretation = h.photometric


# ---- transfer syntax and codec ----------------------------------------------------------------------

def transfer_syntax(ds: Dataset) -> UID:
    """The declared transfer syntax, or the encoding the parser found when the file meta lacks one."""
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid:
        return UID(str(uid))
    if _pixel_bytes(ds)[:4] == _ITEM_TAG:
        raise UnsupportedCodecError(
            "The DICOM pixel data is compressed but the file does not declare its transfer syntax."
        )
    implicit, little = ds.original_encoding
    uid = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    if meta is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid
    return uid


def check_decoder(uid: UID) -> None:
    """Refuse a transfer syntax no installed pixel-data decoder can handle, before decoding."""
    try:
        available = get_decoder(uid).is_available
    except (NotImplementedError, ValueError, KeyError):
        available = False
    if not available:
        raise UnsupportedCodecError(
            f"The DICOM is encoded with '{syntax_name(uid)}', which no installed decoder supports."
        )


# ---- pixel payload ----------------------------------------------------------------------------------

def _pixel_bytes(ds: Dataset) -> bytes:
    for keyword in PIXEL_KEYWORDS:
        if keyword in ds:
            value = ds[keyword].value
            return value if isinstance(value, bytes) else b""
    return b""


def check_payload(ds: Dataset, h: Header, uid: UID) -> None:
    """Native data must be complete; a compressed codestream must not declare a larger image."""
    data = _pixel_bytes(ds)
    if not data:
        raise MissingPixelDataError("The DICOM Pixel Data element is empty.")
    if not uid.is_compressed:
        expected = (h.rows * h.cols * h.samples * h.frames * h.bits_allocated + 7) // 8
        if len(data) < expected:
            raise CorruptFileError(
                f"The DICOM pixel data is truncated ({len(data)} of {expected} bytes are present)."
            )
        return
    shape = codestream_shape(_first_fragment(data))
    if shape is not None and (shape[0] > h.rows or shape[1] > h.cols):
        raise CorruptFileError(
            f"The compressed image declares a larger size ({shape[1]} x {shape[0]}) than the DICOM header "
            f"({h.cols} x {h.rows}); it is damaged or crafted and was not decoded."
        )


def _first_fragment(data: bytes) -> bytes:
    try:
        fragments: Iterator[bytes] = generate_fragments(data)
        next(fragments)  # the Basic Offset Table item
        return next(fragments, b"")
    except Exception as exc:
        raise CorruptFileError("The DICOM compressed pixel data is damaged (invalid fragment items).") from exc


def codestream_shape(frag: bytes) -> tuple[int, int] | None:
    """(rows, columns) declared by a JPEG 2000 or JPEG/JPEG-LS codestream header, if recognisable."""
    if frag.startswith(_J2K_SOC_SIZ) and len(frag) >= 24:
        x, y, x0, y0 = (int.from_bytes(frag[i:i + 4], "big") for i in (8, 12, 16, 20))
        return y - y0, x - x0
    if frag.startswith(b"\xff\xd8"):
        return _jpeg_frame_shape(frag)
    return None


def _jpeg_frame_shape(frag: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 <= len(frag) and frag[i] == 0xFF:
        marker = frag[i + 1]
        if marker in _JPEG_SOF:
            return int.from_bytes(frag[i + 5:i + 7], "big"), int.from_bytes(frag[i + 7:i + 9], "big")
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        i += 2 + int.from_bytes(frag[i + 2:i + 4], "big")
    return None


def decode_pixels(ds: Dataset, uid: UID) -> np.ndarray:
    """Run pydicom's decoder and map every library failure to an :class:`InputError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except MemoryError as exc:
        raise ImageTooLargeError("The image is too large to decode on this server.") from exc
    except (RuntimeError, NotImplementedError) as exc:
        if uid.is_compressed:
            raise UnsupportedCodecError(
                f"The DICOM is compressed with '{syntax_name(uid)}', but the installed decoder could not "
                "decode this image (an unsupported variant of the codec, or damaged data)."
            ) from exc
        raise CorruptFileError("The DICOM pixel data could not be decoded (damaged data).") from exc
    except Exception as exc:
        raise CorruptFileError("The DICOM pixel data could not be decoded (damaged or inconsistent data).") from exc
    if arr.ndim != 2:
        raise CorruptFileError("The DICOM pixel data does not decode to a single 2-D image.")
    return arr
