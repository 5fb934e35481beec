"""DICOM decoding: header checks first, then pixels (pydicom + pylibjpeg), then Modality LUT, VOI, polarity.

Order of operations for a single-frame grayscale image:

1. parse the data set (a truncated file is refused here), read the image header as integers;
2. refuse missing pixel data, multi-frame, colour, out-of-limit sizes and codecs without a decoder
   *before* any pixel buffer is allocated (the compressed codestream's own size is checked too);
3. decode: JPEG 2000 through imagecodecs with threads where it gives pydicom's pixels (``j2k.py``), else
   pydicom (Bits Stored masking and signedness are handled there);
4. Modality LUT / Rescale Slope-Intercept (``apply_modality_lut``);
5. VOI: the first VOI LUT Sequence item, else the first Window Center/Width, else an automatic window
   at the 0.5th-99.5th percentiles of the (rescaled) pixel values; the result is scaled to [0, 1];
6. MONOCHROME1 is inverted last, so bone is bright.
"""
from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_fragments
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing, get_decoder
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
from spine_ui.core.decode.j2k import decode_j2k_fast
from spine_ui.core.decode.sniff import check_dimensions, check_values, clean_text, to_unit
from spine_ui.core.decode.study import Study, StudyMeta

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
AUTO_PERCENTILES = (0.5, 99.5)
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


def syntax_name(uid: UID) -> str:
    """Human name of a transfer syntax (the UID itself when pydicom does not know it)."""
    name = uid.name if uid.is_transfer_syntax else ""
    return clean_text(name or f"unknown transfer syntax {uid}") or "unknown transfer syntax"


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


# ---- display transform ------------------------------------------------------------------------------

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


# ---- metadata ---------------------------------------------------------------------------------------

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

