"""Explanation checks (core/explain/faithfulness.py) on a trained tiny bundle: Grad-CAM is more faithful than a
random map, LIME's stability is reported, the map's mass sits in the implant's box; the Finding carries them."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from spine_ui.core.explain.faithfulness import (ExplanationChecks, box_cam_ratios, bundle_scorer, curve_checks,
                                                rank_stability, region_order)


def test_region_order_and_curves_on_a_toy_scorer():
    """A scorer that reads the mean of the top-left quadrant: a map on that quadrant is perfectly faithful."""
    seg = (np.arange(16)[:, None] // 4 * 4 + np.arange(16)[None, :] // 4)  # 16 blocks of 4 x 4
    square = np.full((16, 16), 40, np.uint8)
    square[:8, :8] = 250
    good = np.zeros((16, 16), np.float32)
    good[:8, :8] = 1.0
    assert set(region_order(good, seg)[:4]) == {0, 1, 4, 5}

    def score(images):
        return images[:, :8, :8].mean(axis=(1, 2)) / 255.0

    bad = 1.0 - good
    res = curve_checks(square, seg, {"good": good, "bad": bad}, score, steps=4, random_orders=5)
    assert res["good"].deletion_faithfulness > 0 > res["bad"].deletion_faithfulness
    assert res["good"].insertion_faithfulness > 0 > res["bad"].insertion_faithfulness
    assert res["good"].deletion_random_auc == res["bad"].deletion_random_auc  # shared random orders
    with pytest.raises(ValueError):
        curve_checks(square, seg, {"good": good}, score, steps=1)


def test_box_cam_ratio_and_stability():
    cam = np.zeros((100, 200), np.float32)
    cam[10:30, 20:60] = 1.0  # all mass in 800 of 20000 px
    # boxes in original pixels of an image twice the map's size
    r_in, r_out, r_half = box_cam_ratios(cam, [(40, 20, 120, 60), (200, 100, 300, 180), (40, 20, 80, 60)], (200, 400))
    assert r_in == pytest.approx(25.0) and r_out == 0.0 and r_half == pytest.approx(25.0)
    assert np.isnan(box_cam_ratios(cam, [(5, 5, 5, 9)], (200, 400))[0])
    assert rank_stability(np.arange(10), np.arange(10) ** 2) == pytest.approx(1.0)
    assert rank_stability(np.arange(10), -np.arange(10)) == pytest.approx(-1.0)
    assert np.isnan(rank_stability(np.zeros(5), np.arange(5)))
    d = ExplanationChecks(lime_stability=float("nan"), lesions=(float("nan"), 2.0)).to_dict()
    json.dumps(d, allow_nan=False)
    assert d["lime_stability"] is None and d["lesions"] == [{"box_cam_ratio": None}, {"box_cam_ratio": 2.0}]


def test_gradcam_beats_a_random_map_on_a_trained_bundle(tiny_trained_bundle_dir):
    from spine_ui.bundle.store import open_bundle
    from spine_ui.core.finding import Finding
    from spine_ui.core.pipeline import AnalysisOptions, Analyzer
    from spine_ui.core.preprocess import to_square
    from spine_ui.synth.phantom import render_spine

    bundle = open_bundle(tiny_trained_bundle_dir, "onnx")
    analyzer = Analyzer(bundle)
    score = bundle_scorer(bundle)
    rng = np.random.default_rng(5)
    cam_del, cam_ins, rnd_del, rnd_ins, ratios = [], [], [], [], []
    for i in range(3):
        img, boxes = render_spine(rng, ["Surgical implant"], height=256)
        data = cv2.imencode(".png", (img * 255).astype(np.uint8))[1].tobytes()
        stages = [s for s, _ in analyzer.stages(data, "implant.png", AnalysisOptions(lime=True, lime_samples=120))]
        a = analyzer.analyze(data, "implant.png")
        assert stages[-2:] == ["lime", "checks"] and a.abnormal  # the model learnt the implant
        f = a.finding()
        d = f.to_dict()["explanations"]["checks"]
        assert d["steps"] == 10 and d["random_orders"] == 3 and -1 <= d["lime_stability"] <= 1
        assert Finding.from_dict(f.to_dict()).to_dict() == f.to_dict()
        if i == 0:  # the UI's explanation note shows them
            from spine_ui.ui.render import explain_note_html

            note = explain_note_html(f, lime_pending=False)
            assert "Faithfulness" in note and "LIME stability" in note and "not proof" in note
        cam_del.append(f.checks.gradcam.deletion_faithfulness)
        cam_ins.append(f.checks.gradcam.insertion_faithfulness)
        assert f.checks.lime.deletion_faithfulness > 0  # LIME's regions matter more than random ones
        square, _ = to_square(a.enhanced, bundle.manifest.explain.lime_size, "stretch")
        for k in range(3):
            noise = np.random.default_rng(100 * i + k).random(square.shape).astype(np.float32)
            rmap = cv2.GaussianBlur(noise, (0, 0), 8)
            r = curve_checks(square, a.lime.segments, {"random": rmap}, score)["random"]
            rnd_del.append(r.deletion_faithfulness)
            rnd_ins.append(r.insertion_faithfulness)
        label, box = next(b for b in boxes if b[0] == "Surgical implant")
        ratios.append(box_cam_ratios(a.cam.fused, [box], img.shape)[0])
    assert np.mean(cam_del) > np.mean(rnd_del) + 0.1, (cam_del, rnd_del)
    assert np.mean(cam_ins) > np.mean(rnd_ins) + 0.1, (cam_ins, rnd_ins)
    assert np.mean(ratios) > 1.0, ratios  # Grad-CAM mass concentrates in the implant's box
