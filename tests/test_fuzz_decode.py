"""Fuzzing ``decode_bytes`` with hypothesis: whatever the bytes, only an ``InputError`` (a subclass with a user
message) may escape, and a successful decode is a finite float32 2-D image in [0, 1].

Bounded and reproducible: ``derandomize=True`` (the same examples on every run), no example database, at most
150 examples per strategy, small seed images (64 x 48) so one example takes milliseconds (about 3 s in all).
``SPINE_FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest tests/test_fuzz_decode.py`` runs a longer random campaign.
"""
from __future__ import annotations

import copy
import functools
import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom import config as dicom_config
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, AllTransferSyntaxes

from spine_ui.config import DecodeConfig
from spine_ui.core.decode import decode_bytes
from spine_ui.errors import InputError
from spine_ui.synth.dicom_writer import write_dicom

#: SPINE_FUZZ_EXAMPLES=5000 runs a longer, randomised campaign (by hand; the default run stays at 150, fixed).
_CAMPAIGN = int(os.environ.get("SPINE_FUZZ_EXAMPLES", "0") or 0)
FUZZ = settings(max_examples=_CAMPAIGN or 150, deadline=None, derandomize=not _CAMPAIGN, database=None,
                print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                        HealthCheck.filter_too_much])
#: Tighter limits than the server's, so a header the fuzzer inflates is refused (or decoded) quickly.
CFG = DecodeConfig(max_file_bytes=4 * 2**20, max_pixels=4_000_000, max_side=4096, min_side=32)
ROWS, COLS = 64, 48


def check_decode(data: bytes) -> None:
    """The property: an InputError with a message, or a valid display image."""
    try:
        study = decode_bytes(data, "fuzz.bin", CFG)
    except InputError as exc:
        assert exc.user_message and "Traceback" not in exc.user_message
        event(type(exc).__name__)  # outcome statistics: pytest --hypothesis-show-statistics
        return
    event("decoded")
    px = study.pixels
    assert isinstance(px, np.ndarray) and px.dtype == np.float32 and px.ndim == 2
    assert px.shape[0] >= CFG.min_side and px.shape[1] >= CFG.min_side
    assert np.isfinite(px).all()
    assert float(px.min()) >= 0.0 and float(px.max()) <= 1.0


# ---- seeds ------------------------------------------------------------------------------------------

def _gradient() -> np.ndarray:
    y, x = np.mgrid[0:ROWS, 0:COLS]
    return ((y * 37 + x * 53) % 4096).astype(np.uint16)


@functools.lru_cache(maxsize=None)
def dicom_seed(syntax: str) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return write_dicom(Path(d) / "seed.dcm", _gradient(), transfer_syntax=syntax, window=(2048.0, 4096.0),
                           rescale=(1.0, -10.0), body_part="LSPINE").read_bytes()


@functools.lru_cache(maxsize=None)
def raster_seed(kind: str) -> bytes:
    g16 = _gradient() * 16
    buf = io.BytesIO()
    if kind == "png8":
        Image.fromarray((g16 >> 8).astype(np.uint8)).save(buf, format="PNG")
    elif kind == "png16":
        Image.fromarray(g16).save(buf, format="PNG")
    elif kind == "jpeg":
        Image.fromarray((g16 >> 8).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    elif kind == "tiff16":
        Image.fromarray(g16).save(buf, format="TIFF")
    elif kind == "tiff_float":
        Image.fromarray(g16.astype(np.float32) / 65535).save(buf, format="TIFF")
    elif kind == "rgb_png":
        rgb = np.stack([(g16 >> 8).astype(np.uint8)] * 3, axis=-1)
        rgb[..., 0] = 255 - rgb[..., 0]
        Image.fromarray(rgb).save(buf, format="PNG")
    else:  # pragma: no cover
        raise ValueError(kind)
    return buf.getvalue()


DICOM_SEEDS = ("explicit", "implicit", "jpeg2000", "rle")
RASTER_SEEDS = ("png8", "png16", "jpeg", "tiff16", "tiff_float", "rgb_png")


def test_seeds_decode() -> None:
    """The unmutated seeds are valid, so mutations start from files that reach the pixel decoders."""
    for syntax in DICOM_SEEDS:
        assert decode_bytes(dicom_seed(syntax), cfg=CFG).shape == (ROWS, COLS), syntax
    for kind in RASTER_SEEDS:
        assert decode_bytes(raster_seed(kind), cfg=CFG).shape == (ROWS, COLS), kind


# ---- byte-level mutations ---------------------------------------------------------------------------

@st.composite
def mutated(draw, seed: bytes, region_start: int = 0) -> bytes:
    """``seed`` with 1-6 edits: byte flips / overwrites / inserts / deletions and an optional truncation."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        lo = min(region_start, len(data) - 1)
        near = min(len(data) - 1, lo + 400)  # half of the edits land in the first 400 bytes (headers)
        pos = draw(st.integers(lo, near) | st.integers(lo, len(data) - 1))
        op = draw(st.sampled_from(("flip", "set", "insert", "delete", "u16", "u32")))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[pos] = draw(st.sampled_from((0x00, 0xFF, 0x7F, 0x80, 0x01)))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        else:  # overwrite a little-endian integer (lengths, sizes, offsets)
            size = 2 if op == "u16" else 4
            value = draw(st.sampled_from((0, 1, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 60000)))
            data[pos:pos + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
    if draw(st.integers(0, 3)) == 0 and len(data) > 1:
        data = data[: draw(st.integers(1, len(data)))]
    return bytes(data)


def _pixel_region(seed: bytes) -> int:
    """Offset of the Pixel Data element, so some mutations target the (compressed) pixel payload."""
    for tag in (b"\xe0\x7f\x10\x00",):
        i = seed.rfind(tag)
        if i >= 0:
            return i
    return 0


@FUZZ
@given(st.binary(min_size=0, max_size=4096))
def test_random_bytes(data: bytes) -> None:
    check_decode(data)


MAGICS = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"\x00" * 128 + b"DICM",
          b"\x08\x00\x05\x00CS", b"\x02\x00\x00\x00UL")


@FUZZ
@given(st.sampled_from(MAGICS), st.binary(min_size=0, max_size=2048))
def test_random_bytes_after_a_magic_number(magic: bytes, rest: bytes) -> None:
    check_decode(magic + rest)


@FUZZ
@given(st.sampled_from(DICOM_SEEDS).flatmap(lambda s: mutated(dicom_seed(s))))
def test_mutated_dicom_bytes(data: bytes) -> None:
    check_decode(data)


@FUZZ
@given(st.sampled_from(("jpeg2000", "rle", "explicit")).flatmap(
    lambda s: mutated(dicom_seed(s), _pixel_region(dicom_seed(s)))))
def test_mutated_dicom_pixel_payload(data: bytes) -> None:
    check_decode(data)


@FUZZ
@given(st.sampled_from(RASTER_SEEDS).flatmap(lambda k: mutated(raster_seed(k))))
def test_mutated_raster_bytes(data: bytes) -> None:
    check_decode(data)


# ---- raster header field changes (checksums recomputed, so the decoders get past them) --------------

def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@st.composite
def png_ihdr_edits(draw) -> bytes:
    """A valid PNG whose IHDR (size, bit depth, colour type, interlace) is rewritten with a correct CRC."""
    seed = raster_seed(draw(st.sampled_from(("png8", "png16", "rgb_png"))))
    width = draw(st.sampled_from((0, 1, 47, 48, 49, 64, 4096, 5000, 2**31 - 1, 2**32 - 1)))
    height = draw(st.sampled_from((0, 1, 63, 64, 65, 4096, 100_000, 2**31 - 1)))
    depth = draw(st.sampled_from((0, 1, 2, 4, 8, 16, 3, 32)))
    colour = draw(st.sampled_from((0, 2, 3, 4, 6, 1, 7)))
    interlace = draw(st.sampled_from((0, 1, 2)))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    return seed[:8] + _png_chunk(b"IHDR", ihdr) + seed[8 + 25:]


@FUZZ
@given(png_ihdr_edits())
def test_png_header_field_changes(data: bytes) -> None:
    check_decode(data)


TIFF_TAGS = {256: "width", 257: "length", 258: "bits", 259: "compression", 262: "photometric",
             273: "strip offsets", 277: "samples", 278: "rows per strip", 279: "strip bytes", 284: "planar",
             339: "sample format"}


@st.composite
def tiff_ifd_edits(draw) -> bytes:
    """A Pillow-written little-endian TIFF with 1-3 IFD entry values (size, bits, codec...) overwritten."""
    data = bytearray(raster_seed(draw(st.sampled_from(("tiff16", "tiff_float")))))
    ifd = struct.unpack("<I", data[4:8])[0]
    count = struct.unpack("<H", data[ifd:ifd + 2])[0]
    entries = {struct.unpack("<H", data[ifd + 2 + 12 * i: ifd + 4 + 12 * i])[0]: ifd + 2 + 12 * i
               for i in range(count)}
    present = sorted(t for t in TIFF_TAGS if t in entries)
    for tag in draw(st.lists(st.sampled_from(present), min_size=1, max_size=3, unique=True)):
        at = entries[tag]
        kind = struct.unpack("<H", data[at + 2:at + 4])[0]
        value = draw(st.sampled_from((0, 1, 2, 3, 5, 7, 8, 16, 32, 48, 64, 65535, 100_000, 2**31 - 1)))
        if kind == 3:  # SHORT, left-justified in the value field
            data[at + 8:at + 10] = struct.pack("<H", value & 0xFFFF)
        else:
            data[at + 8:at + 12] = struct.pack("<I", value)
    return bytes(data)


@FUZZ
@given(tiff_ifd_edits())
def test_tiff_header_field_changes(data: bytes) -> None:
    check_decode(data)


@st.composite
def jpeg_sof_edits(draw) -> bytes:
    """A baseline JPEG whose SOF0 precision, height, width or component count is rewritten."""
    data = bytearray(raster_seed("jpeg"))
    sof = data.index(b"\xff\xc0")
    field = draw(st.sampled_from(("precision", "height", "width", "components")))
    if field == "precision":
        data[sof + 4] = draw(st.sampled_from((0, 1, 8, 12, 16, 255)))
    elif field == "components":
        data[sof + 9] = draw(st.sampled_from((0, 1, 2, 3, 4, 255)))
    else:
        at = sof + (5 if field == "height" else 7)
        data[at:at + 2] = struct.pack(">H", draw(st.sampled_from((0, 1, 31, 32, 63, 64, 65, 4096, 65535))))
    return bytes(data)


@FUZZ
@given(jpeg_sof_edits())
def test_jpeg_header_field_changes(data: bytes) -> None:
    check_decode(data)


# ---- DICOM header field changes (pydicom, re-serialised) --------------------------------------------

US_VALUES = st.sampled_from((0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 24, 31, 32, 33, 48, 64, 65, 255, 4096, 60000,
                             65535))
FIELD_EDITS = {
    "Rows": ("US", US_VALUES),
    "Columns": ("US", US_VALUES),
    "BitsAllocated": ("US", US_VALUES),
    "BitsStored": ("US", US_VALUES),
    "HighBit": ("US", US_VALUES),
    "SamplesPerPixel": ("US", st.integers(0, 4)),
    "PixelRepresentation": ("US", st.integers(0, 3)),
    "PlanarConfiguration": ("US", st.integers(0, 2)),
    "NumberOfFrames": ("IS", st.sampled_from(("0", "1", "2", "-1", "1A", "", "99999", "2147483648", "1.5"))),
    "PhotometricInterpretation": ("CS", st.sampled_from(("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR",
                                                         "YBR_FULL", "YBR_FULL_422", "", "X" * 20))),
    "RescaleSlope": ("DS", st.sampled_from(("0", "-1", "1e308", "nan", "inf", "abc", "", "1e-300"))),
    "RescaleIntercept": ("DS", st.sampled_from(("0", "-1e308", "nan", "-inf", "abc", ""))),
    "WindowCenter": ("DS", st.sampled_from(("0", "nan", "inf", "1e308", "-1e308", "abc", "1\\2", ""))),
    "WindowWidth": ("DS", st.sampled_from(("0", "-5", "nan", "inf", "1e-308", "1e308", "abc", ""))),
    "VOILUTFunction": ("CS", st.sampled_from(("LINEAR", "SIGMOID", "LINEAR_EXACT", "BOGUS", ""))),
}
SYNTAXES = tuple(str(u) for u in AllTransferSyntaxes) + ("1.2.3.4", "", "1.2.840.10008.1.2.4.999")


def _serialise(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), dicom_config.disable_value_validation():
        warnings.simplefilter("ignore")
        ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue()


def _with_transfer_syntax(data: bytes, uid: str) -> bytes:
    """Replace the file meta's Transfer Syntax UID, keeping the data set body as it was encoded."""
    group_len = struct.unpack("<I", data[140:144])[0]
    body = data[144 + group_len:]
    meta = copy.deepcopy(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta)
    if uid:
        meta.TransferSyntaxUID = UID(uid)
    else:
        del meta.TransferSyntaxUID
    buf = io.BytesIO()
    with warnings.catch_warnings(), dicom_config.disable_value_validation():
        warnings.simplefilter("ignore")
        write_file_meta_info(buf, meta, enforce_standard=False)
    return data[:132] + buf.getvalue() + body


@st.composite
def header_edits(draw) -> bytes:
    syntax = draw(st.sampled_from(DICOM_SEEDS[:1] + DICOM_SEEDS[2:]))  # seeds with a file meta
    seed = dicom_seed(syntax)
    ds = pydicom.dcmread(io.BytesIO(seed))
    edits = draw(st.lists(st.sampled_from(sorted(FIELD_EDITS)), min_size=1, max_size=4, unique=True))
    for keyword in edits:
        vr, values = FIELD_EDITS[keyword]
        value = draw(values)
        tag = pydicom.datadict.tag_for_keyword(keyword)
        if draw(st.integers(0, 9)) == 0:
            if keyword in ds:
                del ds[keyword]
            continue
        if vr == "US":
            ds[tag] = DataElement(tag, vr, value)
        else:  # kept raw: pydicom would refuse to convert "abc" or "1A" when the element is set
            raw = value.encode("latin-1") + (b" " if len(value) % 2 else b"")
            ds[tag] = RawDataElement(tag, vr, len(raw), raw, 0, False, True)
    if draw(st.booleans()):  # pixel data of another size than the header says
        scale = draw(st.sampled_from((0.0, 0.5, 2.0, 3.0)))
        if "PixelData" in ds and not ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.PixelData = (bytes(ds.PixelData) * 3)[: int(len(ds.PixelData) * scale) // 2 * 2]
    data = _serialise(ds)
    if draw(st.integers(0, 3)) == 0:
        data = _with_transfer_syntax(data, draw(st.sampled_from(SYNTAXES)))
    return data


@FUZZ
@given(header_edits())
def test_dicom_header_field_changes(data: bytes) -> None:
    check_decode(data)


@FUZZ
@given(st.sampled_from(SYNTAXES), st.sampled_from(DICOM_SEEDS[:1] + DICOM_SEEDS[2:]))
def test_dicom_declaring_another_transfer_syntax(uid: str, syntax: str) -> None:
    check_decode(_with_transfer_syntax(dicom_seed(syntax), uid))


def test_property_catches_a_leak(monkeypatch) -> None:
    """The property really fails when a non-InputError escapes (guards against a vacuous fuzz test)."""
    import spine_ui.core.decode as decode_mod

    def leak(*_a, **_k):
        raise struct.error("leaked")

    monkeypatch.setattr(decode_mod, "sniff", leak)
    with pytest.raises(struct.error):
        check_decode(raster_seed("png8"))
