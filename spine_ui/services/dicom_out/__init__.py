"""DICOM outputs of one analysis: a Comprehensive SR (TID 1500) and Secondary Capture images, built with highdicom.

``build(finding, source_bytes, images)`` -> :class:`DicomOutputs` (pydicom datasets, nothing written);
``outputs_for(analysis, source_bytes)`` renders the pictures from an :class:`~spine_ui.core.pipeline.Analysis`
first. Patient/study identity is copied from the source into the objects (that is where it belongs) and is
never logged; see ``source`` for how non-conforming UIDs and raster inputs are handled.

Output UIDs are derived (2.25 + SHA-512) from the source image's UID, the bundle name/version and the object
kind, so analysing the same image with the same bundle again produces the same instances: a PACS that
receives them twice replaces rather than duplicates them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from spine_ui._io import atomic_path
from spine_ui.core.finding import Finding
from spine_ui.services.dicom_out import source as _source
from spine_ui.services.dicom_out.sc import build_sc, caption_lines, with_caption
from spine_ui.services.dicom_out.source import SourceRef
from spine_ui.services.dicom_out.sr import LesionRecord, build_sr, read_lesions, read_texts

__all__ = ["DicomOutputs", "OverlayImages", "LesionRecord", "build", "outputs_for", "read_lesions", "read_texts"]

# highdicom logs SOP Instance UIDs at INFO level; our logs carry no identifiers
logging.getLogger("highdicom").setLevel(logging.WARNING)

SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902


@dataclass(frozen=True)
class OverlayImages:
    """RGB uint8 pictures (any size): the boxes overlay, the fused Grad-CAM, LIME when computed."""

    boxes: np.ndarray
    gradcam: np.ndarray | None = None
    lime: np.ndarray | None = None


@dataclass(frozen=True)
class DicomOutputs:
    """The SR and SC datasets of one study. ``source_sc`` is the wrapped raster source (raster inputs only)."""

    sr: Dataset
    sc: tuple[Dataset, ...]
    study_uid: str
    unknown_patient: bool
    derived_uids: bool
    source_sc: Dataset | None = None
    names: tuple[str, ...] = field(default=())

    def datasets(self) -> list[tuple[str, Dataset]]:
        """``(file name, dataset)`` for every object, the SR first."""
        items = [("sr.dcm", self.sr)] + list(zip(self.names, self.sc))
        if self.source_sc is not None:
            items.append(("source_sc.dcm", self.source_sc))
        return items

    def write(self, folder: str | Path) -> list[Path]:
        """Write every object as a DICOM Part-10 file (``sr.dcm``, ``sc_*.dcm``) into ``folder``."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, ds in self.datasets():
            with atomic_path(out / name) as tmp:
                ds.save_as(tmp, enforce_file_format=True)
            paths.append(out / name)
        return paths


def _derived(ref: Dataset, finding: Finding, kind: str) -> UID:
    b = finding.bundle
    return _source.derived_uid("spine_ui-out", kind, str(ref.SOPInstanceUID), b.name, str(b.version))


def reference_for(finding: Finding, source_bytes: bytes) -> SourceRef:
    """The conforming stand-in for the source image (DICOM header, or the decoded raster)."""
    ds = _source.read_source(source_bytes)
    if ds is not None:
        rows, cols = (finding.image.height, finding.image.width) if finding.image else (0, 0)
        return _source.from_dicom(ds, rows, cols)
    import hashlib

    from spine_ui.core.decode import decode_bytes

    study = decode_bytes(source_bytes)
    return _source.from_raster(study.pixels, finding.key or hashlib.sha256(source_bytes).hexdigest())


def build(finding: Finding, source_bytes: bytes, images: OverlayImages) -> DicomOutputs:
    """SR + SC objects for an accepted, triaged ``finding`` of the file ``source_bytes``."""
    if not finding.accepted or finding.probability is None:
        raise ValueError("DICOM outputs need an accepted, triaged study")
    src = reference_for(finding, source_bytes)
    ref = src.dataset
    sr = build_sr(finding, ref, src.notes(), series_uid=_derived(ref, finding, "sr-series"),
                  sop_uid=_derived(ref, finding, "sr"), series_number=SR_SERIES_NUMBER)
    pictures = [("sc_boxes.dcm", "Lesion boxes", images.boxes), ("sc_gradcam.dcm", "Grad-CAM (fused)", images.gradcam),
                ("sc_lime.dcm", "LIME", images.lime)]
    scs, names = [], []
    sc_series = _derived(ref, finding, "sc-series")
    for name, title, rgb in pictures:
        if rgb is None:
            continue
        lines = caption_lines(finding, title)
        scs.append(build_sc(ref, with_caption(rgb, lines), series_uid=sc_series,
                            sop_uid=_derived(ref, finding, name), instance_number=len(scs) + 1,
                            description=" | ".join(lines), series_number=SC_SERIES_NUMBER))
        names.append(name)
    source_sc = None
    if src.pixels is not None:
        source_sc = build_sc(ref, src.pixels, series_uid=ref.SeriesInstanceUID, sop_uid=ref.SOPInstanceUID,
                             instance_number=1, series_number=1,
                             description="Uploaded raster image (no DICOM identity), wrapped for reference")
        source_sc.BurnedInAnnotation = "NO"
    return DicomOutputs(sr=sr, sc=tuple(scs), study_uid=str(ref.StudyInstanceUID),
                        unknown_patient=src.unknown_patient, derived_uids=src.derived_uids, source_sc=source_sc,
                        names=tuple(names))


def overlays_for(analysis) -> OverlayImages:
    """The pictures of an analysis (boxes on the enhanced image, fused Grad-CAM, LIME when computed)."""
    from spine_ui.core.overlays import draw_lesions, heatmap_overlay, lime_overlay

    a = analysis
    boxes = draw_lesions(a.enhanced, a.lesions or (), a.study.shape)
    cam = heatmap_overlay(a.enhanced, a.cam.fused) if a.cam is not None else None
    lime = lime_overlay(a.enhanced, a.lime.weights) if a.lime is not None else None
    return OverlayImages(boxes, cam, lime)


def outputs_for(analysis, source_bytes: bytes) -> DicomOutputs:
    """:func:`build` for an analysed study (accepted and triaged)."""
    return build(analysis.finding(), source_bytes, overlays_for(analysis))
