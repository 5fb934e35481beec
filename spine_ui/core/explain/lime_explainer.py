"""LIME on the ensemble probability: SLIC superpixels computed once, perturbations scored in batches by all
ensemble members (identity view, no TTA) at ``ExplainConfig.lime_size`` px, fixed seed -> deterministic.

Scoring at a reduced size is what makes hundreds of samples affordable on a CPU (one 384 px ensemble pass is
57 GFLOPs); the explanation is therefore of the ensemble's behaviour at that resolution."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from spine_ui.bundle.store import Bundle
from spine_ui.config import ExplainConfig
from spine_ui.core.contract import Placement, normalise, sigmoid, square_input, weighted_vote

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class LimeResult:
    """``weights``: signed superpixel weights for "abnormal" mapped onto the enhanced image (H x W)."""

    weights: np.ndarray
    segments: np.ndarray  # superpixel labels on the square explanation grid
    n_samples: int
    score: float  # R^2 of LIME's local linear model
    placement: Placement


def _quiet(iterable, *args, **kwargs):
    return iterable


def superpixels(square: np.ndarray, n_segments: int) -> np.ndarray:
    """SLIC superpixels of a grayscale uint8 image (skimage)."""
    from skimage.segmentation import slic

    return slic(square.astype(np.float32) / 255.0, n_segments=n_segments, compactness=0.1,
                channel_axis=None, start_label=0, enforce_connectivity=True)


def ensemble_scorer(bundle: Bundle, size: int, progress: Progress | None,
                    total: int) -> Callable[[np.ndarray], np.ndarray]:
    """A LIME ``classifier_fn``: N x S x S x 3 images (S = ``size``) -> N x 2 [P(normal), P(abnormal)]."""
    pp = bundle.manifest.preprocess
    done = [0]

    def score(images: np.ndarray) -> np.ndarray:  # perturbed squares: the second half of model_input
        batch = normalise(np.clip(images[..., 0], 0, 255).astype(np.uint8), pp)
        probs = {}
        for entry in bundle.classifiers:
            logits, _ = bundle.classifier(entry.arch)(batch)
            probs[entry.arch] = sigmoid(logits)
        p = weighted_vote(probs, bundle.manifest.weights)  # works elementwise on arrays
        done[0] += len(images)
        if progress:
            progress(min(done[0], total), total)
        return np.stack([1.0 - p, p], axis=1)

    return score


def explain_lime(enhanced: np.ndarray, bundle: Bundle, cfg: ExplainConfig | None = None,
                 n_samples: int | None = None, progress: Progress | None = None) -> LimeResult:
    """Run LIME for the "abnormal" output of the ensemble on ``enhanced`` (CLAHE uint8 image)."""
    from lime import lime_image

    lime_image.tqdm = _quiet  # lime draws a console progress bar per call; we report progress ourselves
    cfg = cfg or bundle.manifest.explain
    n = int(n_samples or cfg.lime_samples)
    square, placement = square_input(enhanced, cfg.lime_size, bundle.manifest.preprocess)
    segments = superpixels(square, cfg.lime_segments)
    rgb = np.repeat(square[:, :, None], 3, axis=2)
    explainer = lime_image.LimeImageExplainer(random_state=cfg.lime_seed, verbose=False)
    explanation = explainer.explain_instance(
        rgb, ensemble_scorer(bundle, cfg.lime_size, progress, n), labels=(1,), top_labels=None, hide_color=None,
        num_features=int(segments.max()) + 1, num_samples=n, batch_size=cfg.lime_batch,
        segmentation_fn=lambda _img: segments, random_seed=cfg.lime_seed)
    weight_of = dict(explanation.local_exp[1])
    square_map = np.vectorize(lambda s: weight_of.get(s, 0.0), otypes=[np.float32])(segments)
    h, w = enhanced.shape[:2]
    crop = placement.crop(square_map)
    image_map = cv2.resize(crop, (w, h), interpolation=cv2.INTER_NEAREST)
    return LimeResult(image_map, segments, n, float(explanation.score[1] if isinstance(explanation.score, dict)
                                                      else explanation.score), placement)
