"""Write small, valid DICOM Part-10 files for tests and demos (pydicom 3).

The writer stores the given values as-is (no scaling): the caller chooses ``bits_stored``, the photometric
interpretation and the optional Modality LUT (rescale) and VOI (window or LUT) attributes.
"""
from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")
_SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "jpeg2000": JPEG2000Lossless,
    "rle": RLELossless,
}


def _check_pixels(pixels: np.ndarray, bits_stored: int, pixel_representation: int) -> np.ndarray:
    arr = np.asarray(pixels)
    if arr.ndim != 2:
        raise ValueError("write_dicom expects a 2-D array")
    if arr.dtype.kind not in "ui" or arr.dtype.itemsize > 2:
        raise ValueError("pixels must be an 8- or 16-bit integer array")
    if not 1 <= bits_stored <= 8 * arr.dtype.itemsize:
        raise ValueError("bits_stored does not fit the array dtype")
    want = np.dtype(f"{'i' if pixel_representation else 'u'}{arr.dtype.itemsize}")
    return np.ascontiguousarray(arr.astype(want, copy=False))


def _file_meta(sop_class: UID, sop_instance: UID, syntax: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _base_dataset(modality: str | None, body_part: str | None) -> Dataset:
    sop_class = DX_FOR_PRESENTATION if modality in (None, "DX") else SECONDARY_CAPTURE
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.ContentDate = _dt.date.today().strftime("%Y%m%d")
    if modality is not None:
        ds.Modality = modality
    if body_part is not None:
        ds.BodyPartExamined = body_part
    return ds


def _set_image_module(ds: Dataset, arr: np.ndarray, bits_stored: int, photometric: str, pixel_rep: int) -> None:
    ds.Rows, ds.Columns = (int(s) for s in arr.shape)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 * arr.dtype.itemsize
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = pixel_rep


def _set_voi(ds: Dataset, rescale, window, voi_lut: np.ndarray | None) -> None:
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = (f"{float(v):g}" for v in rescale)
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = (f"{float(v):g}" for v in window)
    if voi_lut is not None:
        ds.VOILUTSequence = Sequence([_voi_lut_item(voi_lut)])


def _voi_lut_item(lut: np.ndarray, first_mapped: int = 0) -> Dataset:
    data = np.asarray(lut).astype(np.uint16).ravel()
    top = int(data.max()) if data.size else 0
    bits = 8 if top < 256 else max(10, top.bit_length())  # PS3.3 C.11.2.1.1: 8 or 10-16 bits
    item = Dataset()
    item.LUTDescriptor = [len(data) % 65536, first_mapped, bits]
    item.LUTExplanation = "SYNTHETIC"
    item.LUTData = data.astype("<u2").tobytes()
    return item


def _store_pixels(ds: Dataset, arr: np.ndarray, syntax: UID) -> None:
    if syntax.is_compressed:
        plugin = "pydicom" if syntax == RLELossless else "pylibjpeg"
        ds.compress(syntax, arr, encoding_plugin=plugin, generate_instance_uid=False)
    else:
        ds.PixelData = arr.tobytes()


def write_dicom(
    path: str | os.PathLike,
    pixels: np.ndarray,
    *,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    transfer_syntax: str = "explicit",
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    voi_lut: np.ndarray | None = None,
    modality: str | None = "DX",
    body_part: str | None = None,
    extra: dict[str, object] | None = None,
    pixel_representation: int = 0,
) -> Path:
    """Write ``pixels`` (stored values, 2-D uint8/uint16, or int8/int16 when signed) as a DICOM file.

    ``transfer_syntax``: "explicit" | "implicit" (little endian, uncompressed), "jpeg2000" (lossless) or
    "rle". ``rescale`` = (slope, intercept); ``window`` = (center, width); ``voi_lut`` = LUT values for a
    VOI LUT Sequence item starting at stored value 0. ``modality``/``body_part`` None omit the tags.
    ``extra`` sets any further keywords (e.g. ``{"PatientName": "Doe^Jane"}``).
    """
    if transfer_syntax not in _SYNTAXES:
        raise ValueError(f"transfer_syntax must be one of {sorted(_SYNTAXES)}")
    syntax = _SYNTAXES[transfer_syntax]
    arr = _check_pixels(pixels, bits_stored, pixel_representation)
    ds = _base_dataset(modality, body_part)
    ds.file_meta = _file_meta(ds.SOPClassUID, ds.SOPInstanceUID, syntax)
    _set_image_module(ds, arr, bits_stored, photometric, pixel_representation)
    _set_voi(ds, rescale, window, voi_lut)
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    _store_pixels(ds, arr, syntax)
    out = Path(path)
    ds.save_as(out, enforce_file_format=True)
    return out
