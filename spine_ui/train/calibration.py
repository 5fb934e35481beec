"""Calibration in training, fitted on the out-of-fold (OOF) predictions only (never the test split):

1. a temperature per member on its OOF TTA-view logits (p = mean_v sigmoid(z_v / T), as served);
2. the weighted soft vote of the calibrated members (the selected weights);
3. Platt scaling on the logit of that vote (it has a bias, which a vote of probabilities needs).

The gate is then Youden's J on the calibrated OOF ensemble. The same OOF data chose the weights, so the OOF
ECE after calibration is optimistic; the report shows the test split's ECE beside it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from spine_ui.core.calibration import (BundleCalibration, PlattScaling, TemperatureScaling, logit,
                                       plot_reliability, reliability)
from spine_ui.core.contract import weighted_vote

BINS = 10


def fit_bundle_calibration(views: Mapping[str, np.ndarray], labels: Sequence[int],
                           weights: Mapping[str, float]) -> BundleCalibration:
    """``views``: arch -> N x V OOF probabilities per TTA view. Returns the manifest's calibration."""
    y = np.asarray(labels)
    members = {a: TemperatureScaling.fit(logit(v), y) for a, v in views.items()}
    vote = weighted_vote({a: members[a].apply(logit(v)) for a, v in views.items()}, dict(weights))
    ensemble = PlattScaling.fit(logit(vote), y)
    return BundleCalibration(members, ensemble, None, {})


def calibrated_scores(cal: BundleCalibration, views: Mapping[str, np.ndarray],
                      weights: Mapping[str, float]) -> np.ndarray:
    """The served (calibrated) ensemble probability of N images from their per-view member probabilities."""
    vote = weighted_vote({a: cal.member_probability(a, logit(v)) for a, v in views.items()}, dict(weights))
    return np.asarray(cal.ensemble_probability(vote))


def ece_summary(labels: Sequence[int], before: Sequence[float], after: Sequence[float],
                bins: int = BINS) -> dict[str, Any]:
    """ECE and reliability tables of the uncalibrated vote (``before``) and the calibrated ensemble."""
    rb, ra = reliability(labels, before, bins), reliability(labels, after, bins)
    return {"n": int(len(labels)), "bins": bins, "ece_before": rb.ece, "ece_after": ra.ece,
            "reliability_before": rb.to_json(), "reliability_after": ra.to_json()}


def write_reliability(out_dir: Path, split: str, labels: Sequence[int], before: Sequence[float],
                      after: Sequence[float], title: str, bins: int = BINS) -> Path:
    """``reliability_<split>.png``: before/after curves in one diagram."""
    return plot_reliability({"uncalibrated vote": (labels, before), "calibrated": (labels, after)},
                            Path(out_dir) / f"reliability_{split}.png", title, bins)
