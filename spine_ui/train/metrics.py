"""Evaluation metrics: classification curves from scikit-learn, detection matching from ultralytics, the
detection AP our own (numpy); cross-checked in the tests against scikit-learn, scipy and ultralytics.

Classification (label 1 = abnormal, score = probability; an image is called abnormal when ``score >=
threshold``, exactly as the server compares P with the gate):

- ``auroc`` / ``roc_curve`` / ``pr_curve`` / ``average_precision``: scikit-learn (``roc_auc_score``,
  ``roc_curve(drop_intermediate=False)``, ``precision_recall_curve``, ``average_precision_score``) behind
  input checks (labels 0/1, finite scores); AUROC is NaN, not an error, when one class is missing;
- ``bootstrap_ci``: percentile bootstrap, seeded; resamples studies (clusters) when ``groups`` is given;
- ``confusion_at`` / ``threshold_table``: sensitivity, specificity, PPV, NPV, F1, accuracy at thresholds;
- ``youden_threshold``: the cut maximising J = sensitivity + specificity - 1 (on scikit-learn's ROC points).

Detection (``detection_map``): predictions are matched to ground truth by ultralytics' matcher (greedy in
descending confidence at IoU 0.50:0.05:0.95, COCO's rule; box IoU from ``torchvision.ops.box_iou``). The
per-class AP stays ours, because ultralytics' ``ap_per_class`` has one definition only: it integrates a
linearly interpolated 101-point curve with the trapezoid rule (a perfect detector scores 0.995). Ours takes
the monotone precision envelope and either its exact all-point area (``method="all"``, default; PASCAL VOC
2010+) or 101 recall samples (``method="coco101"``, COCO); both differ from ultralytics' by a few
thousandths, which the tests bound.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, Iterable, Sequence

import numpy as np
from numpy.typing import ArrayLike
from sklearn import metrics as skm

COCO_IOUS = np.round(np.linspace(0.5, 0.95, 10), 2)


# --------------------------------------------------------------------------- classification
def _binary(y: ArrayLike, s: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(np.int64).ravel()
    s = np.asarray(s, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y, s


def auroc(y: ArrayLike, s: ArrayLike) -> float:
    """Area under the ROC curve (scikit-learn); NaN when only one class is present."""
    y, s = _binary(y, s)
    if y.min() == y.max():
        return float("nan")
    return float(skm.roc_auc_score(y, s))


def roc_curve(y: ArrayLike, s: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): one point per distinct score, starting at (0, 0) with threshold +inf;
    needs both classes."""
    y, s = _binary(y, s)
    if y.min() == y.max():
        raise ValueError("ROC needs both classes")
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    return fpr, tpr, thr


def pr_curve(y: ArrayLike, s: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) for decreasing thresholds, starting at recall 0 / precision 1
    (threshold +inf) and ending where recall first reaches 1 (scikit-learn's ``precision_recall_curve``)."""
    y, s = _binary(y, s)
    if not y.any():
        raise ValueError("precision-recall needs at least one positive")
    precision, recall, thr = skm.precision_recall_curve(y, s)
    return precision[::-1], recall[::-1], np.r_[np.inf, thr[::-1]]


def average_precision(y: ArrayLike, s: ArrayLike) -> float:
    """Step-wise AP = sum_n (R_n - R_{n-1}) P_n (scikit-learn's ``average_precision_score``)."""
    y, s = _binary(y, s)
    if not y.any():
        raise ValueError("precision-recall needs at least one positive")
    return float(skm.average_precision_score(y, s))


def bootstrap_ci(y: ArrayLike, s: ArrayLike, metric: Callable[[np.ndarray, np.ndarray], float] = auroc, *,
                 n_boot: int = 2000, ci: float = 0.95, seed: int = 42, groups: Sequence | None = None) -> dict:
    """Percentile bootstrap CI of ``metric``. With ``groups`` (study ids) whole studies are resampled.

    Resamples where the metric is undefined (one class only) are dropped; ``n`` says how many were used.
    """
    y, s = _binary(y, s)
    rng = np.random.default_rng(seed)
    point = metric(y, s)
    if groups is None:
        members = [np.array([i]) for i in range(y.size)]
    else:
        g = np.asarray(groups)
        if g.size != y.size:
            raise ValueError("one group per sample is needed")
        _, inverse = np.unique(g, return_inverse=True)
        members = [np.flatnonzero(inverse == k) for k in range(inverse.max() + 1)]
    values = []
    for _ in range(int(n_boot)):
        pick = rng.integers(0, len(members), len(members))
        idx = np.concatenate([members[k] for k in pick])
        yb = y[idx]
        if yb.min() == yb.max():
            continue
        v = metric(yb, s[idx])
        if np.isfinite(v):
            values.append(v)
    alpha = (1.0 - ci) / 2.0
    if not values:
        return {"estimate": point, "low": float("nan"), "high": float("nan"), "n": 0, "ci": ci}
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return {"estimate": point, "low": float(lo), "high": float(hi), "n": len(values), "ci": ci}


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def confusion_at(y: ArrayLike, s: ArrayLike, threshold: float) -> dict:
    """Counts and rates when ``score >= threshold`` is called abnormal."""
    y, s = _binary(y, s)
    pred = s >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    tn = int(np.sum(~pred & (y == 0)))
    sens, spec = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    ppv = _ratio(tp, tp + fp)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return {"threshold": float(threshold), "tp": tp, "fp": fp, "tn": tn, "fn": fn, "sensitivity": sens,
            "specificity": spec, "ppv": ppv, "npv": _ratio(tn, tn + fn), "f1": f1,
            "accuracy": _ratio(tp + tn, y.size), "youden_j": sens + spec - 1.0}


def threshold_table(y: ArrayLike, s: ArrayLike, thresholds: Iterable[float] = (0.3, 0.4, 0.5, 0.6),
                    gate: float | None = None) -> list[dict]:
    """``confusion_at`` for each threshold (ascending; the gate is added and flagged ``is_gate``)."""
    values = {round(float(t), 6) for t in thresholds}
    if gate is not None:
        values.add(round(float(gate), 6))
    rows = []
    for t in sorted(values):
        row = confusion_at(y, s, t)
        row["is_gate"] = gate is not None and t == round(float(gate), 6)
        rows.append(row)
    return rows


def youden_threshold(y: ArrayLike, s: ArrayLike) -> dict:
    """The threshold maximising Youden's J on (y, s).

    Cuts are taken between adjacent distinct scores: the threshold is the midpoint between the lowest score
    called abnormal and the highest score called normal (the lowest score itself when every image is called
    abnormal), so ``score >= threshold`` reproduces the optimal split. Ties in J go to the higher
    sensitivity (a triage tool prefers missing fewer abnormal studies).
    """
    y, s = _binary(y, s)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("Youden's J needs both classes")
    fpr, sens, thr = (a[1:] for a in skm.roc_curve(y, s, drop_intermediate=False))  # distinct scores, descending
    spec = 1.0 - fpr
    j = sens + spec - 1.0
    best = np.flatnonzero(np.isclose(j, j.max(), rtol=0, atol=1e-12))
    k = int(best[np.argmax(sens[best])])
    below = thr[k + 1] if k + 1 < thr.size else None
    threshold = float(thr[k]) if below is None else float((thr[k] + below) / 2.0)
    return {"threshold": threshold, "youden_j": float(j[k]), "sensitivity": float(sens[k]),
            "specificity": float(spec[k])}


def binary_summary(y: ArrayLike, s: ArrayLike, gate: float, *, thresholds: Iterable[float] = (0.3, 0.4, 0.5, 0.6),
                   n_boot: int = 2000, ci: float = 0.95, seed: int = 42, groups: Sequence | None = None) -> dict:
    """AUROC with bootstrap CI, AP, operating point at the gate and the threshold table."""
    y, s = _binary(y, s)
    out = {"n": int(y.size), "n_abnormal": int(y.sum()), "gate": float(gate)}
    if y.min() == y.max():
        out.update(auroc=float("nan"), auroc_ci=None, average_precision=float("nan"))
    else:
        out["auroc"] = auroc(y, s)
        out["auroc_ci"] = bootstrap_ci(y, s, auroc, n_boot=n_boot, ci=ci, seed=seed, groups=groups)
        out["average_precision"] = average_precision(y, s)
    out["at_gate"] = confusion_at(y, s, gate)
    out["threshold_table"] = threshold_table(y, s, thresholds, gate)
    return out


# --------------------------------------------------------------------------- detection
def box_iou(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """IoU matrix [N, M] of xyxy boxes (``torchvision.ops.box_iou`` in float64; 0 where both are empty)."""
    import torch
    from torchvision.ops import box_iou as tv_box_iou

    a = torch.as_tensor(np.asarray(a, dtype=np.float64).reshape(-1, 4))
    b = torch.as_tensor(np.asarray(b, dtype=np.float64).reshape(-1, 4))
    return np.nan_to_num(tv_box_iou(a, b).numpy(), nan=0.0)


def match_detections(pred_boxes: ArrayLike, pred_scores: ArrayLike, pred_classes: ArrayLike, gt_boxes: ArrayLike,
                     gt_classes: ArrayLike, iou_thresholds: Sequence[float] = COCO_IOUS) -> np.ndarray:
    """True-positive flags [N_pred, T] for one image: ultralytics' matcher
    (``BaseValidator.match_predictions``: in descending confidence, each prediction takes the unclaimed
    same-class ground truth with the highest IoU, a TP when that IoU >= the threshold; COCO's rule)."""
    import torch
    from ultralytics.engine.validator import BaseValidator

    pred_boxes = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 4)
    pred_scores = np.asarray(pred_scores, dtype=np.float64).ravel()
    pred_classes = np.asarray(pred_classes).astype(np.int64).ravel()
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    gt_classes = np.asarray(gt_classes).astype(np.int64).ravel()
    thr = np.asarray(iou_thresholds, dtype=np.float64)
    tp = np.zeros((pred_boxes.shape[0], thr.size), dtype=bool)
    if pred_boxes.shape[0] == 0 or gt_boxes.shape[0] == 0:
        return tp
    order = np.argsort(-pred_scores, kind="mergesort")  # the matcher expects descending confidence
    iou = box_iou(gt_boxes, pred_boxes[order])  # [M, N], the matcher's layout
    # match_predictions reads only ``self.iouv`` (the IoU thresholds)
    validator = SimpleNamespace(iouv=torch.from_numpy(thr))
    matched = BaseValidator.match_predictions(validator, torch.from_numpy(pred_classes[order]),
                                              torch.from_numpy(gt_classes), torch.from_numpy(iou))
    tp[order] = np.asarray(matched, dtype=bool)
    return tp


def ap_from_curve(recall: np.ndarray, precision: np.ndarray, method: str = "all") -> float:
    """AP from a PR curve sampled in ranked order (recall non-decreasing), on the precision envelope."""
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if recall.size == 0:
        return 0.0
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    if method == "all":
        return float(np.sum(np.diff(np.r_[0.0, recall]) * envelope))
    if method == "coco101":
        grid = np.linspace(0.0, 1.0, 101)
        idx = np.searchsorted(recall, grid - 1e-12, side="left")
        values = np.where(idx < recall.size, envelope[np.minimum(idx, recall.size - 1)], 0.0)
        return float(values.mean())
    raise ValueError(f"unknown AP method {method!r}; use 'all' or 'coco101'")


def ap_per_class(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray,
                 method: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """(classes with ground truth, AP [C, T]) from pooled per-prediction TP flags [N, T].

    Same inputs as ``ultralytics.utils.metrics.ap_per_class``; classes without ground truth are left out,
    classes with ground truth and no predictions score 0.
    """
    tp = np.asarray(tp, dtype=bool)
    if tp.ndim == 1:
        tp = tp[:, None]
    conf = np.asarray(conf, dtype=np.float64).ravel()
    pred_cls = np.asarray(pred_cls).astype(np.int64).ravel()
    target_cls = np.asarray(target_cls).astype(np.int64).ravel()
    classes, n_gt = np.unique(target_cls, return_counts=True)
    ap = np.zeros((classes.size, tp.shape[1]))
    order = np.argsort(-conf, kind="mergesort")
    tp, pred_cls = tp[order], pred_cls[order]
    for ci, c in enumerate(classes):
        sel = pred_cls == c
        if not sel.any():
            continue
        tpc = np.cumsum(tp[sel], axis=0).astype(np.float64)
        fpc = np.cumsum(~tp[sel], axis=0).astype(np.float64)
        for t in range(tp.shape[1]):
            rec = tpc[:, t] / n_gt[ci]
            prec = tpc[:, t] / (tpc[:, t] + fpc[:, t])
            ap[ci, t] = ap_from_curve(rec, prec, method)
    return classes, ap


@dataclass(frozen=True)
class ImageDetections:
    """Predictions and ground truth of one image (xyxy boxes in the same pixel frame)."""

    pred_boxes: np.ndarray
    pred_scores: np.ndarray
    pred_classes: np.ndarray
    gt_boxes: np.ndarray
    gt_classes: np.ndarray


def detection_map(images: Iterable[ImageDetections], names: Sequence[str] | None = None,
                  iou_thresholds: Sequence[float] = COCO_IOUS, method: str = "all") -> dict:
    """Per-class AP@0.5, AP@0.5:0.95, mAP@0.5 and mAP@0.5:0.95 over a set of images."""
    thr = np.asarray(iou_thresholds, dtype=np.float64)
    tps, confs, pcls, tcls = [], [], [], []
    for im in images:
        tps.append(match_detections(im.pred_boxes, im.pred_scores, im.pred_classes, im.gt_boxes,
                                    im.gt_classes, thr))
        confs.append(np.asarray(im.pred_scores, dtype=np.float64).ravel())
        pcls.append(np.asarray(im.pred_classes).astype(np.int64).ravel())
        tcls.append(np.asarray(im.gt_classes).astype(np.int64).ravel())
    if not tps:
        raise ValueError("no images")
    classes, ap = ap_per_class(np.concatenate(tps), np.concatenate(confs), np.concatenate(pcls),
                               np.concatenate(tcls), method)
    i50 = int(np.argmin(np.abs(thr - 0.5)))

    def label(c: int) -> str:
        """Class name of index ``c`` (the index when unnamed)."""
        return names[c] if names is not None and c < len(names) else str(c)

    per_class = {label(int(c)): {"ap50": float(ap[k, i50]), "ap50_95": float(ap[k].mean())}
                 for k, c in enumerate(classes)}
    return {"method": method, "n_images": len(tps), "classes": [label(int(c)) for c in classes],
            "per_class": per_class,
            "map50": float(ap[:, i50].mean()) if classes.size else float("nan"),
            "map50_95": float(ap.mean()) if classes.size else float("nan")}
