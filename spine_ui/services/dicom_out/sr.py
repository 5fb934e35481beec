"""The Comprehensive SR (TID 1500 measurement report) of one finding, and reading its lesions back.

Content: one image-level measurement group (ensemble probability, gate, each member's probability with the
member as its algorithm, the verdict as a qualitative evaluation) and one planar ROI group per lesion (type,
detector confidence, the box as a closed POLYLINE SCOORD in the source image's pixel coordinates). The bundle
name/version and ``trained`` flag are the algorithm identification of every group; the research-use
statement and any note about how the source was referenced are TEXT items of the root container.

Lesion types use a private coding scheme (``99SPINEXR``, code value ``LESION<class id>``): VinDr-SpineXR's
classes have no agreed SNOMED/RadLex mapping and a wrong standard code is worse than an honest local one.
"""
from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from spine_ui.config import LESION_CLASSES, display_name
from spine_ui.core.finding import DISCLAIMER, UNTRAINED_WARNING, Finding
from spine_ui.services.dicom_out.source import derived_uid

SCHEME = "99SPINEXR"
MANUFACTURER = "SpineXR Triage (research use only)"


def code(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=value, scheme_designator=SCHEME, meaning=meaning)


PROCEDURE = code("SPXR-TRIAGE", "AI triage of a spine radiograph")
TRIAGE_FINDING = code("SPXR-FINDING", "Spine radiograph triage")
ENSEMBLE_P = code("SPXR-PENS", "Ensemble probability of abnormality")
GATE = code("SPXR-GATE", "Decision threshold (gate)")
MEMBER_P = code("SPXR-PMEMBER", "Ensemble member probability of abnormality")
CONFIDENCE = code("SPXR-CONF", "Detector confidence")
VERDICT = code("SPXR-VERDICT", "Triage verdict")
NOTE = code("SPXR-NOTE", "Note")
REJECTED = code("SPXR-REJECTED", "Rejected (not a spine radiograph)")
NO_UNITS = codes.UCUM.NoUnits


def lesion_code(class_id: int) -> hd.sr.CodedConcept:
    return code(f"LESION{class_id}", display_name(LESION_CLASSES[class_id]))


@dataclass(frozen=True)
class LesionRecord:
    """A lesion as read back from an SR."""

    label: str
    class_id: int
    confidence: float
    box: tuple[float, float, float, float]


def _algorithm(finding: Finding, member: str | None = None) -> hd.sr.AlgorithmIdentification:
    b = finding.bundle
    params = [f"trained={'true' if b.trained else 'false'}", f"runtime={finding.runtime}"[:64]]
    name = f"{b.name} {member}" if member else b.name
    return hd.sr.AlgorithmIdentification(name=name[:64], version=str(b.version)[:64], parameters=params)


def rectangle(box: tuple[float, float, float, float]) -> np.ndarray:
    """A closed POLYLINE (5 points, first == last) for an x_min, y_min, x_max, y_max box."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


def _triage_group(finding: Finding, ref: Dataset) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    measurements = [hd.sr.Measurement(name=GATE, value=float(finding.gate), unit=NO_UNITS)]
    if finding.probability is not None:
        measurements.insert(0, hd.sr.Measurement(name=ENSEMBLE_P, value=float(finding.probability), unit=NO_UNITS))
    for m in finding.models:
        measurements.append(hd.sr.Measurement(name=MEMBER_P, value=float(m.probability), unit=NO_UNITS,
                                              algorithm_id=_algorithm(finding, m.arch)))
    verdict = (codes.SCT.Abnormal if finding.verdict == "abnormal" else codes.SCT.Normal
               if finding.verdict == "normal" else REJECTED)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid(ref, "triage"), identifier="triage"),
        finding_type=TRIAGE_FINDING, algorithm_id=_algorithm(finding), measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=VERDICT, value=verdict)],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ref)])


def _lesion_group(finding: Finding, ref: Dataset, index: int) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    les = finding.lesions[index]
    region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=rectangle(les.box),
                               source_image=hd.sr.SourceImageForRegion.from_source_image(ref))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid(ref, f"lesion{index}"),
                                                     identifier=f"lesion {index + 1}"),
        referenced_region=region, finding_type=lesion_code(les.class_id), algorithm_id=_algorithm(finding),
        measurements=[hd.sr.Measurement(name=CONFIDENCE, value=float(les.confidence), unit=NO_UNITS)])


def _uid(ref: Dataset, kind: str) -> hd.UID:
    return hd.UID(derived_uid("spine_ui-sr", kind, str(ref.SOPInstanceUID)))


def build_sr(finding: Finding, ref: Dataset, notes: list[str], *, series_uid: str, sop_uid: str,
             series_number: int = 9901) -> hd.sr.ComprehensiveSR:
    """The SR document for ``finding`` about the image ``ref`` (a conforming stand-in, see ``source``)."""
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_uid(ref, "device"), name="SpineXR Triage", model_name=finding.bundle.name[:64]))
    groups = [_triage_group(finding, ref)] + [_lesion_group(finding, ref, i) for i in range(len(finding.lesions))]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=PROCEDURE, imaging_measurements=groups)
    texts = ["Research use only, not for diagnosis. " + DISCLAIMER]
    if not finding.trained:
        texts.append(UNTRAINED_WARNING)
    texts.extend(notes)
    root = report[0]
    for text in texts:
        root.ContentSequence.append(hd.sr.TextContentItem(name=NOTE, value=text,
                                                          relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    doc = hd.sr.ComprehensiveSR(
        evidence=[ref], content=report[0], series_instance_uid=series_uid, series_number=series_number,
        sop_instance_uid=sop_uid, instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
        series_description="SpineXR Triage AI report (research use only)")
    scheme = Dataset()
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "SpineXR Triage local codes"
    scheme.CodingSchemeResponsibleOrganization = "SpineXR Triage project"
    doc.CodingSchemeIdentificationSequence = [scheme]
    return doc


def read_lesions(sr: Dataset) -> list[LesionRecord]:
    """The lesions of an SR written by :func:`build_sr` (type, confidence, box), in document order."""
    doc = hd.sr.ComprehensiveSR.from_dataset(sr)
    report = doc.content
    out = []
    for group in report.get_planar_roi_measurement_groups():
        ft = group.finding_type
        if ft is None or ft.scheme_designator != SCHEME or not ft.value.startswith("LESION"):
            continue
        class_id = int(ft.value[len("LESION"):])
        pts = np.asarray(group.roi.value, dtype=float)
        box = (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))
        conf = group.get_measurements(name=CONFIDENCE)
        out.append(LesionRecord(LESION_CLASSES[class_id], class_id, float(conf[0].value) if conf else float("nan"),
                                box))
    return out


def read_texts(sr: Dataset) -> list[str]:
    """The root container's TEXT notes (research-use statement, identity notes)."""
    return [str(item.TextValue) for item in sr.ContentSequence
            if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == NOTE.value]
