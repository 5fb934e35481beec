"""Cross-validation folds grouped by study: the views of one study never sit on both sides of a split."""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

Fold = tuple[np.ndarray, np.ndarray]
_RETRIES = 10


def _fold_count(groups: np.ndarray, y: np.ndarray, n_folds: int) -> int:
    """Most folds (<= n_folds) such that every class can appear in every validation fold."""
    classes = np.unique(y)
    if classes.size < 2:
        raise ValueError("grouped_folds needs at least two label classes; all labels are "
                         f"{classes[0] if classes.size else 'missing'}")
    per_class = {c: np.unique(groups[y == c]).size for c in classes}
    k = min(n_folds, np.unique(groups).size, *per_class.values())
    if k < 2:
        raise ValueError("too few studies for cross-validation: need at least 2 studies per class, have "
                         + ", ".join(f"{c}: {n}" for c, n in per_class.items()))
    if k < n_folds:
        warnings.warn(f"only {k} folds possible (studies per class: {per_class}); asked for {n_folds}",
                      stacklevel=3)
    return k


def _covers(folds: list[Fold], y: np.ndarray) -> bool:
    classes = np.unique(y)
    return all(np.unique(y[val]).size == classes.size for _, val in folds)


def grouped_folds(study_ids: Sequence[str], labels: Sequence[int], n_folds: int = 5,
                  seed: int = 42) -> list[Fold]:
    """Stratified, study-grouped K-fold (sklearn ``StratifiedGroupKFold``, shuffled).

    Returns ``[(train_idx, val_idx), ...]``. No study appears in two validation folds or on both sides of
    one split. Fewer folds are used (with a warning) when some class has fewer studies than ``n_folds``;
    fewer than 2 studies per class is an error. When a shuffle leaves a class out of a validation fold,
    the next seeds are tried (deterministically) before accepting it.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    groups = np.asarray(study_ids)
    y = np.asarray(labels)
    if groups.shape[0] != y.shape[0]:
        raise ValueError(f"{groups.shape[0]} study ids but {y.shape[0]} labels")
    k = _fold_count(groups, y, n_folds)
    folds: list[Fold] = []
    for attempt in range(_RETRIES):
        cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed + attempt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # class-count warnings: handled above
            folds = [(tr.astype(np.int64), va.astype(np.int64)) for tr, va in cv.split(np.zeros(len(y)), y, groups)]
        if _covers(folds, y):
            return folds
    warnings.warn("some validation folds miss a class (too few studies per class)", stacklevel=2)
    return folds
