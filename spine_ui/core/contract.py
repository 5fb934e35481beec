"""The model contract: how a CLAHE working image becomes classifier input, and how outputs are combined.

Training (``spine_ui.train``) and serving (``spine_ui.core.triage``, ``spine_ui.core.explain``) both import
from here, so the two cannot drift apart:

- ``TTA_VIEWS``: the named test-time views on the square uint8 input (``identity`` first);
- ``model_input``: enhanced image -> N x 3 x S x S float32 batch (one row per view) + its ``Placement``;
- ``square_input`` / ``normalise``: the two halves of ``model_input`` (LIME perturbs the square in between);
- ``rotate``: the one rotation warp (TTA views and training augmentation);
- ``sigmoid`` and ``weighted_vote``: logit -> probability, the ensemble's soft vote.

The preprocessing policy itself is ``spine_ui.config.PreprocessConfig``; a bundle's manifest records the one
it was trained with, and serving reads it from there.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence, TypeVar

import cv2
import numpy as np

from spine_ui.config import PreprocessConfig
from spine_ui.core.preprocess import Placement, enhance, normalise, to_square

__all__ = ["View", "TTA_VIEWS", "rotate", "check_views", "square_input", "normalise", "model_input",
           "to_model_input", "preprocess", "sigmoid", "weighted_vote", "Placement"]

View = Callable[[np.ndarray], np.ndarray]
P = TypeVar("P", float, np.ndarray)


def rotate(img: np.ndarray, angle: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """Rotate (degrees, counter-clockwise) and scale about the centre; bilinear, replicated border."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, scale)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _affine(angle: float = 0.0, scale: float = 1.0) -> View:
    return lambda img: rotate(img, angle, scale)


#: Registry of test-time views on the square uint8 model input. View 0 must be "identity" (CAM uses it).
TTA_VIEWS: dict[str, View] = {
    "identity": lambda img: img,
    "hflip": lambda img: np.ascontiguousarray(img[:, ::-1]),
    "rot+5": _affine(angle=5.0),
    "rot-5": _affine(angle=-5.0),
    "zoom0.9": _affine(scale=0.9),
    "zoom1.1": _affine(scale=1.1),
}


def check_views(views: Sequence[str]) -> tuple[str, ...]:
    """Validate a view list: non-empty, ``identity`` first, every name registered."""
    views = tuple(views)
    if not views or views[0] != "identity":
        raise ValueError("the first TTA view must be 'identity'")
    unknown = [v for v in views if v not in TTA_VIEWS]
    if unknown:
        raise ValueError(f"unknown TTA views {unknown}; known: {sorted(TTA_VIEWS)}")
    return views


def square_input(enhanced: np.ndarray, size: int,
                 preprocess_cfg: PreprocessConfig = PreprocessConfig()) -> tuple[np.ndarray, Placement]:
    """Enhanced uint8 image -> (size x size uint8 square per ``preprocess_cfg.resize``, placement)."""
    return to_square(enhanced, size, preprocess_cfg.resize)


def model_input(enhanced: np.ndarray, size: int, views: Sequence[str] = ("identity",),
                preprocess_cfg: PreprocessConfig = PreprocessConfig()) -> tuple[np.ndarray, Placement]:
    """The classifier batch for one enhanced image: float32 [len(views), 3, size, size], and the placement
    of the image inside the square (to map activation maps back onto it)."""
    views = check_views(views)
    square, placement = square_input(enhanced, size, preprocess_cfg)
    stack = np.stack([TTA_VIEWS[v](square) for v in views])
    return normalise(stack, preprocess_cfg), placement


def to_model_input(enhanced: np.ndarray, size: int,
                   preprocess_cfg: PreprocessConfig = PreprocessConfig()) -> tuple[np.ndarray, Placement]:
    """One identity view without the batch axis: (float32 3 x size x size, placement)."""
    batch, placement = model_input(enhanced, size, ("identity",), preprocess_cfg)
    return batch[0], placement


def preprocess(pixels: np.ndarray, size: int, preprocess_cfg: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """Raw pixels in [0, 1] -> enhance -> identity-view classifier input (3 x size x size)."""
    return to_model_input(enhance(pixels, preprocess_cfg), size, preprocess_cfg)[0]


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    """Logistic function in float64."""
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def weighted_vote(probabilities: Mapping[str, P], weights: Mapping[str, float]) -> P:
    """Soft voting: sum_m w_m p_m / sum_m w_m (scalars or arrays of per-image probabilities)."""
    total = sum(weights[a] for a in probabilities)
    return sum(weights[a] * p for a, p in probabilities.items()) / total
