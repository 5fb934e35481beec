"""DERNet triage (vote, gate, TTA, ONNX/torch parity), Grad-CAM equivalence and LIME determinism."""
from __future__ import annotations

import numpy as np
import pytest

from spine_ui.bundle.runtime import RuntimeInfo
from spine_ui.bundle.store import Bundle, open_bundle
from spine_ui.core.explain.gradcam import exact_gradcam, explain_gradcam, fused_map, torch_gradcam
from spine_ui.core.explain.lime_explainer import explain_lime
from spine_ui.core.preprocess import enhance
from spine_ui.synth.phantom import render_spine
from spine_ui.config import PreprocessConfig
from spine_ui.core.contract import model_input, weighted_vote
from spine_ui.core.triage import ModelOutput, TriageResult, run_triage


@pytest.fixture(scope="module")
def enhanced():
    img, _ = render_spine(np.random.default_rng(7), ["Surgical implant", "Osteophytes"], height=512)
    return enhance(img)


def test_weighted_vote_uses_the_dernet_weights():
    w = {"densenet121": 0.42, "tf_efficientnetv2_s": 0.32, "resnet50": 0.26}
    p = {"densenet121": 0.9, "tf_efficientnetv2_s": 0.2, "resnet50": 0.5}
    assert weighted_vote(p, w) == pytest.approx(0.42 * 0.9 + 0.32 * 0.2 + 0.26 * 0.5)
    arr = weighted_vote({k: np.array([v, 1 - v]) for k, v in p.items()}, w)
    np.testing.assert_allclose(arr, [0.572, 0.428])


@pytest.mark.parametrize("p,abnormal", [(0.478, True), (0.47799, False), (0.9, True), (0.1, False)])
def test_gate_is_inclusive_at_0478(p, abnormal):
    r = TriageResult(p, 0.478, (ModelOutput("resnet50", 1.0, p, 0.0, (p,)),), {}, {})
    assert r.abnormal is abnormal


def test_tta_batch_shapes_and_identity_first(enhanced):
    views = ("identity", "hflip", "rot+5", "rot-5", "zoom0.9")
    batch, placement = model_input(enhanced, 96, views, PreprocessConfig(resize="stretch"))
    assert batch.shape == (5, 3, 96, 96) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[1], batch[0][:, :, ::-1], atol=1e-6)  # hflip
    assert placement.size == 96
    with pytest.raises(ValueError, match="first TTA view must be 'identity'"):
        model_input(enhanced, 96, ("hflip", "identity"))
    with pytest.raises(ValueError, match="unknown TTA views"):
        model_input(enhanced, 96, ("identity", "spin"))


def test_triage_result_matches_manifest(small_bundle_dir, enhanced):
    bundle = open_bundle(small_bundle_dir, "onnx")
    r = run_triage(enhanced, bundle)
    assert [m.arch for m in r.models] == ["densenet121", "tf_efficientnetv2_s", "resnet50"]
    assert all(len(m.view_probabilities) == 5 for m in r.models)
    expected = sum(m.weight * m.probability for m in r.models) / sum(m.weight for m in r.models)
    assert r.probability == pytest.approx(expected)
    assert r.abnormal == (r.probability >= 0.478)
    assert r.pooled_features.shape == (1024 + 1280 + 2048,)


@pytest.mark.parametrize("bundle_fixture", ["small_bundle_dir", "full_bundle_dir"])
def test_onnx_and_torch_cpu_agree(bundle_fixture, request, enhanced):
    path = request.getfixturevalue(bundle_fixture)
    onnx_r = run_triage(enhanced, open_bundle(path, "onnx"))
    torch_r = run_triage(enhanced, Bundle(path, RuntimeInfo("torch", "cpu", 0)))  # CPU even where CUDA is
    assert abs(onnx_r.probability - torch_r.probability) < 1e-4
    for a, b in zip(onnx_r.models, torch_r.models):
        np.testing.assert_allclose(a.view_probabilities, b.view_probabilities, atol=1e-4)


@pytest.mark.gpu
def test_torch_cuda_agrees_with_onnx(full_bundle_dir, enhanced):
    """Where CUDA is present the app picks GPU torch; it must give the CPU ONNX answer (TF32 convolutions on
    CUDA allow a looser tolerance than the CPU parity above)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    gpu = open_bundle(full_bundle_dir, "auto")
    assert (gpu.runtime.kind, gpu.runtime.device) == ("torch", "cuda")
    onnx_r = run_triage(enhanced, open_bundle(full_bundle_dir, "onnx"))
    gpu_r = run_triage(enhanced, gpu)
    assert abs(onnx_r.probability - gpu_r.probability) < 2e-3
    for a, b in zip(onnx_r.models, gpu_r.models):
        np.testing.assert_allclose(a.view_probabilities, b.view_probabilities, atol=5e-3)


def test_exact_cam_equals_pytorch_grad_cam(small_bundle_dir, enhanced):
    """The ONNX path (features x head weights, no backprop) reproduces pytorch-grad-cam on the same weights."""
    onnx_b = open_bundle(small_bundle_dir, "onnx")
    r = run_triage(enhanced, onnx_b, tta=False)
    pp = onnx_b.manifest.preprocess
    for entry in onnx_b.classifiers:
        batch, _ = model_input(enhanced, entry.input_size, ("identity",), pp)
        backprop = torch_gradcam(onnx_b.torch_classifier(entry.arch).model, entry.cam_layer, batch)
        exact = exact_gradcam(r.feature_maps[entry.arch], onnx_b.heads[entry.arch], entry.input_size)
        assert backprop.shape == exact.shape == (entry.input_size, entry.input_size)
        assert backprop.max() > 0.99  # a real, non-empty map
        np.testing.assert_allclose(exact, backprop, atol=2e-3, err_msg=entry.arch)


def test_fused_and_per_model_maps(small_bundle_dir, enhanced):
    bundle = open_bundle(small_bundle_dir, "onnx")
    r = run_triage(enhanced, bundle)
    fused = fused_map(r, bundle, 24)
    assert fused.shape == (24, 24) and fused.min() >= 0 and fused.max() == pytest.approx(1.0, abs=1e-5)
    cam = explain_gradcam(r, bundle, enhanced)
    assert cam.method == "exact-cam"
    assert cam.fused.shape == enhanced.shape
    assert set(cam.per_model) == {"densenet121", "tf_efficientnetv2_s", "resnet50"}
    torch_cam = explain_gradcam(r, bundle, enhanced, per_model_backprop=True)
    assert torch_cam.method == "pytorch-grad-cam"
    for arch in cam.per_model:
        assert np.abs(cam.per_model[arch] - torch_cam.per_model[arch]).max() < 5e-3


def test_lime_is_deterministic_with_a_seed(small_bundle_dir, enhanced):
    from spine_ui.config import ExplainConfig

    bundle = open_bundle(small_bundle_dir, "onnx")
    calls = []
    cfg = ExplainConfig(lime_samples=24, lime_batch=8, lime_segments=30, lime_size=96, lime_seed=3)
    a = explain_lime(enhanced, bundle, cfg, progress=lambda done, total: calls.append((done, total)))
    b = explain_lime(enhanced, bundle, cfg)
    np.testing.assert_array_equal(a.weights, b.weights)
    assert a.weights.shape == enhanced.shape and np.abs(a.weights).max() > 0
    assert a.n_samples == 24 and calls[-1] == (24, 24)
    assert len(calls) >= 3  # batched: 24 samples in batches of 8
    c = explain_lime(enhanced, bundle, ExplainConfig(lime_samples=24, lime_batch=8, lime_segments=30,
                                                      lime_size=96, lime_seed=4))
    assert not np.array_equal(a.weights, c.weights)


def test_onnx_accepts_other_sizes_like_torch(small_bundle_dir, enhanced):
    """LIME scores at ExplainConfig.lime_size, not the serving size: every exported classifier (tf_ included)
    must take other spatial sizes and agree with eager torch there."""
    from spine_ui.core.contract import to_model_input

    onnx_b, torch_b = open_bundle(small_bundle_dir, "onnx"), open_bundle(small_bundle_dir, "torch")
    for size in (onnx_b.manifest.explain.lime_size, 130):
        x = np.stack([to_model_input(enhanced, size)[0], to_model_input(enhanced[::-1].copy(), size)[0]])
        for entry in onnx_b.classifiers:
            lo, fo = onnx_b.classifier(entry.arch)(x)
            lt, ft = torch_b.classifier(entry.arch)(x)
            assert fo.shape == ft.shape
            np.testing.assert_allclose(lo, lt, rtol=1e-4, atol=1e-4, err_msg=f"{entry.arch} at {size}px")
