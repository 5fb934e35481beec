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
#: Runs one scoring batch and returns its result, e.g. on the scheduler's explain lane (None: inline).
BatchRunner = Callable[[Callable[[], np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class LimeResult:
    """``weights``: signed superpixel weights for "abnormal" mapped onto the enhanced image (H x W)."""

    weights: np.ndarray
    segments: np.ndarray  # superpixel labels on the square explanation grid
    n_samples: int
    score: float  # R^2 of LIME's local linear model
    placement: Placement
    segment_weights: np.ndarray | None = None  # weight per superpixel label (0 for labels LIME left out)


def _quiet(iterable, *args, **kwargs):
    return iterable


def superpixels(square: np.ndarray, n_segments: int) -> np.ndarray:
    """SLIC superpixels of a grayscale uint8 image (skimage)."""
    from skimage.segmentation import slic

    return slic(square.astype(np.float32) / 255.0, n_segments=n_segments, compactness=0.1,
                channel_axis=None, start_label=0, enforce_connectivity=True)


def ensemble_scorer(bundle: Bundle, size: int, progress: Progress | None, total: int,
                    run_batch: BatchRunner | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A LIME ``classifier_fn``: N x S x S x 3 images (S = ``size``) -> N x 2 [P(normal), P(abnormal)].

    Each batch is scored by ``bundle.lime_classifier`` (bf16 or fp32, see ``bundle.runtime``), through
    ``run_batch`` when given (the scheduler's explain lane, which may raise ``TaskCancelledError``)."""
    pp = bundle.manifest.preprocess
    done = [0]

    def ensemble(images: np.ndarray) -> np.ndarray:  # perturbed squares: the second half of model_input
        batch = normalise(np.clip(images[..., 0], 0, 255).astype(np.uint8), pp)
        probs = {}
        for entry in bundle.classifiers:
            logits, _ = bundle.lime_classifier(entry.arch)(batch)
            probs[entry.arch] = sigmoid(logits)
        return weighted_vote(probs, bundle.manifest.weights)  # works elementwise on arrays

    def score(images: np.ndarray) -> np.ndarray:
        p = run_batch(lambda: ensemble(images)) if run_batch else ensemble(images)
        done[0] += len(images)
        if progress:
            progress(min(done[0], total), total)
        return np.stack([1.0 - p, p], axis=1)

    return score


def explain_lime(enhanced: np.ndarray, bundle: Bundle, cfg: ExplainConfig | None = None,
                 n_samples: int | None = None, progress: Progress | None = None, *,
                 run_batch: BatchRunner | None = None, batch_size: int | None = None) -> LimeResult:
    """Run LIME for the "abnormal" output of the ensemble on ``enhanced`` (CLAHE uint8 image).

    ``batch_size`` (default the bundle's ``lime_batch``) perturbations are scored per ``run_batch`` call."""
    from lime import lime_image

    lime_image.tqdm = _quiet  # lime draws a console progress bar per call; we report progress ourselves
    cfg = cfg or bundle.manifest.explain
    n = int(n_samples or cfg.lime_samples)
    square, placement = square_input(enhanced, cfg.lime_size, bundle.manifest.preprocess)
    segments = superpixels(square, cfg.lime_segments)
    rgb = np.repeat(square[:, :, None], 3, axis=2)
    explainer = lime_image.LimeImageExplainer(random_state=cfg.lime_seed, verbose=False)
    explanation = explainer.explain_instance(
        rgb, ensemble_scorer(bundle, cfg.lime_size, progress, n, run_batch), labels=(1,), top_labels=None,
        hide_color=None, num_features=int(segments.max()) + 1, num_samples=n,
        batch_size=int(batch_size or cfg.lime_batch),
        segmentation_fn=lambda _img: segments, random_seed=cfg.lime_seed)
    weight_of = dict(explanation.local_exp[1])
    per_segment = np.array([weight_of.get(s, 0.0) for s in range(int(segments.max()) + 1)], np.float32)
    square_map = per_segment[segments]
    h, w = enhanced.shape[:2]
    crop = placement.crop(square_map)
    image_map = cv2.resize(crop, (w, h), interpolation=cv2.INTER_NEAREST)
    return LimeResult(image_map, segments, n, float(explanation.score[1] if isinstance(explanation.score, dict)
                                                      else explanation.score), placement, per_segment)
