"""PNG / JPEG / TIFF / BMP decoding with Pillow (tifffile as a fallback for TIFF variants Pillow cannot read).

The header is opened lazily and its size checked against the limits before any pixel is decoded. EXIF
orientation is applied. Integer gray images are scaled by their actual bit range (the smallest
2**b - 1 >= max, b >= 8), so a 16-bit PNG holding 12-bit values maps 4095 -> 1.0 and no value clips.
Colour images become BT.601 luma; their Hasler-Suesstrunk colourfulness is measured on a downscaled copy.
"""
from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps

from spine_ui.config import DecodeConfig
from spine_ui.core.imagestats import colorfulness
from spine_ui.errors import CorruptFileError, ImageTooLargeError, InputError
from spine_ui.core.decode.sniff import check_dimensions, check_values, to_unit
from spine_ui.core.decode.study import Study, StudyMeta

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "bmp": "BMP"}
_LUMA = np.array([0.299, 0.587, 0.114])
_COLOUR_SIDE = 256  # long side of the copy the colourfulness is measured on
_TO_RGB = {"P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa"}


def _ensure_bomb_guard(cfg: DecodeConfig) -> None:
    """Pillow's decompression-bomb check stays on even if someone disabled it process-wide."""
    if Image.MAX_IMAGE_PIXELS is None:
        Image.MAX_IMAGE_PIXELS = cfg.max_pixels


def decode_raster(data: bytes, kind: str, cfg: DecodeConfig) -> Study:
    """Decode PNG/JPEG/TIFF/BMP bytes (``kind`` from :func:`sniff`) into a :class:`Study`."""
    _ensure_bomb_guard(cfg)
    label = kind.upper()
    try:
        arr, notes = _pillow_array(data, kind, cfg)
    except InputError:
        raise
    except Exception as exc:
        if kind != "tiff" or isinstance(exc, (Image.DecompressionBombError, MemoryError)):
            raise _library_error(exc, label) from exc
        arr, notes = _tifffile_array(data, cfg, exc)
    return _to_study(arr, notes, label)


def _library_error(exc: Exception, label: str) -> InputError:
    if isinstance(exc, (Image.DecompressionBombError, MemoryError)):
        return ImageTooLargeError(
            "The image header declares more pixels than allowed (decompression-bomb protection)."
        )
    return CorruptFileError(f"The {label} file is damaged or truncated and could not be decoded.")


# ---- Pillow path ------------------------------------------------------------------------------------

def _pillow_array(data: bytes, kind: str, cfg: DecodeConfig) -> tuple[np.ndarray, list[str]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning etc.: our own limits decide
        im = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[kind]])
        check_dimensions(im.height, im.width, cfg)
        notes = []
        frames = int(getattr(im, "n_frames", 1) or 1)
        if frames > 1:
            notes.append(f"first of {frames} frames")
        im.load()
        im = _orient(im, notes)
        return _pil_to_array(im), notes


def _orient(im: Image.Image, notes: list[str]) -> Image.Image:
    """Apply the EXIF orientation; a malformed EXIF block is ignored (noted), not fatal."""
    try:
        orientation = im.getexif().get(0x0112, 1)
        if orientation in (None, 1):
            return im
        out = ImageOps.exif_transpose(im)
    except Exception:
        notes.append("EXIF unreadable; orientation not applied")
        return im
    notes.append(f"EXIF orientation {orientation} applied")
    return out if out is not None else im


def _pil_to_array(im: Image.Image) -> np.ndarray:
    """Pixels as numpy: H x W (any dtype) or H x W x {2, 3, 4} with alpha last."""
    if im.mode == "1":
        im = im.convert("L")
    elif im.mode in _TO_RGB:
        has_alpha = "A" in im.mode or "a" in im.mode or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
    arr = np.asarray(im)
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)


# ---- tifffile fallback ------------------------------------------------------------------------------

def _tifffile_array(data: bytes, cfg: DecodeConfig, cause: Exception) -> tuple[np.ndarray, list[str]]:
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages.first
            check_dimensions(int(page.imagelength), int(page.imagewidth), cfg)
            arr = np.asarray(page.asarray())
    except InputError:
        raise
    except Exception:
        raise _library_error(cause, "TIFF") from cause
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar configuration
    return arr, ["decoded with tifffile"]


# ---- conversion -------------------------------------------------------------------------------------

def _to_study(arr: np.ndarray, notes: list[str], label: str) -> Study:
    gray, colour = _split_channels(arr, notes)
    check_values(gray)
    pixels, bits = _scale(gray, colour if colour is not None else gray, notes)
    colourfulness = hasler_susstrunk(_to_8bit(colour)) if colour is not None else 0.0
    meta = StudyMeta(
        source="raster",
        photometric="RGB" if colour is not None else "MONOCHROME2",
        bits_stored=bits,
        transfer_syntax=label,
        original_shape=(int(gray.shape[0]), int(gray.shape[1])),
        original_dtype=arr.dtype.name,
        colorfulness=colourfulness,
        notes=tuple(notes),
    )
    return Study(to_unit(pixels), meta, original=gray)


def _split_channels(arr: np.ndarray, notes: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """Gray values (alpha composited on black) and the RGB array when the image has colour channels."""
    if arr.ndim == 2:
        return arr, None
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise CorruptFileError("The image has an unsupported channel layout.")
    channels = arr.shape[-1]
    colour = arr[..., :3] if channels >= 3 else None
    gray = colour.astype(np.float64) @ _LUMA if colour is not None else arr[..., 0]
    if channels in (2, 4):
        gray = _composite(gray, arr[..., -1], notes)
    if colour is not None:
        notes.append("RGB converted to luma (BT.601)")
    return gray, colour


def _composite(gray: np.ndarray, alpha: np.ndarray, notes: list[str]) -> np.ndarray:
    top = float(np.iinfo(alpha.dtype).max) if alpha.dtype.kind in "ui" else 1.0
    if float(alpha.min()) >= top:
        return gray
    notes.append("alpha composited on black")
    return gray.astype(np.float64) * (alpha.astype(np.float64) / top)


def _scale(gray: np.ndarray, source: np.ndarray, notes: list[str]) -> tuple[np.ndarray, int | None]:
    """To [0, 1]. Unsigned integer ``source`` data (the gray or colour samples the gray values came from)
    is divided by its bit range; floats already in [0, 1] are kept; anything else is min/max scaled."""
    if source.dtype == bool:
        return gray.astype(np.float64), 1
    lo, hi = float(gray.min()), float(gray.max())
    if source.dtype.kind in "ui" and float(source.min()) >= 0:
        bits = max(8, int(source.max()).bit_length())
        return gray.astype(np.float64) / (2**bits - 1), bits
    if source.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0:
        return gray.astype(np.float64), None
    notes.append("min/max scaled")
    return (gray.astype(np.float64) - lo) / (hi - lo), None


def _to_8bit(colour: np.ndarray) -> np.ndarray:
    if colour.dtype == np.uint8:
        return colour
    if colour.dtype.kind in "ui":
        top = max(255, int(colour.max()))
        bits = max(8, top.bit_length())
        return (colour.astype(np.float64) * (255.0 / (2**bits - 1))).astype(np.uint8)
    c = np.nan_to_num(colour.astype(np.float64))
    return (np.clip(c, 0.0, 1.0) * 255.0).astype(np.uint8)


def hasler_susstrunk(rgb: np.ndarray) -> float:
    """Colourfulness (``spine_ui.core.imagestats.colorfulness``) of an 8-bit RGB image, downscaled first."""
    h, w = rgb.shape[:2]
    scale = _COLOUR_SIDE / max(h, w)
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = cv2.resize(np.ascontiguousarray(rgb), size, interpolation=cv2.INTER_AREA)
    return colorfulness(rgb)
