"""spine_ui.core.decode: every decode path and every refusal, on pydicom's bundled files and written files."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000MCLossless

from spine_ui.config import DecodeConfig
from spine_ui.core.decode import Study, StudyMeta, decode_bytes, decode_file, sniff
from spine_ui.core.decode.sniff import clean_text
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


def bundled(name: str) -> Path:
    """A file shipped with pydicom's test data (never downloaded); skip when this install lacks it."""
    from pydicom.data import get_testdata_file

    try:
        path = get_testdata_file(name, download=False)
    except Exception:  # pragma: no cover - depends on the installed pydicom
        path = None
    if not path:
        pytest.skip(f"pydicom test file {name} is not bundled")
    return Path(path)


def gradient(rows: int = 64, cols: int = 64, top: int = 4095) -> np.ndarray:
    """uint16 image whose values run 0..top in row-major order."""
    return np.round(np.linspace(0, top, rows * cols)).astype(np.uint16).reshape(rows, cols)


def raises(exc_type: type[InputError], word: str, fn, *args, **kwargs) -> InputError:
    """Assert the exact error type and a distinctive word in its user message."""
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    assert type(info.value) is exc_type
    assert word.lower() in info.value.user_message.lower()
    return info.value


def png_bytes(arr: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def _assert_display(study: Study) -> None:
    assert isinstance(study.meta, StudyMeta)
    assert study.pixels.dtype == np.float32 and study.pixels.ndim == 2
    assert 0.0 <= float(study.pixels.min()) and float(study.pixels.max()) <= 1.0
    assert float(study.pixels.max()) > float(study.pixels.min())


# ---- bundled DICOM files ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name, syntax",
    [
        ("CT_small.dcm", "Explicit VR Little Endian"),
        ("MR_small_implicit.dcm", "Implicit VR Little Endian"),
        ("MR_small_bigendian.dcm", "Explicit VR Big Endian"),
        ("MR_small_RLE.dcm", "RLE Lossless"),
        ("MR_small_jp2klossless.dcm", "JPEG 2000 Image Compression (Lossless Only)"),
        ("693_J2KI.dcm", "JPEG 2000 Image Compression"),
        ("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS Lossless Image Compression"),
        ("JPGExtended.dcm", "JPEG Extended (Process 2 and 4)"),
        ("image_dfl.dcm", "Deflated Explicit VR Little Endian"),
    ],
)
def test_bundled_codecs_decode(name: str, syntax: str) -> None:
    study = decode_file(bundled(name))
    _assert_display(study)
    assert study.meta.source == "dicom"
    assert study.meta.transfer_syntax == syntax


def test_lossless_codecs_agree_pixel_for_pixel() -> None:
    names = ["MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
             "MR_small_jpeg_ls_lossless.dcm"]
    ref, *others = [decode_file(bundled(n)).pixels for n in names]
    for other in others:
        np.testing.assert_array_equal(other, ref)


def test_bundled_window_and_rescale_notes() -> None:
    mr = decode_file(bundled("MR_small.dcm")).meta
    assert "window 600/1600" in mr.notes and mr.modality == "MR"
    overlay = decode_file(bundled("examples_overlay.dcm")).meta  # Window Center [450, 200], Width [790, 443]
    assert "window 450/790" in overlay.notes and overlay.body_part == "ABDOMEN"
    ct = decode_file(bundled("CT_small.dcm")).meta
    assert "rescale 1/-1024" in ct.notes and any(n.startswith("auto window p0.5-p99.5") for n in ct.notes)


def test_jpeg_extended_12bit_stream_libjpeg_rejects_is_unsupported_codec() -> None:
    # JPEGExtended.dcm (12-bit, process 4) decodes above; JPEG-lossy.dcm's stream is rejected by libjpeg
    # ("misplaced marker") and Pillow has no 12-bit JPEG: a real unsupported-codec path.
    raises(UnsupportedCodecError, "JPEG Extended", decode_file, bundled("JPEG-lossy.dcm"))


@pytest.mark.parametrize("name", ["rtdose.dcm", "examples_ybr_color.dcm", "SC_rgb_rle_2frame.dcm"])
def test_bundled_multiframe_refused(name: str) -> None:
    raises(MultiFrameError, "multi-frame", decode_file, bundled(name))


@pytest.mark.parametrize("name", ["SC_rgb_rle.dcm", "examples_rgb_color.dcm", "examples_jpeg2k.dcm",
                                  "examples_palette.dcm", "SC_ybr_full_422_uncompressed.dcm"])
def test_bundled_colour_refused(name: str) -> None:
    raises(ColorImageError, "colour", decode_file, bundled(name))


@pytest.mark.parametrize("name", ["rtplan.dcm", "test-SR.dcm", "rtstruct.dcm"])  # rtstruct: no preamble
def test_bundled_without_pixel_data(name: str) -> None:
    raises(MissingPixelDataError, "pixel data", decode_file, bundled(name))


def test_bundled_damaged_files() -> None:
    raises(CorruptFileError, "truncated", decode_file, bundled("MR_truncated.dcm"))
    raises(CorruptFileError, "larger size", decode_file, bundled("JPEG2000-embedded-sequence-delimiter.dcm"))
    raises(CorruptFileError, "header", decode_file, bundled("badVR.dcm"))  # NumberOfFrames "1A"


# ---- written DICOM files ----------------------------------------------------------------------------

def test_vindr_like_monochrome1_jpeg2000_is_inverted(tmp_path: Path) -> None:
    stored = np.full((96, 80), 600, np.uint16)
    stored[10:30, 10:30] = 4000  # MONOCHROME1: a high stored value is displayed dark
    stored[60:80, 40:70] = 100
    path = write_dicom(tmp_path / "x.dcm", stored, photometric="MONOCHROME1", transfer_syntax="jpeg2000",
                       modality=None, body_part=None)
    study = decode_file(path)
    assert study.pixels[20, 20] < 0.05 and study.pixels[70, 50] > 0.95  # high stored -> dark
    meta = study.meta
    assert meta.modality is None and meta.body_part is None
    assert meta.photometric == "MONOCHROME1" and meta.bits_stored == 12
    assert meta.transfer_syntax == "JPEG 2000 Image Compression (Lossless Only)"
    assert meta.notes[-1] == "MONOCHROME1 inverted" and meta.original_shape == (96, 80)


def test_12bit_full_range_maps_to_unit_interval(tmp_path: Path) -> None:
    study = decode_file(write_dicom(tmp_path / "g.dcm", gradient()))
    flat = study.pixels.ravel()
    assert flat[0] == 0.0 and flat[-1] == 1.0
    assert np.all(np.diff(flat) >= 0)  # ordering kept; only the 0.5 % tails clip
    assert len(np.unique(flat)) > 3900


def test_rescale_slope_intercept_applied(tmp_path: Path) -> None:
    stored = gradient()
    path = write_dicom(tmp_path / "r.dcm", stored, rescale=(-1.0, 4095.0))  # a negative slope flips order
    study = decode_file(path)
    assert study.pixels[0, 0] == 1.0 and study.pixels[-1, -1] == 0.0
    assert "rescale -1/4095" in study.meta.notes


def test_window_in_rescaled_units_clips_outside(tmp_path: Path) -> None:
    stored = gradient(top=1999)  # HU = 2 * stored - 2000: -2000 .. 1998
    path = write_dicom(tmp_path / "w.dcm", stored, rescale=(2.0, -2000.0), window=(0.0, 1000.0))
    study = decode_file(path)
    hu = 2.0 * stored - 2000.0
    px = study.pixels
    assert np.all(px[hu <= -500] == 0.0) and np.all(px[hu > 500] == 1.0)
    inside = (hu > -400) & (hu < 400)
    np.testing.assert_allclose(px[inside], (hu[inside] + 500) / 1000, atol=2e-3)
    assert study.meta.notes == ("rescale 2/-2000", "window 0/1000")


def test_voi_lut_applied_and_preferred_over_window(tmp_path: Path) -> None:
    lut = np.round(np.sqrt(np.arange(4096) / 4095.0) * 3000 + 500).astype(np.uint16)
    stored = gradient()
    path = write_dicom(tmp_path / "v.dcm", stored, voi_lut=lut, window=(100.0, 10.0))
    study = decode_file(path)
    expected = (lut[stored].astype(np.float64) - 500) / 3000
    np.testing.assert_allclose(study.pixels, expected, atol=1e-6)
    assert study.meta.notes == ("VOI LUT",)


@pytest.mark.parametrize("syntax", ["rle", "implicit", "jpeg2000"])
def test_written_syntaxes_round_trip(tmp_path: Path, syntax: str) -> None:
    stored = (gradient() * 7 % 4096).astype(np.uint16)
    ref = decode_file(write_dicom(tmp_path / "ref.dcm", stored)).pixels
    study = decode_file(write_dicom(tmp_path / f"{syntax}.dcm", stored, transfer_syntax=syntax))
    np.testing.assert_array_equal(study.pixels, ref)


def test_bits_stored_masks_unused_high_bits(tmp_path: Path) -> None:
    stored = gradient()
    ref = decode_file(write_dicom(tmp_path / "a.dcm", stored)).pixels
    dirty = decode_file(write_dicom(tmp_path / "b.dcm", stored | np.uint16(0xF000))).pixels
    np.testing.assert_array_equal(dirty, ref)


def test_signed_pixels_keep_order(tmp_path: Path) -> None:
    signed = (gradient().astype(np.int16) - 2048)
    study = decode_file(write_dicom(tmp_path / "s.dcm", signed, pixel_representation=1))
    assert np.all(np.diff(study.pixels.ravel()) >= 0) and study.pixels.ravel()[-1] == 1.0


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # lower-case body part, as some devices write
def test_meta_has_no_patient_data_and_is_sanitised(tmp_path: Path) -> None:
    extra = {"PatientName": "Doe^Jane", "PatientID": "PID-998877", "StudyDate": "20240102",
             "InstitutionName": "St Elsewhere", "ViewPosition": "AP"}
    path = write_dicom(tmp_path / "Doe_Jane.dcm", gradient(), body_part="lspine", extra=extra)
    meta = decode_file(path).meta
    assert (meta.modality, meta.body_part, meta.view_position) == ("DX", "LSPINE", "AP")
    text = repr(meta)
    for secret in ("Doe", "PID-998877", "20240102", "Elsewhere"):
        assert secret not in text
    assert clean_text("  ab\x00c\x1b[31m" + "x" * 100) == ("abc[31m" + "x" * 100)[:64]
    assert clean_text(" \t ") is None


def test_truncated_dicom_is_corrupt(tmp_path: Path) -> None:
    for syntax in ("explicit", "jpeg2000", "rle"):
        data = write_dicom(tmp_path / f"{syntax}.dcm", gradient(), transfer_syntax=syntax).read_bytes()
        raises(CorruptFileError, "truncated", decode_bytes, data[: len(data) // 2])


def test_dicom_cut_inside_pixel_data_header_is_corrupt(tmp_path: Path) -> None:
    data = write_dicom(tmp_path / "t.dcm", gradient()).read_bytes()
    start = data.rindex(b"\xe0\x7f\x10\x00OW")
    raises(CorruptFileError, "truncated", decode_bytes, data[: start + 6])


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "p.dcm", gradient())
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    raises(MissingPixelDataError, "pixel data", decode_file, path)


def test_codec_without_installed_decoder(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "mc.dcm", gradient())
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEG2000MCLossless
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    err = raises(UnsupportedCodecError, "no installed decoder", decode_file, path)
    assert "Multi-component" in str(err)


def test_header_claiming_huge_image_refused_before_decoding(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "huge.dcm", gradient())
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = 60000, 60000  # pixel data stays 8 KiB
    ds.save_as(path)
    raises(ImageTooLargeError, "too large", decode_file, path)


def test_small_and_constant_dicom_refused(tmp_path: Path) -> None:
    raises(ImageTooSmallError, "too small", decode_file, write_dicom(tmp_path / "s.dcm", gradient(16, 16)))
    flat = np.full((64, 64), 1234, np.uint16)
    raises(InvalidPixelDataError, "no contrast", decode_file, write_dicom(tmp_path / "c.dcm", flat))


def test_dicom_without_preamble_or_file_meta(tmp_path: Path) -> None:
    ref = decode_file(write_dicom(tmp_path / "a.dcm", gradient())).pixels
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    del ds.file_meta
    ds.preamble = None
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True)
    data = buf.getvalue()
    assert data[128:132] != b"DICM" and sniff(data) == "dicom"
    np.testing.assert_array_equal(decode_bytes(data).pixels, ref)


# ---- format detection and size limits ---------------------------------------------------------------

def test_content_not_extension_decides(tmp_path: Path) -> None:
    fake_dcm = tmp_path / "scan.dcm"
    fake_dcm.write_bytes(png_bytes(gradient(40, 50, 255).astype(np.uint8)))
    assert decode_file(fake_dcm).meta.source == "raster"
    text_png = tmp_path / "scan.png"
    text_png.write_text("this is not an image\n" * 10)
    raises(UnsupportedFormatError, "unsupported", decode_file, text_png)


def test_empty_and_oversized_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    raises(EmptyFileError, "empty", decode_file, empty)
    raises(EmptyFileError, "empty", decode_bytes, b"")
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes(np.zeros((64, 64), np.uint8)) + b"\x00" * 4096)
    raises(ImageTooLargeError, "file is too large", decode_file, big, DecodeConfig(max_file_bytes=1024))


def test_garbage_after_magic_is_corrupt() -> None:
    raises(CorruptFileError, "damaged", decode_bytes, b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    raises(CorruptFileError, "truncated", decode_bytes, b"\x00" * 128 + b"DICM" + b"\xff" * 50)


def test_messages_never_contain_the_path(tmp_path: Path) -> None:
    path = tmp_path / "Doe_Jane_1970.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 50)
    with pytest.raises(InputError) as info:
        decode_file(path)
    assert "Doe" not in info.value.user_message and str(tmp_path) not in info.value.user_message


# ---- raster files -----------------------------------------------------------------------------------

def test_png_16bit_keeps_every_value(tmp_path: Path) -> None:
    arr = np.arange(4000, dtype=np.uint16).reshape(40, 100)
    study = decode_bytes(png_bytes(arr))
    flat = study.pixels.ravel()
    assert len(np.unique(flat)) == 4000 and np.all(np.diff(flat) > 0)
    assert study.meta.bits_stored == 12
    np.testing.assert_allclose(flat[-1], 3999 / 4095, rtol=1e-6)


def test_png_8bit_and_jpeg() -> None:
    arr = gradient(48, 64, 255).astype(np.uint8)
    np.testing.assert_allclose(decode_bytes(png_bytes(arr)).pixels, arr / 255.0, atol=1e-6)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    study = decode_bytes(buf.getvalue())
    assert study.meta.transfer_syntax == "JPEG"
    assert float(np.abs(study.pixels - arr / 255.0).mean()) < 0.02


def test_tiff_16bit_and_float(tmp_path: Path) -> None:
    arr = np.arange(4000, dtype=np.uint16).reshape(40, 100) * 16
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="TIFF")
    flat = decode_bytes(buf.getvalue()).pixels.ravel()
    assert len(np.unique(flat)) == 4000 and flat[-1] == pytest.approx(63984 / 65535)
    ramp = np.linspace(0.1, 0.9, 40 * 50, dtype=np.float32).reshape(40, 50)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="TIFF")
    np.testing.assert_allclose(decode_bytes(buf.getvalue()).pixels, ramp, atol=1e-7)


def test_float_tiff_with_nan_is_invalid() -> None:
    ramp = np.linspace(0, 1, 40 * 50, dtype=np.float32).reshape(40, 50)
    ramp[5, 5] = np.nan
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="TIFF")
    raises(InvalidPixelDataError, "NaN", decode_bytes, buf.getvalue())


def test_exif_rotation_is_applied() -> None:
    arr = np.zeros((64, 128), np.uint8)
    arr[:16, :16] = 255  # bright block top-left of the stored image
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    study = decode_bytes(buf.getvalue())
    assert study.shape == (128, 64)
    assert study.pixels[:16, -16:].mean() > 0.9 and study.pixels[:16, :16].mean() < 0.1
    assert any("EXIF orientation 6" in n for n in study.meta.notes)


def test_colourfulness_separates_colour_from_gray() -> None:
    skimage_data = pytest.importorskip("skimage.data")
    colour = decode_bytes(png_bytes(skimage_data.astronaut()))
    assert colour.meta.colorfulness > 30 and colour.meta.photometric == "RGB"
    camera = skimage_data.camera()
    gray = decode_bytes(png_bytes(camera))
    assert gray.meta.colorfulness == 0.0
    as_rgb = decode_bytes(png_bytes(np.stack([camera] * 3, axis=-1)))
    assert as_rgb.meta.colorfulness == 0.0
    np.testing.assert_allclose(as_rgb.pixels, gray.pixels, atol=1e-6)


def test_palette_la_rgba_modes() -> None:
    arr = gradient(40, 60, 255).astype(np.uint8)
    ref = decode_bytes(png_bytes(arr)).pixels
    pal = Image.fromarray(arr).convert("P", palette=Image.Palette.WEB)
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    assert decode_bytes(buf.getvalue()).shape == (40, 60)
    opaque = np.full_like(arr, 255)
    np.testing.assert_allclose(decode_bytes(png_bytes(np.dstack([arr, opaque]), )).pixels, ref, atol=1e-6)
    half = np.full_like(arr, 0)
    half[:, 30:] = 255
    rgba = decode_bytes(png_bytes(np.dstack([arr, arr, arr, half])))
    assert np.all(rgba.pixels[:, :30] == 0.0) and "alpha composited on black" in rgba.meta.notes


def _png_with_ihdr(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"broken") + chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(9500, 9000), (100_000, 100_000)])  # our limit; Pillow's bomb guard
def test_png_header_claiming_huge_dimensions(size: tuple[int, int]) -> None:
    raises(ImageTooLargeError, "too large" if size[0] < 10_000 else "more pixels", decode_bytes,
           _png_with_ihdr(*size))


def test_tiny_and_truncated_raster() -> None:
    raises(ImageTooSmallError, "too small", decode_bytes, png_bytes(np.zeros((1, 1), np.uint8)))
    data = png_bytes(gradient(64, 64, 255).astype(np.uint8))
    raises(CorruptFileError, "damaged", decode_bytes, data[: len(data) // 2])
    raises(InvalidPixelDataError, "no contrast", decode_bytes, png_bytes(np.full((64, 64), 7, np.uint8)))


# ---- BMP --------------------------------------------------------------------------------------------

def bmp_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="BMP")
    return buf.getvalue()


def test_bmp_gray_and_colour_decode() -> None:
    arr = gradient(48, 64, 255).astype(np.uint8)
    data = bmp_bytes(arr)
    assert sniff(data) == "bmp"
    study = decode_bytes(data, "scan.bmp")
    assert study.meta.transfer_syntax == "BMP" and study.meta.source == "raster"
    np.testing.assert_allclose(study.pixels, arr / 255.0, atol=1e-6)
    rgb = np.stack([arr, arr[::-1], np.full_like(arr, 40)], axis=-1)
    colour = decode_bytes(bmp_bytes(rgb))
    assert colour.meta.photometric == "RGB" and colour.meta.colorfulness > 0
    np.testing.assert_allclose(colour.pixels, (rgb.astype(np.float64) @ [0.299, 0.587, 0.114]) / 255.0, atol=1e-5)


def test_bmp_refusals() -> None:
    data = bmp_bytes(gradient(64, 64, 255).astype(np.uint8))
    raises(CorruptFileError, "BMP file is damaged", decode_bytes, data[: len(data) // 2])
    raises(UnsupportedFormatError, "BMP", decode_bytes, b"BM but only text follows, no bitmap header here")
    raises(ImageTooSmallError, "too small", decode_bytes, bmp_bytes(np.zeros((4, 4), np.uint8)))
    huge = bytearray(data)
    huge[18:26] = struct.pack("<ii", 9500, 9000)  # width, height in the BITMAPINFOHEADER
    raises(ImageTooLargeError, "too large", decode_bytes, bytes(huge))
