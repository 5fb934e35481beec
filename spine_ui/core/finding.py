"""``Finding``: the typed, frozen, JSON-safe result of one analysis (no patient identifiers).

Calibration keys: ``calibrated`` (bool: the bundle carries a calibration, so ``probability`` and ``gate`` are on
the calibrated scale) and, only when calibrated, ``probability_uncalibrated`` (the plain weighted soft vote of the
raw member probabilities; ``models`` always holds the raw member probabilities).

Built once per analysis by ``Analysis.finding()`` (or ``Finding.error`` for a file that could not be read);
the UI, CLI, worklist, store, DICOM writers and PACS loop all consume it. ``to_dict()`` is exactly the CLI's
``--json`` object and ``from_dict`` reads it back (the store keeps findings as that JSON).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from spine_ui.core.detect import Lesion
from spine_ui.core.explain.faithfulness import ExplanationChecks
from spine_ui.core.gate import LayerResult

DISCLAIMER = ("Research use only - not a medical device. Not for diagnosis; every result must be reviewed by a "
              "qualified radiologist.")
UNTRAINED_WARNING = ("UNTRAINED MODEL WEIGHTS: this bundle has random weights; probabilities, boxes and "
                     "explanations carry no clinical meaning.")


@dataclass(frozen=True)
class MemberProbability:
    """One ensemble member's vote: mean probability over the TTA views, its weight, each view's probability."""

    arch: str
    probability: float
    weight: float
    views: tuple[float, ...] = ()


@dataclass(frozen=True)
class ImageInfo:
    """Non-identifying facts about the decoded image."""

    width: int
    height: int
    source: str
    photometric: str | None = None
    bits_stored: int | None = None
    transfer_syntax: str | None = None
    processing: tuple[str, ...] = ()
    modality: str | None = None  # DICOM Modality, ViewPosition, BodyPartExamined (technical, not identifying)
    view_position: str | None = None
    body_part: str | None = None


@dataclass(frozen=True)
class BundleInfo:
    name: str
    version: str
    trained: bool


@dataclass(frozen=True)
class LimeSummary:
    samples: int
    score: float


@dataclass(frozen=True)
class Finding:
    """One study's result. ``verdict``: "abnormal" | "normal" | "rejected" | "unreadable" | "error" | None
    (accepted, triage not run yet)."""

    accepted: bool
    reason: str | None
    verdict: str | None
    probability: float | None
    gate: float
    abnormal: bool | None
    bundle: BundleInfo
    runtime: str
    models: tuple[MemberProbability, ...] = ()
    lesions: tuple[Lesion, ...] = ()
    detector_ran: bool = False
    gradcam: str | None = None
    lime: LimeSummary | None = None
    gate_layers: tuple[LayerResult, ...] = ()
    image: ImageInfo | None = None
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    key: str | None = None  # sha256 of the file's bytes (not part of the JSON: the store and UI address by it)
    error: bool = False  # the file could not be read or the analysis failed
    #: the bundle is calibrated: ``probability`` and ``gate`` are on the calibrated scale and
    #: ``probability_uncalibrated`` is the plain weighted vote (JSON key present only when calibrated)
    calibrated: bool = False
    probability_uncalibrated: float | None = None
    #: ``explanations.checks`` (core/explain/faithfulness.py): deletion/insertion faithfulness of Grad-CAM
    #: and LIME, LIME's seed stability, per-lesion Grad-CAM box ratios (in ``lesions`` order); None if none ran
    checks: ExplanationChecks | None = None

    @property
    def trained(self) -> bool:
        return self.bundle.trained

    @property
    def member(self) -> dict[str, MemberProbability]:
        return {m.arch: m for m in self.models}

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """The CLI's ``--json`` object, key for key."""
        out: dict[str, Any] = {
            "accepted": self.accepted,
            "reason": self.reason,
            "verdict": self.verdict,
            "probability": _round(self.probability),
            "calibrated": self.calibrated,
            **({"probability_uncalibrated": _round(self.probability_uncalibrated)} if self.calibrated else {}),
            "gate": self.gate,
            "abnormal": self.abnormal,
            "models": {m.arch: {"probability": round(m.probability, 6), "weight": m.weight,
                                "views": [round(v, 6) for v in m.views]} for m in self.models},
            "lesions": [les.to_dict() for les in self.lesions],
            "detector_ran": self.detector_ran,
            "explanations": {
                "gradcam": self.gradcam,
                "lime": {"samples": self.lime.samples, "score": round(self.lime.score, 4)} if self.lime else None,
                "checks": self.checks.to_dict() if self.checks else None,
            },
            "gate_layers": [layer.to_dict() for layer in self.gate_layers],
            "image": ({"width": self.image.width, "height": self.image.height, "source": self.image.source,
                       "photometric": self.image.photometric, "bits_stored": self.image.bits_stored,
                       "transfer_syntax": self.image.transfer_syntax, "processing": list(self.image.processing),
                       "modality": self.image.modality, "view_position": self.image.view_position,
                       "body_part": self.image.body_part}
                      if self.image else None),
            "bundle": {"name": self.bundle.name, "version": self.bundle.version, "trained": self.bundle.trained},
            "runtime": self.runtime,
        }
        if self.error:
            out["error"] = True
        else:
            out["timings_ms"] = {k: round(v, 1) for k, v in self.timings_ms.items()}
        out["disclaimer"] = DISCLAIMER
        if not self.bundle.trained and not self.error:
            out["warning"] = UNTRAINED_WARNING
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str | None = None) -> "Finding":
        """Read back a ``to_dict()`` object (e.g. from the store)."""
        expl = d.get("explanations") or {}
        lime = expl.get("lime")
        img = d.get("image")
        return cls(
            accepted=bool(d["accepted"]), reason=d.get("reason"), verdict=d.get("verdict"),
            probability=d.get("probability"), gate=float(d["gate"]), abnormal=d.get("abnormal"),
            bundle=BundleInfo(**d["bundle"]), runtime=d.get("runtime", ""),
            models=tuple(MemberProbability(arch, m["probability"], m["weight"], tuple(m.get("views", ())))
                         for arch, m in (d.get("models") or {}).items()),
            lesions=tuple(Lesion(l["label"], l["name"], int(l["class_id"]), float(l["confidence"]),
                                 tuple(float(v) for v in l["box"])) for l in d.get("lesions") or ()),
            detector_ran=bool(d.get("detector_ran")), gradcam=expl.get("gradcam"),
            lime=LimeSummary(int(lime["samples"]), float(lime["score"])) if lime else None,
            gate_layers=tuple(LayerResult(**layer) for layer in d.get("gate_layers") or ()),
            image=(ImageInfo(img["width"], img["height"], img["source"], img.get("photometric"),
                             img.get("bits_stored"), img.get("transfer_syntax"), tuple(img.get("processing", ())),
                             img.get("modality"), img.get("view_position"), img.get("body_part"))
                   if img else None),
            timings_ms=dict(d.get("timings_ms") or {}), key=key, error=bool(d.get("error")),
            checks=ExplanationChecks.from_dict(expl["checks"]) if expl.get("checks") else None,
            calibrated=bool(d.get("calibrated")), probability_uncalibrated=d.get("probability_uncalibrated"),
        )

    @classmethod
    def failure(cls, message: str, bundle: BundleInfo, gate: float, runtime: str, verdict: str = "unreadable",
                key: str | None = None, calibrated: bool = False) -> "Finding":
        """The finding of a file that could not be read ("unreadable") or whose analysis failed ("error")."""
        return cls(accepted=False, reason=message, verdict=verdict, probability=None, gate=gate, abnormal=None,
                   bundle=bundle, runtime=runtime, key=key, error=True, calibrated=calibrated)


def _round(p: float | None) -> float | None:
    return None if p is None else round(p, 6)
