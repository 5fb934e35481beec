"""spine_ui.train.metrics against scikit-learn and ultralytics, and on cases with known answers."""
from __future__ import annotations

import types

import numpy as np
import pytest

from spine_ui.train import metrics as M


def _scores(seed: int, n: int = 200, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = rng.normal(y * 0.8, 1.0)
    if ties:
        s = np.round(s, 1)  # many tied scores
    return y, s


# --------------------------------------------------------------------------- classification
@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True), (3, False)])
def test_auroc_matches_sklearn(seed, ties):
    from sklearn.metrics import average_precision_score, roc_auc_score

    y, s = _scores(seed, ties=ties)
    assert M.auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert M.average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True)])
def test_auroc_is_the_mann_whitney_statistic(seed, ties):
    """An independent check of the library call: AUROC = U / (n_pos n_neg) (scipy, ties count one half)."""
    from scipy.stats import mannwhitneyu

    y, s = _scores(seed, ties=ties)
    u = mannwhitneyu(s[y == 1], s[y == 0]).statistic
    assert M.auroc(y, s) == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()), abs=1e-12)


def test_pr_curve_and_average_precision():
    y, s = _scores(4, n=150, ties=True)
    precision, recall, thr = M.pr_curve(y, s)
    assert (precision[0], recall[0], thr[0]) == (1.0, 0.0, np.inf) and recall[-1] == 1.0
    assert np.all(np.diff(recall) >= 0) and np.all(np.diff(thr) < 0)
    for p, r, t in zip(precision[1:], recall[1:], thr[1:]):  # each point is the cut score >= t
        called = s >= t
        assert p == pytest.approx(y[called].mean()) and r == pytest.approx(called[y == 1].mean())
    assert M.average_precision(y, s) == pytest.approx(float(np.sum(np.diff(recall) * precision[1:])), abs=1e-12)


def test_roc_curve_matches_sklearn():
    from sklearn.metrics import auc, roc_curve

    y, s = _scores(5, n=120, ties=True)
    fpr, tpr, thr = M.roc_curve(y, s)
    sf, st, sthr = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sf)
    np.testing.assert_allclose(tpr, st)
    np.testing.assert_allclose(thr[1:], sthr[1:])
    assert auc(fpr, tpr) == pytest.approx(M.auroc(y, s))


def test_auroc_edge_cases():
    assert np.isnan(M.auroc([1, 1, 1], [0.1, 0.5, 0.9]))
    assert M.auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert M.auroc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert M.auroc([0, 1], [0.5, 0.5]) == 0.5
    with pytest.raises(ValueError):
        M.auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        M.auroc([0, 1], [0.1, np.nan])


def test_confusion_and_threshold_table():
    y = [0, 0, 0, 1, 1, 1, 1]
    s = [0.1, 0.45, 0.6, 0.35, 0.5, 0.7, 0.9]
    c = M.confusion_at(y, s, 0.5)
    assert (c["tp"], c["fp"], c["tn"], c["fn"]) == (3, 1, 2, 1)
    assert c["sensitivity"] == pytest.approx(0.75)
    assert c["specificity"] == pytest.approx(2 / 3)
    assert c["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    table = M.threshold_table(y, s, (0.3, 0.4, 0.5, 0.6), gate=0.478)
    assert [r["threshold"] for r in table] == [0.3, 0.4, 0.478, 0.5, 0.6]
    assert [r["is_gate"] for r in table] == [False, False, True, False, False]
    # the gate coinciding with a listed threshold is not duplicated
    assert len(M.threshold_table(y, s, (0.3, 0.5), gate=0.5)) == 2


def test_youden_known_answer():
    # called abnormal at >= t; the best split puts 0.4 and above abnormal: sens 1, spec 3/4 -> J 0.75
    y = [0, 0, 0, 1, 0, 1, 1]
    s = [0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.8]
    r = M.youden_threshold(y, s)
    assert r["threshold"] == pytest.approx(0.35)  # midpoint of 0.3 (normal) and 0.4 (abnormal)
    assert r["youden_j"] == pytest.approx(0.75)
    assert (r["sensitivity"], r["specificity"]) == (1.0, 0.75)
    c = M.confusion_at(y, s, r["threshold"])
    assert c["sensitivity"] + c["specificity"] - 1 == pytest.approx(r["youden_j"])


def test_youden_tie_prefers_sensitivity_and_matches_brute_force():
    from sklearn.metrics import roc_curve

    # two cuts with J = 2/3: (sens 2/3, spec 1) at 0.7 and (sens 1, spec 2/3) at 0.4 -> the sensitive one
    r = M.youden_threshold([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.6, 0.4, 0.7, 0.8])
    assert r["sensitivity"] == 1.0 and r["threshold"] == pytest.approx(0.3)
    for seed in range(5):
        y, s = _scores(seed, n=80)
        fpr, tpr, _ = roc_curve(y, s)
        assert M.youden_threshold(y, s)["youden_j"] == pytest.approx(np.max(tpr - fpr))


def test_bootstrap_ci_seeded_and_grouped():
    y, s = _scores(7, n=150)
    a = M.bootstrap_ci(y, s, n_boot=300, seed=1)
    b = M.bootstrap_ci(y, s, n_boot=300, seed=1)
    assert a == b
    assert a["low"] < a["estimate"] < a["high"]
    groups = np.repeat(np.arange(75), 2)
    g = M.bootstrap_ci(y, s, n_boot=300, seed=1, groups=groups)
    assert g["low"] < g["estimate"] < g["high"] and g["n"] == 300
    perfect = M.bootstrap_ci([0, 0, 1, 1, 0, 1], [0.1, 0.2, 0.8, 0.9, 0.3, 0.7], n_boot=100)
    assert perfect["low"] == perfect["high"] == 1.0


def test_binary_summary_keys():
    y, s = _scores(8, n=60)
    out = M.binary_summary(y, 1 / (1 + np.exp(-s)), 0.478, n_boot=50)
    assert {"auroc", "auroc_ci", "average_precision", "at_gate", "threshold_table", "n", "n_abnormal"} <= set(out)
    assert out["at_gate"]["threshold"] == 0.478


# --------------------------------------------------------------------------- detection
def test_box_iou_matches_ultralytics():
    import torch
    from ultralytics.utils.metrics import box_iou

    rng = np.random.default_rng(0)
    a = np.c_[rng.uniform(0, 50, (6, 2)), rng.uniform(60, 120, (6, 2))]
    b = np.c_[rng.uniform(0, 50, (4, 2)), rng.uniform(60, 120, (4, 2))]
    ref = box_iou(torch.tensor(a), torch.tensor(b)).numpy()
    np.testing.assert_allclose(M.box_iou(a, b), ref, atol=1e-6)


def test_ap_known_values():
    # 2 ground truths; ranked predictions TP, FP, TP -> precision 1, .5, .667 at recall .5, .5, 1
    rec = np.array([0.5, 0.5, 1.0])
    prec = np.array([1.0, 0.5, 2 / 3])
    assert M.ap_from_curve(rec, prec, "all") == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # COCO: 51 recall points <= .5 at precision 1, 50 points above at 2/3
    assert M.ap_from_curve(rec, prec, "coco101") == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert M.ap_from_curve(np.array([1.0]), np.array([1.0]), "all") == 1.0


def test_match_detections_greedy_by_confidence():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)
    pred = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 31], [50, 50, 60, 60]], float)
    conf = np.array([0.6, 0.9, 0.8, 0.7])
    cls = np.array([0, 0, 1, 0])
    tp = M.match_detections(pred, conf, cls, gt, np.array([0, 1]), [0.5, 0.85])
    # the 0.9 box (IoU .81) takes GT 0 first; the exact 0.6 box is then a duplicate at IoU .5,
    # but at IoU .85 the 0.9 box fails and the 0.6 box matches
    assert tp.tolist() == [[False, True], [True, False], [True, True], [False, False]]


def _random_set(rng, n_img: int, grid: bool):
    """Images with 1-4 objects of 3 classes, jittered detections, misclassifications and false positives."""
    images = []
    for _ in range(n_img):
        k = int(rng.integers(1, 5))
        if grid:  # well separated ground truth: matching is unambiguous
            cells = rng.choice(16, k, replace=False)
            xy = np.c_[cells % 4, cells // 4] * 100.0 + rng.uniform(0, 20, (k, 2))
            wh = rng.uniform(30, 60, (k, 2))
        else:
            xy, wh = rng.uniform(0, 300, (k, 2)), rng.uniform(20, 80, (k, 2))
        gt = np.c_[xy, xy + wh]
        gc = rng.integers(0, 3, k)
        boxes, cls, conf = [], [], []
        for b, c in zip(gt, gc):
            if rng.random() < 0.85:
                boxes.append(b + rng.normal(0, 4, 4))
                cls.append(c if rng.random() < 0.9 else (c + 1) % 3)
                conf.append(rng.uniform(0.3, 1.0))
        for _ in range(int(rng.integers(0, 3))):
            p = rng.uniform(0, 300, 2) + (1000 if grid else 0)
            boxes.append(np.r_[p, p + rng.uniform(20, 60, 2)])
            cls.append(int(rng.integers(0, 3)))
            conf.append(rng.uniform(0.0, 0.8))
        images.append(M.ImageDetections(np.array(boxes).reshape(-1, 4), np.array(conf), np.array(cls),
                                        gt, gc))
    return images


def _ultralytics_tp(im: M.ImageDetections) -> np.ndarray:
    """TP matrix from ultralytics' own matcher (DetectionValidator.match_predictions)."""
    import torch
    from ultralytics.engine.validator import BaseValidator
    from ultralytics.utils.metrics import box_iou

    fake = types.SimpleNamespace(iouv=torch.linspace(0.5, 0.95, 10))
    if len(im.pred_boxes) == 0:
        return np.zeros((0, 10), bool)
    iou = box_iou(torch.tensor(im.gt_boxes), torch.tensor(im.pred_boxes))
    tp = BaseValidator.match_predictions(fake, torch.tensor(im.pred_classes), torch.tensor(im.gt_classes), iou)
    return np.asarray(tp).astype(bool)


def test_matching_agrees_with_ultralytics_when_unambiguous():
    rng = np.random.default_rng(3)
    for im in _random_set(rng, 40, grid=True):
        ours = M.match_detections(im.pred_boxes, im.pred_scores, im.pred_classes, im.gt_boxes, im.gt_classes)
        assert np.array_equal(ours, _ultralytics_tp(im))


@pytest.mark.parametrize("grid", [True, False])
def test_map_close_to_ultralytics(grid):
    """Same predictions, ultralytics' matcher + ap_per_class vs ours: ultralytics integrates a linearly
    interpolated 101-point curve (trapezoid), ours is the exact all-point area, so they differ by < 0.01."""
    from ultralytics.utils.metrics import ap_per_class

    rng = np.random.default_rng(11 if grid else 12)
    images = _random_set(rng, 120, grid=grid)
    tp = np.concatenate([_ultralytics_tp(im) for im in images])
    conf = np.concatenate([im.pred_scores for im in images])
    pcls = np.concatenate([im.pred_classes for im in images])
    tcls = np.concatenate([im.gt_classes for im in images])
    ref = ap_per_class(tp, conf, pcls, tcls)
    ref_classes, ref_ap = ref[6], ref[5]
    ours = M.detection_map(images, names=["a", "b", "c"])
    classes, ap = M.ap_per_class(tp, conf, pcls, tcls, "all")
    assert list(classes) == list(ref_classes)
    np.testing.assert_allclose(ap, ref_ap, atol=0.011)  # same TP matrix, AP integration only
    assert ours["map50"] == pytest.approx(float(ref_ap[:, 0].mean()), abs=0.01)
    assert ours["map50_95"] == pytest.approx(float(ref_ap.mean()), abs=0.01)
    coco = M.detection_map(images, method="coco101")
    assert coco["map50_95"] == pytest.approx(float(ref_ap.mean()), abs=0.01)


def test_perfect_and_empty_detections():
    gt = np.array([[0, 0, 10, 10], [20, 20, 40, 40]], float)
    perfect = M.ImageDetections(gt.copy(), np.array([0.9, 0.8]), np.array([0, 1]), gt, np.array([0, 1]))
    r = M.detection_map([perfect], names=["x", "y"])
    assert r["map50"] == 1.0 and r["map50_95"] == 1.0 and r["classes"] == ["x", "y"]
    none = M.ImageDetections(np.zeros((0, 4)), np.zeros(0), np.zeros(0), gt, np.array([0, 1]))
    assert M.detection_map([none])["map50"] == 0.0
