"""Choice of the ensemble weights and the gate from out-of-fold (OOF) predictions.

- Weights: exhaustive grid over the simplex in ``step`` increments (0.05 -> 231 candidates for three
  models; each weight >= 0, sum 1) maximising the OOF AUROC of the soft vote ``spine_ui.core.contract.weighted_vote``.
  Ties (common: AUROC is a rank statistic) go to the candidate nearest (Euclidean) to the default weights,
  then to the first in enumeration order, so the result is deterministic.
- Gate: Youden's J on the OOF ensemble probabilities with the chosen weights
  (``spine_ui.train.metrics.youden_threshold``).

The test split never enters here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np

from spine_ui.core.contract import weighted_vote
from spine_ui.train.metrics import auroc, youden_threshold


def simplex_grid(n: int, step: float = 0.05) -> Iterator[tuple[float, ...]]:
    """All n-tuples of non-negative multiples of ``step`` summing to 1 (lexicographic, descending first)."""
    units = int(round(1.0 / step))
    if n < 1 or units < 1 or not np.isclose(units * step, 1.0):
        raise ValueError(f"step must divide 1 (got {step}) and n must be >= 1")

    def parts(remaining: int, k: int) -> Iterator[tuple[int, ...]]:
        if k == 1:
            yield (remaining,)
            return
        for first in range(remaining, -1, -1):
            for rest in parts(remaining - first, k - 1):
                yield (first, *rest)

    for p in parts(units, n):
        yield tuple(round(u * step, 10) for u in p)


@dataclass(frozen=True)
class WeightSearch:
    """Result of the weight grid search."""
    weights: dict[str, float]
    auroc: float
    n_candidates: int
    n_best: int  # candidates that tie at the best AUROC
    default_auroc: float  # OOF AUROC of the default weights, for comparison


def search_weights(probabilities: Mapping[str, np.ndarray], labels: Sequence[int],
                   defaults: Mapping[str, float], step: float = 0.05) -> WeightSearch:
    """Grid-search ensemble weights maximising the AUROC of the weighted soft vote."""
    archs = list(probabilities)
    y = np.asarray(labels)
    probs = {a: np.asarray(probabilities[a], dtype=np.float64) for a in archs}
    default_vec = np.array([float(defaults.get(a, 0.0)) for a in archs])
    best: list[tuple[float, tuple[float, ...]]] = []
    best_auc = -np.inf
    n = 0
    for w in simplex_grid(len(archs), step):
        n += 1
        score = auroc(y, weighted_vote(probs, dict(zip(archs, w))))
        if not np.isfinite(score):
            raise ValueError("the OOF labels hold a single class; AUROC is undefined")
        if score > best_auc + 1e-12:
            best_auc, best = score, [(float(np.linalg.norm(np.array(w) - default_vec)), w)]
        elif abs(score - best_auc) <= 1e-12:
            best.append((float(np.linalg.norm(np.array(w) - default_vec)), w))
    dist = min(d for d, _ in best)
    chosen = next(w for d, w in best if d <= dist + 1e-12)
    default_auc = auroc(y, weighted_vote(probs, {a: float(defaults.get(a, 0.0)) for a in archs}))
    return WeightSearch(dict(zip(archs, (round(x, 4) for x in chosen))), float(best_auc), n, len(best),
                        float(default_auc))


def select(probabilities: Mapping[str, np.ndarray], labels: Sequence[int], defaults: Mapping[str, float],
           step: float = 0.05) -> dict:
    """Weights by grid search, then the gate by Youden's J on the weighted OOF vote (JSON-friendly)."""
    ws = search_weights(probabilities, labels, defaults, step)
    ensemble = weighted_vote({a: np.asarray(p, dtype=np.float64) for a, p in probabilities.items()}, ws.weights)
    yj = youden_threshold(labels, ensemble)
    return {"weights": ws.weights, "gate": round(yj["threshold"], 6), "oof_auroc": ws.auroc,
            "oof_auroc_default_weights": ws.default_auroc, "candidates": ws.n_candidates, "ties": ws.n_best,
            "step": step, "youden": yj,
            "per_model_oof_auroc": {a: auroc(labels, p) for a, p in probabilities.items()}}
