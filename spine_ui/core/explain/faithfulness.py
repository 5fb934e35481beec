"""Explanation checks: is a saliency map faithful to the model, is LIME stable, where does Grad-CAM sit
relative to each lesion box. Sanity checks, not proof that an explanation is right.

Regions are LIME's SLIC superpixels on the square ``ExplainConfig.lime_size`` input (computed once), so both
maps are judged on the same units and at LIME's small, affordable size. A map ranks the superpixels by its
mean value inside each.

- **Deletion**: remove the ``k/steps`` most salient superpixels (k = 0..steps; removed = replaced by a
  Gaussian-blurred copy of the image, sigma = size/12) and re-score P(abnormal) with the bundle's served
  probability (``spine_ui.core.triage.ensemble_probability``, identity view). Area under the curve over
  the removed fraction (trapezoid, in [0, 1]). The same for ``random_orders`` random orders (mean).
  ``deletion_faithfulness = random_auc - deletion_auc``: > 0 when P falls faster as the map's regions go.
- **Insertion**: start from the blurred image and put the most salient superpixels back;
  ``insertion_faithfulness = insertion_auc - random_auc``: > 0 when P rises faster.
- **LIME stability**: Spearman rank correlation of the superpixel weights of two LIME runs with different
  seeds (same samples, same superpixels); 1 = the same ranking.
- **Per-lesion Grad-CAM**: ``box_cam_ratio`` = (share of the fused map's mass inside the box) / (share of the
  image area the box covers); 1 = no more than chance, > 1 = the map concentrates on the box.

Cost: every curve shares its two end points; the random orders are shared by both maps; all images are
scored in batches of ``ExplainConfig.lime_batch``: (2 maps + random_orders) x 2 curves x (steps - 1) + 2
images (92 for 10 steps and 3 orders), plus the second LIME run.

Every model call (each scoring batch, each batch of the second LIME run) goes through ``run_batch`` when given:
the scheduler's explain lane, like LIME's own batches, stoppable by the same cancel token. Without it (the CLI)
the batches run inline; the same batches either way, so the numbers are the same.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from spine_ui.bundle.store import Bundle
from spine_ui.config import ExplainConfig
from spine_ui.core.contract import normalise, square_input
from spine_ui.core.explain.lime_explainer import BatchRunner

Scorer = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class CurveCheck:
    """Deletion and insertion AUCs of one map, the random-order baselines and the faithfulness scores."""

    deletion_auc: float
    deletion_random_auc: float
    insertion_auc: float
    insertion_random_auc: float

    @property
    def deletion_faithfulness(self) -> float:
        return self.deletion_random_auc - self.deletion_auc

    @property
    def insertion_faithfulness(self) -> float:
        return self.insertion_auc - self.insertion_random_auc

    def to_dict(self) -> dict[str, float]:
        """AUCs rounded to 4 places, the scores computed from the rounded AUCs (a JSON round trip is exact)."""
        r = CurveCheck(*(round(float(v), 4) for v in (self.deletion_auc, self.deletion_random_auc,
                                                      self.insertion_auc, self.insertion_random_auc)))
        return {"deletion_auc": r.deletion_auc, "deletion_random_auc": r.deletion_random_auc,
                "deletion_faithfulness": round(r.deletion_faithfulness, 4), "insertion_auc": r.insertion_auc,
                "insertion_random_auc": r.insertion_random_auc,
                "insertion_faithfulness": round(r.insertion_faithfulness, 4)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CurveCheck":
        return cls(float(d["deletion_auc"]), float(d["deletion_random_auc"]), float(d["insertion_auc"]),
                   float(d["insertion_random_auc"]))


@dataclass(frozen=True)
class ExplanationChecks:
    """The Finding's ``explanations.checks``; a part is None when its explanation was not computed."""

    gradcam: CurveCheck | None = None
    lime: CurveCheck | None = None
    lime_stability: float | None = None
    lesions: tuple[float, ...] = ()  # box_cam_ratio per lesion, in the Finding's lesion order
    steps: int = 0
    random_orders: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"gradcam": self.gradcam.to_dict() if self.gradcam else None,
                "lime": self.lime.to_dict() if self.lime else None,
                "lime_stability": _num(self.lime_stability, 4),
                "lesions": [{"box_cam_ratio": _num(r, 3)} for r in self.lesions],
                "steps": self.steps, "random_orders": self.random_orders}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExplanationChecks":
        return cls(CurveCheck.from_dict(d["gradcam"]) if d.get("gradcam") else None,
                   CurveCheck.from_dict(d["lime"]) if d.get("lime") else None,
                   d.get("lime_stability"),
                   tuple(float("nan") if x["box_cam_ratio"] is None else float(x["box_cam_ratio"])
                         for x in d.get("lesions") or ()),
                   int(d.get("steps") or 0), int(d.get("random_orders") or 0))


def _num(v: float | None, digits: int) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), digits)


# --------------------------------------------------------------------------- building blocks
def bundle_scorer(bundle: Bundle, batch: int = 16, run_batch: BatchRunner | None = None) -> Scorer:
    """N x S x S uint8 squares -> N served P(abnormal) (identity view, calibrated when the bundle is), scored
    ``batch`` images per model call, each call through ``run_batch`` when given (e.g. the explain lane)."""
    from spine_ui.core.triage import ensemble_probability

    pp = bundle.manifest.preprocess

    def score_batch(images: np.ndarray) -> np.ndarray:
        x = normalise(images, pp)
        logits = {e.arch: np.asarray(bundle.classifier(e.arch)(x)[0], dtype=np.float64).ravel()
                  for e in bundle.classifiers}
        return np.atleast_1d(ensemble_probability(logits, bundle))

    def score(images: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(images), batch):
            chunk = images[i:i + batch]
            out.append(run_batch(lambda: score_batch(chunk)) if run_batch else score_batch(chunk))
        return np.concatenate(out) if out else np.zeros(0)

    return score


def blurred(square: np.ndarray) -> np.ndarray:
    """The removal baseline: a strong Gaussian blur (sigma = size / 12) of the square image."""
    return cv2.GaussianBlur(square, (0, 0), sigmaX=max(1.0, square.shape[0] / 12.0))


def region_order(saliency: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Superpixel labels, most salient first (mean of ``saliency`` in each; stable ties)."""
    labels = np.arange(int(segments.max()) + 1)
    sums = np.bincount(segments.ravel(), weights=saliency.ravel().astype(np.float64), minlength=len(labels))
    counts = np.maximum(np.bincount(segments.ravel(), minlength=len(labels)), 1)
    return labels[np.argsort(-(sums / counts), kind="stable")]


def _fractions(n_regions: int, steps: int) -> list[int]:
    return [int(round(k * n_regions / steps)) for k in range(steps + 1)]


def _curve_images(square: np.ndarray, base: np.ndarray, segments: np.ndarray, order: np.ndarray,
                  steps: int, insert: bool) -> list[np.ndarray]:
    """The steps - 1 inner images of one curve (the end points are the original and the baseline)."""
    out = []
    for n in _fractions(len(order), steps)[1:-1]:
        mask = np.isin(segments, order[:n])
        out.append(np.where(mask, square, base) if insert else np.where(mask, base, square))
    return out


def _auc(scores: Sequence[float]) -> float:
    y = np.asarray(scores, dtype=np.float64)
    return float(np.trapezoid(y, dx=1.0 / (len(y) - 1)))


def curve_checks(square: np.ndarray, segments: np.ndarray, maps: dict[str, np.ndarray], score: Scorer,
                 steps: int = 10, random_orders: int = 3, seed: int = 0) -> dict[str, CurveCheck]:
    """Deletion/insertion AUCs of each named saliency map (S x S, on ``square``), against random orders
    shared by all maps; one scoring call for every image."""
    if steps < 2 or random_orders < 1:
        raise ValueError("need steps >= 2 and at least one random order")
    base = blurred(square)
    rng = np.random.default_rng(seed)
    n_regions = int(segments.max()) + 1
    orders = {name: region_order(m, segments) for name, m in maps.items()}
    orders.update({f"_random{i}": rng.permutation(n_regions) for i in range(random_orders)})
    images, index = [square, base], {}
    for name, order in orders.items():
        for insert in (False, True):
            inner = _curve_images(square, base, segments, order, steps, insert)
            index[(name, insert)] = range(len(images), len(images) + len(inner))
            images.extend(inner)
    p = score(np.stack(images).astype(np.uint8))
    p_orig, p_base = float(p[0]), float(p[1])

    def auc(name: str, insert: bool) -> float:
        inner = [float(p[i]) for i in index[(name, insert)]]
        return _auc([p_base, *inner, p_orig] if insert else [p_orig, *inner, p_base])

    rand_del = float(np.mean([auc(f"_random{i}", False) for i in range(random_orders)]))
    rand_ins = float(np.mean([auc(f"_random{i}", True) for i in range(random_orders)]))
    return {name: CurveCheck(auc(name, False), rand_del, auc(name, True), rand_ins) for name in maps}


def rank_stability(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two weight vectors (NaN when either is constant)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def box_cam_ratios(cam: np.ndarray, boxes: Sequence[Sequence[float]], image_shape: tuple[int, int]
                   ) -> tuple[float, ...]:
    """Per box (x1, y1, x2, y2 in original image pixels): share of the map's mass inside / share of the area.
    ``cam`` is aligned with the image but may be at another resolution (the working image)."""
    h, w = cam.shape[:2]
    sy, sx = h / image_shape[0], w / image_shape[1]
    total = float(cam.sum())
    out = []
    for x1, y1, x2, y2 in boxes:
        c1, c2 = int(np.clip(np.floor(x1 * sx), 0, w)), int(np.clip(np.ceil(x2 * sx), 0, w))
        r1, r2 = int(np.clip(np.floor(y1 * sy), 0, h)), int(np.clip(np.ceil(y2 * sy), 0, h))
        area = (c2 - c1) * (r2 - r1) / float(h * w)
        if x2 <= x1 or y2 <= y1 or area <= 0 or total <= 0:
            out.append(float("nan"))
            continue
        out.append(float(cam[r1:r2, c1:c2].sum()) / total / area)
    return tuple(out)


# --------------------------------------------------------------------------- the explanation stage's checks
def run_checks(enhanced: np.ndarray, bundle: Bundle, lime, triage=None, cfg: ExplainConfig | None = None, *,
               run_batch: BatchRunner | None = None, batch_size: int | None = None) -> ExplanationChecks:
    """Curves for LIME (``lime``: a ``LimeResult``) and, when ``triage`` is given, the fused Grad-CAM; LIME
    re-run with the next seed for its stability. Per-lesion ratios are added by the Analysis (cheap).

    ``batch_size`` (default the bundle's ``lime_batch``) images per model call, each through ``run_batch``
    when given (the scheduler's explain lane, which raises ``TaskCancelledError`` once cancelled)."""
    import dataclasses

    from spine_ui.core.explain.gradcam import fused_map, resize_map
    from spine_ui.core.explain.lime_explainer import explain_lime

    cfg = cfg or bundle.manifest.explain
    size = lime.segments.shape[0]
    square, _ = square_input(enhanced, size, bundle.manifest.preprocess)
    maps = {"lime": lime.segment_weights[lime.segments]}
    if triage is not None:
        maps["gradcam"] = resize_map(fused_map(triage, bundle, cfg.cam_grid), (size, size))
    batch = int(batch_size or cfg.lime_batch)
    curves = curve_checks(square, lime.segments, maps, bundle_scorer(bundle, batch, run_batch), cfg.check_steps,
                          cfg.check_random_orders, seed=cfg.lime_seed)
    again = explain_lime(enhanced, bundle, dataclasses.replace(cfg, lime_seed=cfg.lime_seed + 1),
                         n_samples=lime.n_samples, run_batch=run_batch, batch_size=batch)
    return ExplanationChecks(curves.get("gradcam"), curves["lime"],
                             rank_stability(lime.segment_weights, again.segment_weights),
                             steps=cfg.check_steps, random_orders=cfg.check_random_orders)
