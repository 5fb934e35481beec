"""The imagecodecs JPEG 2000 fast path gives exactly pydicom's (pylibjpeg-openjpeg) pixels, or steps aside."""
from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest
from pydicom.uid import UID

from spine_ui.config import DecodeConfig
from spine_ui.core.decode import decode_bytes
from spine_ui.core.decode.dicom import read_header
from spine_ui.core.decode.j2k import decode_j2k_fast, siz_component
from spine_ui.synth.dicom_writer import write_dicom
from spine_ui.synth.phantom import render_spine, to_stored

pytest.importorskip("imagecodecs")


def _phantom(height: int, seed: int) -> np.ndarray:
    img, _ = render_spine(np.random.default_rng(seed), ["Osteophytes"], height=height)
    return img


def _cases(tmp_path):
    img = _phantom(512, 3)
    s12 = to_stored(img, 12)
    yield "12-bit", write_dicom(tmp_path / "a.dcm", s12, bits_stored=12, transfer_syntax="jpeg2000")
    yield "12-bit MONOCHROME1", write_dicom(tmp_path / "b.dcm", to_stored(img, 12, monochrome1=True),
                                            bits_stored=12, photometric="MONOCHROME1", transfer_syntax="jpeg2000")
    signed = (s12.astype(np.int32) - 2048).astype(np.int16)
    yield "signed 12-bit", write_dicom(tmp_path / "c.dcm", signed, bits_stored=12, pixel_representation=1,
                                       transfer_syntax="jpeg2000", rescale=(1.0, 2048.0))
    yield "16-bit", write_dicom(tmp_path / "d.dcm", to_stored(img, 16), bits_stored=16, transfer_syntax="jpeg2000")
    yield "8-bit odd size", write_dicom(tmp_path / "e.dcm", to_stored(img, 8)[:301, :199].astype(np.uint8),
                                        bits_stored=8, transfer_syntax="jpeg2000")


def _both(path):
    ds = pydicom.dcmread(path)
    h = read_header(ds)
    fast = decode_j2k_fast(ds, UID(ds.file_meta.TransferSyntaxUID), h.rows, h.cols, h.bits_stored,
                           h.bits_allocated)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = pydicom.dcmread(path).pixel_array
    return fast, ref


def test_fast_path_pixels_identical_to_pydicom(tmp_path):
    for name, path in _cases(tmp_path):
        fast, ref = _both(path)
        assert fast is not None, f"{name}: fast path should apply"
        assert fast.dtype == ref.dtype and fast.shape == ref.shape, name
        assert np.array_equal(fast, ref), name
        with_fast = decode_bytes(path.read_bytes(), cfg=DecodeConfig())
        assert with_fast.meta.photometric in ("MONOCHROME1", "MONOCHROME2")


def test_study_identical_with_and_without_fast_path(tmp_path, monkeypatch):
    for name, path in _cases(tmp_path):
        data = path.read_bytes()
        fast = decode_bytes(data)
        monkeypatch.setenv("SPINE_J2K_THREADS", "0")
        slow = decode_bytes(data)
        monkeypatch.delenv("SPINE_J2K_THREADS")
        assert np.array_equal(fast.pixels, slow.pixels) and fast.meta == slow.meta, name


def test_pydicom_test_files_identical_or_fallback():
    from pydicom.data import get_testdata_file

    checked = 0
    for name in ("JPEG2000.dcm", "MR_small_jp2klossless.dcm", "J2K_pixelrep_mismatch.dcm", "693_J2KI.dcm"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = get_testdata_file(name)
        if path is None:
            continue
        fast, ref = _both(path)
        if fast is not None:
            assert fast.dtype == ref.dtype and np.array_equal(fast, ref), name
        checked += 1
    if not checked:
        pytest.skip("pydicom's JPEG 2000 test files are not installed")


def test_siz_parser_refuses_what_it_does_not_know():
    assert siz_component(b"\x00" * 64) is None  # not a raw codestream (e.g. a JP2 box wrapper)
    siz = bytearray(b"\xff\x4f\xff\x51" + b"\x00" * 60)
    siz[8:12], siz[12:16] = (200).to_bytes(4, "big"), (100).to_bytes(4, "big")
    siz[40:42], siz[42] = (1).to_bytes(2, "big"), 0x8B  # one component, signed, 12 bits
    assert siz_component(bytes(siz)) == (100, 200, 12, True)
    siz[40:42] = (3).to_bytes(2, "big")
    assert siz_component(bytes(siz)) is None  # colour
