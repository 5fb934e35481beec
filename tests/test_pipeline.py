"""Analyzer: stage order, caching by content hash, detection policy, feature-space outlier layer."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from spine_ui.bundle.manifest import read_manifest, write_manifest
from spine_ui.bundle.store import Bundle, open_bundle
from spine_ui.bundle.runtime import choose_runtime
from spine_ui.errors import InputError
from spine_ui.core.pipeline import AnalysisOptions, Analyzer


@pytest.fixture(scope="module")
def analyzer(small_bundle_dir):
    return Analyzer(open_bundle(small_bundle_dir, "onnx"))


def test_stages_stream_in_order_and_cache(analyzer, phantom_dicom):
    stages = [name for name, _ in analyzer.stages(phantom_dicom, options=AnalysisOptions(
        detect="always", lime=True, explain_normal=True, lime_samples=12))]
    assert stages == ["gate", "triage", "detect", "lime", "checks"]  # explanation checks after LIME
    a = analyzer.load(phantom_dicom)
    assert a.study.pixels.size == 0  # raw pixels released once the working image exists
    assert a.study.shape == a.enhanced.shape  # 768 px tall: below the 1024 working size, so not resized
    triage, cam, lime, checks = a.triage, a.cam, a.lime, a.checks
    assert triage is not None and cam is not None and lime is not None and checks is not None
    again = analyzer.analyze(phantom_dicom.read_bytes(), options=AnalysisOptions(lime=True, explain_normal=True,
                                                                                  lime_samples=12))
    assert again is a and again.triage is triage and again.lime is lime and again.checks is checks  # not redone


def test_detection_policy(small_bundle_dir, full_bundle_dir, phantom_dicom):
    an = Analyzer(open_bundle(full_bundle_dir, "onnx"))
    a = an.analyze(phantom_dicom, options=AnalysisOptions(detect="never", gradcam=False))
    assert a.lesions is None and a.finding().detector_ran is False
    an.detect(a, "auto")
    assert (a.lesions is not None) == a.abnormal
    an.detect(a, "always")
    assert a.lesions is not None  # untrained YOLO: usually no box above conf 0.25, but it ran
    assert all(len(les.box) == 4 for les in a.lesions)
    assert "detect" in a.finding().timings_ms


def test_rejected_input_stops_after_gate(analyzer, tmp_path):
    from skimage import data

    p = tmp_path / "cat.png"
    Image.fromarray(data.chelsea()).save(p)
    stages = [name for name, _ in analyzer.stages(p)]
    assert stages == ["gate"]
    f = analyzer.load(p).finding().to_dict()
    assert f["accepted"] is False and f["verdict"] == "rejected" and f["probability"] is None
    json.dumps(f)


def test_unreadable_input_raises_typed_error(analyzer):
    with pytest.raises(InputError):
        analyzer.analyze(b"\x00" * 10, "x.dcm")


def test_feature_space_layer_with_bundle_statistics(small_bundle_dir, tmp_path):
    """With OOD statistics in the bundle, spine phantoms pass and a non-spine grayscale image is rejected."""
    from skimage import data

    from spine_ui.core.ood import FeatureOOD
    from spine_ui.core.preprocess import enhance
    from spine_ui.synth.phantom import render_spine
    from spine_ui.core.triage import run_triage

    b = tmp_path / "with-ood"
    shutil.copytree(small_bundle_dir, b)
    base = open_bundle(small_bundle_dir, "onnx")
    rng = np.random.default_rng(5)
    feats = []
    for i in range(40):
        img, _ = render_spine(rng, ["Osteophytes"] if i % 2 else [], height=256)
        feats.append(run_triage(enhance(img), base, tta=False).pooled_features)
    ood = FeatureOOD.fit(np.stack(feats), percentile=99.0, max_components=16)
    ood.save(b / "ood.npz")
    man = read_manifest(b)
    man.ood = {"file": "ood.npz", "percentile": 99.0, "threshold": float(ood.threshold)}
    write_manifest(b, man)
    an = Analyzer(Bundle(b, choose_runtime("onnx")))
    spine = tmp_path / "spine.png"
    img, _ = render_spine(np.random.default_rng(99), [], height=300)
    Image.fromarray(np.uint8(img * 255)).save(spine)
    ok = an.analyze(spine)
    assert ok.accepted, ok.gate.reason
    assert [l.status for l in ok.gate.layers if l.name == "features"] == ["passed"]
    camera = tmp_path / "camera.png"  # grayscale, plausible contrast: passes the image layer, not this one
    Image.fromarray(data.camera()).save(camera)
    bad = an.analyze(camera)
    assert [l.status for l in bad.gate.layers] == ["skipped", "passed", "rejected"]
    assert not bad.accepted and "far from the training radiographs" in bad.gate.reason
    assert bad.finding().probability is None
