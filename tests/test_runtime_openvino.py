"""OpenVINO runners on the bundle's ONNX files: the runtime registry, LIME precision choice (auto / bf16 /
fp32, env), fp32 agreement with onnxruntime, bf16 LIME deterministic per seed."""
from __future__ import annotations

import numpy as np
import pytest

from spine_ui.bundle.runtime import CLASSIFIER_RUNNERS, choose_runtime, cpu_has_bf16
from spine_ui.bundle.store import Bundle, forget_bundles, open_bundle
from spine_ui.config import RuntimeConfig
from spine_ui.core.explain.lime_explainer import explain_lime
from spine_ui.core.preprocess import enhance
from spine_ui.core.triage import run_triage
from spine_ui.errors import BundleError
from spine_ui.synth.phantom import render_spine

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def enhanced(small_bundle_dir):
    img, _ = render_spine(np.random.default_rng(5), ["Osteophytes"], height=512)
    return enhance(img, Bundle(small_bundle_dir, choose_runtime("onnx")).manifest.preprocess)


def test_precision_choice_and_env(monkeypatch):
    assert choose_runtime("onnx").lime_precision == "fp32"  # library default: as before
    assert choose_runtime("onnx", lime_precision="fp32").lime_precision == "fp32"
    assert choose_runtime("onnx", lime_precision="bf16").lime_precision == "bf16"
    assert choose_runtime("onnx", lime_precision="auto").lime_precision == ("bf16" if cpu_has_bf16() else "fp32")
    assert choose_runtime("openvino").label == "CPU OpenVINO" and "openvino" in CLASSIFIER_RUNNERS
    with pytest.raises(BundleError):
        choose_runtime("onnx", lime_precision="fp8")
    with pytest.raises(BundleError):
        choose_runtime("tensorrt")
    monkeypatch.setenv("SPINE_LIME_PRECISION", "FP32")
    monkeypatch.setenv("SPINE_RUNTIME", "openvino")
    cfg = RuntimeConfig.from_env()
    assert (cfg.lime_precision, cfg.runtime) == ("fp32", "openvino")
    monkeypatch.delenv("SPINE_LIME_PRECISION")
    assert RuntimeConfig.from_env().lime_precision == "auto"


def test_openvino_fp32_matches_onnxruntime(small_bundle_dir, enhanced):
    forget_bundles()
    ort = open_bundle(small_bundle_dir, "onnx")
    ov = open_bundle(small_bundle_dir, "openvino")
    assert ov is not ort and ov.runtime.kind == "openvino"
    a, b = run_triage(enhanced, ort), run_triage(enhanced, ov)
    assert abs(a.probability - b.probability) < 1e-4
    for m, n in zip(a.models, b.models):
        assert abs(m.logit - n.logit) < 1e-3 * max(1.0, abs(m.logit))
        assert a.feature_maps[m.arch].shape == b.feature_maps[n.arch].shape


def test_bf16_lime_runner_close_and_deterministic(small_bundle_dir, enhanced):
    forget_bundles()
    fp32 = open_bundle(small_bundle_dir, "onnx", lime_precision="fp32")
    bf16 = open_bundle(small_bundle_dir, "onnx", lime_precision="bf16")
    assert fp32.lime_classifier("resnet50") is fp32.classifier("resnet50")  # fp32: the serving runner itself
    runner = bf16.lime_classifier("resnet50")
    assert runner is not bf16.classifier("resnet50") and runner.precision == "bf16"
    x = np.random.default_rng(0).normal(size=(4, 3, 96, 96)).astype(np.float32)
    ref, _ = fp32.classifier("resnet50")(x)
    low, _ = runner(x)
    assert low.shape == ref.shape and np.allclose(low, ref, atol=0.1 * (1 + np.abs(ref).max()))
    r1 = explain_lime(enhanced, bf16, n_samples=32)
    r2 = explain_lime(enhanced, bf16, n_samples=32)
    assert np.array_equal(r1.segment_weights, r2.segment_weights)  # deterministic per seed and precision
    assert r1.segment_weights is not None and np.abs(r1.segment_weights).sum() > 0


def test_openvino_makes_no_network_attempt(tmp_path, small_bundle_dir):
    """``import openvino`` sends a telemetry event unless spine_ui's environment set-up blocks it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    log = tmp_path / "net.log"
    code = ("import spine_ui, openvino as ov; from spine_ui.bundle.runtime import OpenVinoClassifier, cpu_has_bf16; "
            f"cpu_has_bf16(); OpenVinoClassifier({str(small_bundle_dir / 'resnet50.onnx')!r}, 1, 'bf16')")
    env = {**os.environ, "PYTHONPATH": f"{root / 'tests' / 'support'}{os.pathsep}{root}", "SPINE_NET_LOG": str(log)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not log.exists() or log.read_text() == ""


def test_decision_path_bf16_only_when_asked_or_checked(small_bundle_dir, enhanced, monkeypatch):
    assert choose_runtime("onnx").precision == "fp32" and RuntimeConfig().decision_precision == "auto"
    forget_bundles()  # auto: this bundle records no passed bf16 check, so it serves fp32
    assert open_bundle(small_bundle_dir, "onnx", decision_precision="auto").runtime.precision == "fp32"
    info = choose_runtime("onnx", decision_precision="bf16", lime_precision="bf16")
    assert (info.kind, info.precision, info.label) == ("openvino", "bf16", "CPU OpenVINO bf16")
    with pytest.raises(BundleError):
        choose_runtime("onnx", decision_precision="int8")
    monkeypatch.setenv("SPINE_DECISION_PRECISION", "bf16")
    assert RuntimeConfig.from_env().decision_precision == "bf16"
    forget_bundles()
    ref = run_triage(enhanced, open_bundle(small_bundle_dir, "onnx"))
    low_bundle = open_bundle(small_bundle_dir, "onnx", lime_precision="bf16", decision_precision="bf16")
    assert low_bundle.lime_classifier("resnet50") is low_bundle.classifier("resnet50")  # one compiled model
    low = run_triage(enhanced, low_bundle)
    assert abs(low.probability - ref.probability) < 0.05  # random weights: close, not equal
