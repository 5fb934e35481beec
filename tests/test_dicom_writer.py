"""spine_ui.synth.dicom_writer: valid Part-10 files that round-trip through pydicom."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from spine_ui.synth.dicom_writer import DX_FOR_PRESENTATION, SECONDARY_CAPTURE, write_dicom

PIXELS = (np.arange(48 * 40).reshape(48, 40) % 4096).astype(np.uint16)


@pytest.mark.parametrize("syntax, uid", [("explicit", "1.2.840.10008.1.2.1"), ("implicit", "1.2.840.10008.1.2"),
                                         ("jpeg2000", "1.2.840.10008.1.2.4.90"), ("rle", "1.2.840.10008.1.2.5")])
def test_part10_round_trip(tmp_path: Path, syntax: str, uid: str) -> None:
    path = write_dicom(tmp_path / "a.dcm", PIXELS, transfer_syntax=syntax)
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM"
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == uid
    assert ds.SOPClassUID == DX_FOR_PRESENTATION == ds.file_meta.MediaStorageSOPClassUID
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 12, 11)
    np.testing.assert_array_equal(ds.pixel_array, PIXELS)


def test_optional_tags_and_extra(tmp_path: Path) -> None:
    bare = pydicom.dcmread(write_dicom(tmp_path / "a.dcm", PIXELS, modality=None))
    assert "Modality" not in bare and "BodyPartExamined" not in bare
    sc = pydicom.dcmread(write_dicom(tmp_path / "b.dcm", PIXELS, modality="OT", body_part="LSPINE",
                                     extra={"PatientName": "Doe^Jane"}, rescale=(2, -5), window=(100, 50)))
    assert sc.SOPClassUID == SECONDARY_CAPTURE and sc.BodyPartExamined == "LSPINE"
    assert str(sc.PatientName) == "Doe^Jane" and float(sc.RescaleSlope) == 2 and float(sc.WindowWidth) == 50
    assert bare.SOPInstanceUID != sc.SOPInstanceUID


def test_voi_lut_and_8bit(tmp_path: Path) -> None:
    lut = np.arange(4096, dtype=np.uint16)[::-1]
    ds = pydicom.dcmread(write_dicom(tmp_path / "v.dcm", PIXELS, voi_lut=lut))
    assert list(ds.VOILUTSequence[0].LUTDescriptor) == [4096, 0, 12]
    small = pydicom.dcmread(write_dicom(tmp_path / "u8.dcm", (PIXELS // 16).astype(np.uint8), bits_stored=8,
                                        transfer_syntax="rle"))
    assert small.BitsAllocated == 8 and small.pixel_array.dtype == np.uint8


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_dicom(tmp_path / "x.dcm", PIXELS, transfer_syntax="jpegls")
    with pytest.raises(ValueError):
        write_dicom(tmp_path / "x.dcm", PIXELS.astype(np.float32))
    with pytest.raises(ValueError):
        write_dicom(tmp_path / "x.dcm", PIXELS, bits_stored=17)
