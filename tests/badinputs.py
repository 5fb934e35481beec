"""A bad-input corpus, generated on demand (nothing is checked in): every kind of file a user may upload by
mistake or on purpose, with the error the decoder must raise and a word its message must contain.

``make_corpus(folder)`` returns ``{case: (path, error class or None, words)}``. ``None`` means the file is
readable and must be analysed (``words`` is then empty). Files are small (<= a few hundred KiB) and written
with pydicom / Pillow / tifffile from synthetic pixels, except one pydicom-bundled file (never downloaded).
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000MCLossless

from spine_ui.errors import (
    ColorImageError,
    CorruptFileError,
    EmptyFileError,
    ImageTooLargeError,
    ImageTooSmallError,
    InputError,
    InvalidPixelDataError,
    MissingPixelDataError,
    MultiFrameError,
    UnsupportedCodecError,
    UnsupportedFormatError,
)
from spine_ui.synth.dicom_writer import write_dicom

#: A non-ASCII file name (Russian "radiograph", Chinese "spine"): a readable study, analysed normally.
UNICODE_NAME = "рентген_脊柱.dcm"

Case = tuple[Path, "type[InputError] | None", tuple[str, ...]]


def spine_pixels(height: int = 512, seed: int = 3) -> np.ndarray:
    """A synthetic spine radiograph, 12-bit stored values (MONOCHROME2)."""
    from spine_ui.synth.phantom import render_spine, to_stored

    img, _ = render_spine(np.random.default_rng(seed), ["Osteophytes"], height=height)
    return to_stored(img, 12)


def gradient(rows: int = 64, cols: int = 64, top: int = 4095) -> np.ndarray:
    return np.round(np.linspace(0, top, rows * cols)).astype(np.uint16).reshape(rows, cols)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def png_with_ihdr(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` but whose image data is a few bytes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) \
        + chunk(b"IEND", b"")


def float_tiff(bad: float) -> bytes:
    ramp = np.linspace(0.0, 1.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    ramp[10:12, 20:30] = bad
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="TIFF")
    return buf.getvalue()


def _rewrite(src: Path, dst: Path, edit) -> Path:
    ds = pydicom.dcmread(src)
    edit(ds)
    ds.save_as(dst)
    return dst


def float_pixel_dicom(path: Path, base: Path) -> Path:
    """A DICOM with Float Pixel Data (7FE0,0008), 32-bit float, containing NaN and infinity."""
    values = np.linspace(0.0, 1000.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    values[5, 5], values[6, 6] = np.nan, np.inf

    def edit(ds):
        del ds.PixelData
        for kw in ("BitsStored", "HighBit", "PixelRepresentation"):
            if kw in ds:
                delattr(ds, kw)
        ds.Rows, ds.Columns, ds.BitsAllocated = 64, 64, 32
        ds.FloatPixelData = values.astype("<f4").tobytes()

    return _rewrite(base, path, edit)


def unsupported_codec_dicom(path: Path, base: Path) -> tuple[Path, str]:
    """pydicom's bundled 12-bit lossy JPEG (libjpeg rejects it, Pillow has no 12-bit JPEG); if this pydicom
    install lacks it, a JPEG 2000 multi-component file (no decoder for that transfer syntax is installed)."""
    try:
        from pydicom.data import get_testdata_file

        bundled = get_testdata_file("JPEG-lossy.dcm", download=False)
    except Exception:  # pragma: no cover - depends on the installed pydicom
        bundled = None
    if bundled:
        path.write_bytes(Path(bundled).read_bytes())
        return path, "JPEG Extended"

    def edit(ds):  # pragma: no cover - fallback
        ds.file_meta.TransferSyntaxUID = JPEG2000MCLossless
        ds.PixelData = encapsulate([b"\x00" * 64])
        ds["PixelData"].VR = "OB"

    return _rewrite(base, path, edit), "no installed decoder"


def make_corpus(folder: str | Path) -> dict[str, Case]:
    """Write the corpus into ``folder``; ``{case: (path, expected error class or None, words)}``."""
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    cases: dict[str, Case] = {}

    def add(name: str, filename: str, data: bytes | None, error, *words: str) -> Path:
        path = d / filename
        if data is not None:
            path.write_bytes(data)
        cases[name] = (path, error, tuple(words))
        return path

    base = write_dicom(d / "_base.dcm", gradient(64, 64), modality="DX", body_part="LSPINE")
    base_bytes = base.read_bytes()

    add("zero_bytes", "empty.dcm", b"", EmptyFileError, "empty")
    add("truncated_dicom", "truncated.dcm", base_bytes[: len(base_bytes) // 2], CorruptFileError, "truncated")

    _rewrite(base, d / "no_pixels.dcm", lambda ds: delattr(ds, "PixelData"))
    add("dicom_without_pixels", "no_pixels.dcm", None, MissingPixelDataError, "no image", "Pixel Data")

    def multiframe(ds):
        ds.NumberOfFrames = 3
        ds.PixelData = gradient(64, 64).tobytes() * 3

    _rewrite(base, d / "multiframe.dcm", multiframe)
    add("multiframe_dicom", "multiframe.dcm", None, MultiFrameError, "Multi-frame", "3 frames")

    def colour(ds):
        rgb = np.zeros((64, 64, 3), np.uint8)
        rgb[..., 0] = np.arange(64, dtype=np.uint8)[None, :] * 4
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = rgb.tobytes()

    _rewrite(base, d / "colour.dcm", colour)
    add("colour_dicom", "colour.dcm", None, ColorImageError, "Colour", "RGB")

    codec_path, codec_word = unsupported_codec_dicom(d / "jpeg_lossy.dcm", base)
    add("unsupported_codec", codec_path.name, None, UnsupportedCodecError, codec_word)

    add("png_named_dcm", "really_a_png.dcm", png_bytes((spine_pixels(384) >> 4).astype(np.uint8)), None)
    add("text_named_png", "notes.png", b"Patient notes, not an image.\n" * 8, UnsupportedFormatError,
        "Unsupported file type")
    add("one_pixel_png", "one_pixel.png", png_bytes(np.full((1, 1), 128, np.uint8)), ImageTooSmallError,
        "too small", "1 x 1")

    def huge(ds):
        ds.Rows, ds.Columns = 60000, 60000  # the pixel data stays 8 KiB

    _rewrite(base, d / "huge_header.dcm", huge)
    add("huge_dicom_header", "huge_header.dcm", None, ImageTooLargeError, "too large", "60000 x 60000")
    add("huge_png_ihdr", "huge_ihdr.png", png_with_ihdr(100_000, 100_000), ImageTooLargeError, "more pixels")

    add("nan_float_tiff", "nan.tiff", float_tiff(np.nan), InvalidPixelDataError, "NaN")
    add("inf_float_tiff", "inf.tif", float_tiff(np.inf), InvalidPixelDataError, "infinity")
    float_pixel_dicom(d / "float_nan.dcm", base)
    add("nan_float_pixel_dicom", "float_nan.dcm", None, InvalidPixelDataError, "NaN")

    write_dicom(d / UNICODE_NAME, spine_pixels(512), modality="DX", body_part="LSPINE")
    add("unicode_name_dicom", UNICODE_NAME, None, None)
    # an unreadable file with a name that must never be echoed (markup and non-ASCII)
    add("unicode_name_text", "<b>пациент_患者<i>.dcm", b"\x00\x01 not a radiograph " * 20,
        UnsupportedFormatError, "Unsupported file type")
    base.unlink()
    return cases


def readable(cases: dict[str, Case]) -> list[str]:
    return [name for name, (_p, err, _w) in cases.items() if err is None]


def failing(cases: dict[str, Case]) -> list[str]:
    return [name for name, (_p, err, _w) in cases.items() if err is not None]
