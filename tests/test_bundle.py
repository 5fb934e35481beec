"""Bundle integrity, runtime selection, untrained init, hub download offline, checkpoint import."""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from spine_ui.bundle.manifest import Manifest, read_manifest
from spine_ui.bundle.runtime import choose_runtime
from spine_ui.bundle.store import Bundle, forget_bundles, open_bundle
from spine_ui.errors import BundleError, BundleIntegrityError, HubUnavailableError
from spine_ui.core.preprocess import enhance
from spine_ui.core.triage import run_triage


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_manifest_round_trip(small_bundle_dir):
    man = read_manifest(small_bundle_dir)
    again = Manifest.from_json(json.loads(json.dumps(man.to_json())))
    assert again.to_json() == man.to_json()
    assert man.weights == {"densenet121": 0.42, "tf_efficientnetv2_s": 0.32, "resnet50": 0.26}
    assert man.triage.gate == 0.478
    assert man.trained is False
    assert set(man.files) == set(man.referenced_files())


def test_tampered_file_is_refused(small_bundle_dir, tmp_path):
    b = _copy(small_bundle_dir, tmp_path / "b")
    onnx = b / "resnet50.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="resnet50.onnx.*does not match its sha256"):
        Bundle(b, choose_runtime("onnx"))


def test_missing_file_and_escaping_names_are_refused(small_bundle_dir, tmp_path):
    b = _copy(small_bundle_dir, tmp_path / "b")
    (b / "densenet121.head.npz").unlink()
    with pytest.raises(BundleIntegrityError, match="missing"):
        Bundle(b, choose_runtime("onnx"))
    c = _copy(small_bundle_dir, tmp_path / "c")
    man = json.loads((c / "manifest.json").read_text())
    man["files"]["../outside.onnx"] = "0" * 64
    (c / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleIntegrityError, match="escapes"):
        Bundle(c, choose_runtime("onnx"))


def test_unknown_format_version_is_refused(small_bundle_dir, tmp_path):
    b = _copy(small_bundle_dir, tmp_path / "b")
    man = json.loads((b / "manifest.json").read_text())
    man["format_version"] = 99
    (b / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match="format version 99"):
        Bundle(b, choose_runtime("onnx"))


def test_runtime_choice(monkeypatch):
    assert choose_runtime("onnx").kind == "onnx"
    t = choose_runtime("torch")
    assert t.kind == "torch" and t.device == ("cuda" if torch.cuda.is_available() else "cpu")
    auto = choose_runtime("auto")
    assert auto.kind == ("torch" if torch.cuda.is_available() else "onnx")
    with pytest.raises(BundleError, match="Unknown runtime"):
        choose_runtime("tensorrt")
    from spine_ui.config import RuntimeConfig

    monkeypatch.setenv("SPINE_RUNTIME", "TORCH")
    assert RuntimeConfig.from_env().runtime == "torch"


def test_bundle_is_loaded_once_and_shared_across_threads(small_bundle_dir):
    forget_bundles()
    a = open_bundle(small_bundle_dir, "onnx")
    assert open_bundle(small_bundle_dir, "onnx") is a
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(id(a.classifier("resnet50")))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 1


def test_untrained_outputs_are_finite_and_not_saturated(small_bundle_dir):
    from spine_ui.synth.phantom import render_spine

    bundle = open_bundle(small_bundle_dir, "onnx")
    rng = np.random.default_rng(123)
    probs = []
    for lesions in ([], ["Vertebral collapse"], ["Surgical implant"], []):
        img, _ = render_spine(rng, lesions, height=384)
        r = run_triage(enhance(img), bundle)
        probs += [m.probability for m in r.models]
    probs = np.array(probs)
    assert np.all(np.isfinite(probs))
    assert np.all((probs > 0.005) & (probs < 0.995)), probs
    assert probs.std() > 0  # the models respond to their input


def test_hub_download_fails_fast_offline(tmp_path, monkeypatch):
    from spine_ui.bundle.hub import download_bundle

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(HubUnavailableError, match="offline"):
        download_bundle("spinexr/dernet-bundle", tmp_path / "dl")
    assert time.perf_counter() - t0 < 10


def test_hub_download_unreachable_endpoint(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "ENDPOINT", f"http://127.0.0.1:{port}")
    from spine_ui.bundle.hub import download_bundle

    with pytest.raises(HubUnavailableError, match="Could not download"):
        download_bundle("spinexr/dernet-bundle", tmp_path / "dl", timeout_s=3)


def test_locate_falls_back_to_local_when_hub_unavailable(small_bundle_dir, tmp_path, monkeypatch):
    from spine_ui.bundle.resolve import locate
    from spine_ui.config import RuntimeConfig

    models = tmp_path / "models"
    _copy(small_bundle_dir, models / "mine")
    monkeypatch.setenv("SPINE_BUNDLE_REPO", "spinexr/dernet-bundle")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = RuntimeConfig(models_dir=models, bundle_name="mine")
    assert locate(cfg) == models / "mine"
    with pytest.raises(BundleError, match="No model bundle 'other'"):
        locate(RuntimeConfig(models_dir=models, bundle_name="other"))


# --- importer ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fabricated(tmp_path_factory):
    """Random-weight checkpoints in the formats people actually have, plus a YOLO11 best.pt."""
    import timm
    from spine_ui.bundle.architectures import build_detector, detector_yaml
    from spine_ui.config import LESION_CLASSES

    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    models = {a: timm.create_model(a, pretrained=False, num_classes=1).eval()
              for a in ("densenet121", "tf_efficientnetv2_s", "resnet50")}
    torch.save({"model_state_dict": models["densenet121"].state_dict(), "epoch": 7}, d / "dn.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in models["tf_efficientnetv2_s"].state_dict().items()}},
               d / "ef.pth")
    torch.save(models["resnet50"].state_dict(), d / "rn.pth")
    det = build_detector(detector_yaml(len(LESION_CLASSES), "yolo11n"), LESION_CLASSES).eval()
    det.args = {"imgsz": 640}
    torch.save({"epoch": -1, "best_fitness": 0.4, "model": copy.deepcopy(det).half(), "ema": None,
                "optimizer": None, "train_args": {"imgsz": 640}}, d / "best.pt")
    return d, models, det


def test_import_checkpoints_round_trip(fabricated, tmp_path):
    from spine_ui.bundle.importer import import_checkpoints

    d, models, det = fabricated
    sizes = {"densenet121": 64, "tf_efficientnetv2_s": 64, "resnet50": 48}
    out = import_checkpoints(tmp_path / "imported", {"densenet121": d / "dn.pth", "tf_efficientnetv2_s": d / "ef.pth",
                                                     "resnet50": d / "rn.pth"}, sizes, d / "best.pt",
                             name="imported", gate=0.5)
    bundle = Bundle(out, choose_runtime("onnx"))
    assert bundle.manifest.trained and bundle.manifest.triage.gate == 0.5
    assert {c.arch: c.input_size for c in bundle.classifiers} == sizes
    assert bundle.manifest.detector_config.arch == "yolo11n"
    rng = np.random.default_rng(0)
    for arch, model in models.items():
        x = rng.standard_normal((2, 3, sizes[arch], sizes[arch])).astype(np.float32)
        logits, feats = bundle.classifier(arch)(x)
        with torch.no_grad():
            ref = model(torch.from_numpy(x))[:, 0].numpy()
        np.testing.assert_allclose(1 / (1 + np.exp(-logits)), 1 / (1 + np.exp(-ref)), atol=1e-4)
        assert feats.shape[0] == 2 and feats.ndim == 4
    x = rng.random((1, 3, 320, 256), dtype=np.float32)
    with torch.no_grad():
        ref = det.float()(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(bundle.detector()(x), ref, atol=1e-2, rtol=1e-3)  # half-precision checkpoint


def test_import_refuses_unsafe_yolo_checkpoint(fabricated, tmp_path):
    from spine_ui.bundle.importer import load_yolo_checkpoint

    torch.save({"model": argparse.Namespace(evil=True)}, tmp_path / "bad.pt")
    with pytest.raises(BundleError, match="argparse.Namespace.*not an allowed model class"):
        load_yolo_checkpoint(tmp_path / "bad.pt")


def test_import_refuses_mismatched_classifier(fabricated, tmp_path):
    from spine_ui.bundle.importer import load_classifier

    d, _, _ = fabricated
    with pytest.raises(BundleError, match="does not fit timm densenet121"):
        load_classifier("densenet121", d / "rn.pth")
    torch.save({"weights": argparse.Namespace()}, tmp_path / "obj.pth")
    with pytest.raises(BundleError, match="could not be loaded safely"):
        load_classifier("resnet50", tmp_path / "obj.pth")
