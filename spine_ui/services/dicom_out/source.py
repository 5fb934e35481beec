"""The source image as DICOM outputs refer to it: identity copied, UIDs made conforming, SOP class filled in.

Decision for messy sources (VinDr-SpineXR files carry hex-string UIDs such as ``"9f1c..."`` and no SOP Class
UID): a UID that is not a valid DICOM UID (digits and dots, <= 64 chars) is replaced by a *derived* conforming
one, ``2.25.<int>`` from a SHA-512 of the original string (:func:`derived_uid`). The
mapping is deterministic, so every object written for the same source lands in the same (derived) study and a
re-run produces the same references; the SR says that derived references were used. Copying the hex value
would make every output fail validation (and some archives reject it), and a random UID would scatter the
results of one study over several. A missing SOP Class UID is taken from the File Meta Information when
present, else inferred from Modality (CR -> Computed Radiography, anything else -> Digital X-Ray For
Presentation: the file passed the radiograph gate).

Raster inputs (PNG/JPEG/TIFF) have no DICOM identity: the outputs get a new study with an "unknown patient"
identity, and the decoded image itself is wrapped as a Secondary Capture in that study so the SR's SCOORD has
an image to refer to in the source's own pixel grid.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

CR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
UNKNOWN_PATIENT_NAME = "UNKNOWN^PATIENT"
UNKNOWN_PATIENT_ID = "UNKNOWN"

#: Patient and study attributes copied from the source (identity belongs in the objects, never in logs).
IDENTITY_KEYWORDS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
                     "PatientAge", "OtherPatientIDsSequence", "StudyDate", "StudyTime", "AccessionNumber",
                     "StudyID", "ReferringPhysicianName", "StudyDescription", "SpecificCharacterSet")
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "AccessionNumber", "StudyID", "ReferringPhysicianName")


@dataclass(frozen=True)
class SourceRef:
    """What the outputs need from the source. ``dataset`` is a clean, conforming stand-in for the source image
    (identity, UIDs, SOP class, Rows/Columns) used as highdicom's evidence / reference dataset."""

    dataset: Dataset
    from_dicom: bool
    derived_uids: bool  # some UID of the source was non-conforming and was replaced by a derived one
    inferred_sop_class: bool
    pixels: np.ndarray | None = None  # raster inputs only: the image wrapped as the "source" SC

    @property
    def unknown_patient(self) -> bool:
        return not self.from_dicom

    def notes(self) -> list[str]:
        """Plain statements for the SR about how the source was referenced."""
        out = []
        if not self.from_dicom:
            out.append("Source was a raster image (PNG/JPEG/TIFF) without DICOM identity: this report and its "
                       "images belong to a new study with an unknown patient identity; the referenced source "
                       "image is a Secondary Capture of the uploaded picture.")
        if self.derived_uids:
            out.append("Source UIDs were not valid DICOM UIDs; references use UIDs derived from them "
                       "(2.25 + SHA-512 of the original value).")
        if self.inferred_sop_class:
            out.append("Source had no SOP Class UID; it was inferred from the modality.")
        return out


def read_source(data: bytes) -> Dataset | None:
    """The source header (no pixels), or None when the bytes are not DICOM (PNG/JPEG/TIFF)."""
    from spine_ui.core.decode.sniff import sniff

    if sniff(data) != "dicom":
        return None
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)


def derived_uid(*parts: str) -> UID:
    """A deterministic conforming UID: ``2.25.`` + the first 128 bits of SHA-512 over ``parts``."""
    digest = hashlib.sha512("\x1f".join(parts).encode("utf-8")).hexdigest()
    return UID(f"2.25.{int(digest[:32], 16)}")


def conform_uid(value: object, kind: str) -> tuple[UID, bool]:
    """``(uid, derived)``: the value when it is a valid UID, else a deterministic 2.25 UID derived from it."""
    text = str(value or "").strip()
    if text and UID(text).is_valid:
        return UID(text), False
    return derived_uid("spine_ui-source", kind, text), True


def _sop_class(ds: Dataset) -> tuple[UID, bool]:
    cls = str(ds.get("SOPClassUID", "") or "")
    if cls and UID(cls).is_valid:
        return UID(cls), False
    meta_cls = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
    if meta_cls and UID(meta_cls).is_valid:
        return UID(meta_cls), True
    return (CR_IMAGE if str(ds.get("Modality", "")).upper() == "CR" else DX_FOR_PRESENTATION), True


def from_dicom(src: Dataset, rows: int, cols: int) -> SourceRef:
    """A conforming stand-in for a DICOM source (see module docstring for the UID rule)."""
    ref = Dataset()
    for kw in IDENTITY_KEYWORDS:
        if kw in src:
            ref.add(src[kw])
    for kw in _TYPE2:
        if kw not in ref:
            setattr(ref, kw, None)
    derived = False
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        uid, d = conform_uid(src.get(kw), kw)
        setattr(ref, kw, uid)
        derived |= d
    ref.SOPClassUID, inferred = _sop_class(src)
    ref.Modality = str(src.get("Modality", "") or ("CR" if ref.SOPClassUID == CR_IMAGE else "DX"))
    ref.Rows, ref.Columns = int(src.get("Rows", rows) or rows), int(src.get("Columns", cols) or cols)
    if src.get("PatientOrientation"):
        ref.PatientOrientation = src.PatientOrientation
    return SourceRef(ref, from_dicom=True, derived_uids=derived, inferred_sop_class=inferred)


def from_raster(pixels: np.ndarray, key: str) -> SourceRef:
    """New study, unknown patient; UIDs derived from the file's content hash ``key`` (stable across runs)."""
    ref = Dataset()
    ref.PatientName = UNKNOWN_PATIENT_NAME
    ref.PatientID = UNKNOWN_PATIENT_ID
    for kw in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber",
               "StudyID", "ReferringPhysicianName"):
        setattr(ref, kw, None)
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ref, kw, derived_uid("spine_ui-raster", kw, key))
    from pydicom.uid import SecondaryCaptureImageStorage

    ref.SOPClassUID = SecondaryCaptureImageStorage
    ref.Modality = "OT"
    ref.Rows, ref.Columns = (int(s) for s in pixels.shape[:2])
    img = np.uint8(np.clip(np.asarray(pixels, np.float32), 0, 1) * 255 + 0.5) if pixels.dtype != np.uint8 else pixels
    return SourceRef(ref, from_dicom=False, derived_uids=False, inferred_sop_class=False, pixels=img)
