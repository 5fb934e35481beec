"""DERNet triage: three timm classifiers, test-time augmentation batched into one call per model, and a
weighted soft vote compared against the gate (P >= gate -> abnormal). The input assembly, the TTA views and
the vote are the model contract (``spine_ui.core.contract``), shared with training."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spine_ui.bundle.store import Bundle
from spine_ui.core.contract import model_input, sigmoid, weighted_vote
from spine_ui.core.preprocess import Placement


@dataclass(frozen=True)
class ModelOutput:
    arch: str
    weight: float
    probability: float  # mean over TTA views
    logit: float  # identity view
    view_probabilities: tuple[float, ...]


@dataclass(frozen=True)
class TriageResult:
    probability: float
    gate: float
    models: tuple[ModelOutput, ...]
    feature_maps: dict[str, np.ndarray] = field(repr=False)  # identity-view pre-pool maps [C, h, w]
    placements: dict[str, Placement] = field(repr=False)

    @property
    def abnormal(self) -> bool:
        return self.probability >= self.gate

    @property
    def pooled_features(self) -> np.ndarray:
        """Identity-view global-average-pooled features of all members, concatenated (for the OOD layer)."""
        return np.concatenate([self.feature_maps[m.arch].mean(axis=(1, 2)) for m in self.models])

    def to_dict(self) -> dict:
        return {"probability": self.probability, "gate": self.gate, "abnormal": self.abnormal,
                "models": {m.arch: {"probability": m.probability, "weight": m.weight,
                                    "views": list(m.view_probabilities)} for m in self.models}}


def run_triage(enhanced: np.ndarray, bundle: Bundle, tta: bool = True) -> TriageResult:
    """Classify one enhanced (CLAHE uint8) image with every ensemble member."""
    man = bundle.manifest
    views = man.triage.tta_views if tta else ("identity",)
    outputs, maps, placements = [], {}, {}
    for entry in man.classifiers:
        batch, placement = model_input(enhanced, entry.input_size, views, man.preprocess)
        logits, feats = bundle.classifier(entry.arch)(batch)
        probs = sigmoid(logits)
        outputs.append(ModelOutput(entry.arch, entry.weight, float(probs.mean()), float(logits[0]),
                                   tuple(float(p) for p in probs)))
        maps[entry.arch] = feats[0]
        placements[entry.arch] = placement
    p = float(weighted_vote({o.arch: o.probability for o in outputs}, {o.arch: o.weight for o in outputs}))
    return TriageResult(p, man.triage.gate, tuple(outputs), maps, placements)
