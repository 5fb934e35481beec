"""Secondary Capture images (highdicom ``SCImage``): the result pictures with a burned-in caption."""
from __future__ import annotations

import cv2
import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from spine_ui.core.finding import Finding

MANUFACTURER = "SpineXR Triage (research use only)"


def caption_lines(finding: Finding, title: str) -> list[str]:
    """What is burned into every picture: what it shows, verdict, probability vs gate, UNTRAINED when so."""
    verdict = (finding.verdict or "not triaged").upper()
    p = "n/a" if finding.probability is None else f"{finding.probability:.3f}"
    first = f"{title}: {verdict}  P = {p} vs gate {finding.gate:.3f}"
    if not finding.trained:
        first += "  UNTRAINED"
    return [first, "Research use only - not for diagnosis"]


def with_caption(rgb: np.ndarray, lines: list[str]) -> np.ndarray:
    """``rgb`` with a black band on top holding ``lines`` in white (and UNTRAINED in red), scaled to width."""
    h, w = rgb.shape[:2]
    scale = max(0.35, w / 1400)
    thick = max(1, round(scale * 1.6))
    line_h = int(32 * scale) + 4
    band = np.zeros((line_h * len(lines) + 8, w, 3), np.uint8)
    for i, text in enumerate(lines):
        colour = (255, 80, 80) if "UNTRAINED" in text else (255, 255, 255)
        cv2.putText(band, text, (6, line_h * (i + 1) - 2), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)
    return np.ascontiguousarray(np.concatenate([band, np.asarray(rgb, np.uint8)], axis=0))


def _orientation(ref: Dataset) -> tuple[tuple[str, str], bool]:
    """The source's Patient Orientation when it has two values; else a placeholder that is blanked later
    (Patient Orientation is Type 2 in the General Image module: empty means unknown)."""
    po = ref.get("PatientOrientation")
    if po is not None and not isinstance(po, str) and len(po) == 2 and all(str(v) for v in po):
        try:
            return (str(po[0]), str(po[1])), True
        except Exception:  # noqa: BLE001
            pass
    return ("L", "F"), False


def build_sc(ref: Dataset, pixels: np.ndarray, *, series_uid: str, sop_uid: str, instance_number: int,
             description: str, series_number: int = 9902) -> hd.sc.SCImage:
    """One SC image (RGB or MONOCHROME2 uint8) in the study of ``ref``, identity copied from it."""
    arr = np.ascontiguousarray(pixels, dtype=np.uint8)
    photometric = "RGB" if arr.ndim == 3 else "MONOCHROME2"
    orientation, known = _orientation(ref)
    try:
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=ref, pixel_array=arr, photometric_interpretation=photometric, bits_allocated=8,
            coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=series_number,
            sop_instance_uid=sop_uid, instance_number=instance_number, manufacturer=MANUFACTURER,
            patient_orientation=orientation, series_description="SpineXR Triage AI images (research use only)")
    except ValueError:  # an odd orientation value in the source: fall back to unknown
        known = False
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=ref, pixel_array=arr, photometric_interpretation=photometric, bits_allocated=8,
            coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=series_number,
            sop_instance_uid=sop_uid, instance_number=instance_number, manufacturer=MANUFACTURER,
            patient_orientation=("L", "F"), series_description="SpineXR Triage AI images (research use only)")
    if not known:
        sc.PatientOrientation = None
    if "Laterality" not in sc:  # Type 2C in General Series; a spine is not a paired structure
        sc.Laterality = None
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = description[:10240]
    sc.DerivationDescription = description[:1024]
    return sc
