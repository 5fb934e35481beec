"""Training backend: folds, selection, augmentation, resumable fitting, the CLI parser and a tiny end-to-end
run whose bundle ``python -m spine_ui analyze`` loads and uses."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from spine_ui.config import PreprocessConfig
from spine_ui.train.config import (ClassifierTrainConfig, DetectorTrainConfig, ReportConfig, STAGES, TrainArgs)

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- folds and selection
def test_grouped_folds_keep_studies_together():
    from spine_ui.train.folds import grouped_folds

    rng = np.random.default_rng(0)
    studies = [f"s{i}" for i in range(40) for _ in range(int(rng.integers(1, 4)))]
    labels = [int(s[1:]) % 3 == 0 for s in studies]
    folds = grouped_folds(studies, labels, n_folds=5, seed=42)
    assert len(folds) == 5
    studies = np.array(studies)
    seen: dict[str, int] = {}
    for k, (tr, va) in enumerate(folds):
        assert not set(studies[tr]) & set(studies[va])
        for s in set(studies[va]):
            assert s not in seen, f"study {s} in two validation folds"
            seen[s] = k
        assert len(set(np.asarray(labels)[va])) == 2  # stratified: both classes in every fold
    assert set(seen) == set(studies)


def test_simplex_grid():
    from spine_ui.train.selection import simplex_grid

    grid = list(simplex_grid(3, 0.05))
    assert len(grid) == 231
    assert all(min(w) >= 0 and abs(sum(w) - 1) < 1e-9 for w in grid)
    assert len(set(grid)) == 231
    assert list(simplex_grid(2, 0.5)) == [(1.0, 0.0), (0.5, 0.5), (0.0, 1.0)]
    with pytest.raises(ValueError):
        list(simplex_grid(3, 0.3))


def test_weight_search_known_answer():
    """Two complementary models separate the classes only when averaged 50/50; a third, inverted model
    only hurts. The unique AUROC-1 candidate on the 0.05 grid is (0.5, 0.5, 0)."""
    from spine_ui.train.selection import search_weights, select

    y = np.array([1, 1, 0, 0])
    probs = {"a": np.array([1.0, 0.0, 0.6, 0.3]), "b": np.array([0.0, 1.0, 0.3, 0.6]),
             "c": np.array([0.0, 0.0, 1.0, 1.0])}
    r = search_weights(probs, y, {"a": 0.42, "b": 0.32, "c": 0.26})
    assert r.weights == {"a": 0.5, "b": 0.5, "c": 0.0}
    assert r.auroc == 1.0 and r.n_best == 1 and r.n_candidates == 231
    s = select(probs, y, {"a": 0.42, "b": 0.32, "c": 0.26})
    # ensemble = (0.5, 0.5, 0.45, 0.45): Youden cut between 0.45 and 0.5
    assert s["gate"] == pytest.approx(0.475)
    assert s["youden"]["youden_j"] == 1.0


def test_weight_search_ties_go_to_the_defaults():
    from spine_ui.train.selection import search_weights

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 50)
    p = rng.random(50)
    r = search_weights({"a": p, "b": p, "c": p}, y, {"a": 0.5, "b": 0.3, "c": 0.2})
    assert r.n_best == 231  # identical members: every candidate ties
    assert r.weights == {"a": 0.5, "b": 0.3, "c": 0.2}


# --------------------------------------------------------------------------- detector helpers
def test_repeat_factors_inverse_sqrt_frequency():
    from spine_ui.train.detector import repeat_factors

    # class 0 in 8 images, class 1 in 2 images, class 2 in 1 image (with class 0), 3 normal images
    images = [{0}] * 7 + [{0, 2}] + [{1}] * 2 + [set()] * 3
    repeats, info = repeat_factors(images, nc=3, max_repeat=10)
    assert info["class_images"] == [8, 2, 1]
    assert info["class_repeat"] == pytest.approx([1.0, 2.0, np.sqrt(8)], abs=1e-4)
    assert repeats[:7] == [1] * 7 and repeats[8:10] == [2, 2] and repeats[10:] == [1, 1, 1]
    assert repeats[7] in (2, 3)  # sqrt(8) = 2.83, stochastically rounded
    capped, _ = repeat_factors(images, nc=3, max_repeat=2)
    assert max(capped) == 2


def test_write_list_keeps_duplicates(tmp_path):
    from spine_ui.train.detector import write_list

    p = write_list(tmp_path / "l.txt", [tmp_path / "a.png", tmp_path / "b.png"], [1, 3])
    assert p.read_text().splitlines() == [str(tmp_path / "a.png")] + [str(tmp_path / "b.png")] * 3


# --------------------------------------------------------------------------- classifier data and fitting
def _png_set(tmp_path: Path, n: int = 6, size=(80, 60)) -> tuple[list[Path], np.ndarray]:
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for i in range(n):
        img = (rng.random(size) * 120).astype(np.uint8)
        if i % 2:
            img[20:40, 20:40] = 250  # "abnormal": a bright block
        p = tmp_path / f"im{i}.png"
        cv2.imwrite(str(p), img)
        paths.append(p)
        labels.append(i % 2)
    return paths, np.array(labels)


def test_dataset_uses_the_serving_preprocessing(tmp_path):
    import torch

    from spine_ui.core.contract import to_model_input
    from spine_ui.train.classifier import CachedImages, augment

    paths, labels = _png_set(tmp_path, 2)
    cfg = ClassifierTrainConfig(input_size=48)
    x, y = CachedImages(paths, labels, 48, cfg, train=False)[1]
    ref, _ = to_model_input(cv2.imread(str(paths[1]), cv2.IMREAD_GRAYSCALE), 48)
    assert torch.equal(x, torch.from_numpy(ref)) and float(y) == 1.0
    ds = CachedImages(paths, labels, 48, cfg, train=True)
    a, b = ds[0][0], ds[0][0]
    assert torch.equal(a, b)  # seeded by (seed, epoch, index)
    ds.epoch = 1
    assert not torch.equal(a, ds[0][0]) and a.shape == (3, 48, 48)
    img = cv2.imread(str(paths[0]), cv2.IMREAD_GRAYSCALE)
    out = augment(img, np.random.default_rng(0), cfg)
    assert out.shape == img.shape and out.dtype == np.uint8


def test_fit_resumes_from_last_checkpoint(tmp_path, monkeypatch):
    import torch

    from spine_ui.train import classifier as C

    paths, labels = _png_set(tmp_path)
    cfg = ClassifierTrainConfig(archs=("resnet18",), input_size=32, batch=(("resnet18", 4),), workers=0,
                                patience=5, eval_batch=8)
    dev = torch.device("cpu")
    original = C.CachedImages.__getitem__

    def crash_in_epoch_2(self, i):
        if self.train and self.epoch == 2:
            raise KeyboardInterrupt("simulated interruption")
        return original(self, i)

    monkeypatch.setattr(C.CachedImages, "__getitem__", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        C.fit("resnet18", paths[:4], labels[:4], tmp_path / "unit", cfg, dev, val_paths=paths[4:],
              val_labels=labels[4:], epochs=3, fingerprint="fp1")
    ck = torch.load(tmp_path / "unit" / "last.pt", weights_only=True)
    assert ck["state"]["epoch"] == 1 and not (tmp_path / "unit" / "done.json").exists()
    monkeypatch.setattr(C.CachedImages, "__getitem__", original)
    lines: list[str] = []
    res = C.fit("resnet18", paths[:4], labels[:4], tmp_path / "unit", cfg, dev, val_paths=paths[4:],
                val_labels=labels[4:], epochs=3, fingerprint="fp1", log=lines.append)
    assert any("resuming after epoch 1" in m for m in lines)
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    assert 1 <= res.best_epoch <= 3 and res.criterion == "auroc"
    assert (tmp_path / "unit" / "best.pt").exists() and not (tmp_path / "unit" / "last.pt").exists()
    done = json.loads((tmp_path / "unit" / "done.json").read_text())
    assert done["fingerprint"] == "fp1" and done["epochs_run"] == 3
    probs = C.predict(C.load_model("resnet18", tmp_path / "unit" / "best.pt"), paths, 32,
                      ("identity", "hflip"), dev)
    assert probs.shape == (6, 2) and np.all((probs > 0) & (probs < 1))


@pytest.mark.gpu
def test_fit_on_cuda_with_amp(tmp_path):
    import torch

    from spine_ui.train import classifier as C

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    paths, labels = _png_set(tmp_path)
    cfg = ClassifierTrainConfig(archs=("resnet18",), input_size=32, batch=(("resnet18", 4),), workers=0,
                                eval_batch=8)
    dev = torch.device("cuda")
    res = C.fit("resnet18", paths[:4], labels[:4], tmp_path / "unit", cfg, dev, val_paths=paths[4:],
                val_labels=labels[4:], epochs=2)
    assert [h["epoch"] for h in res.history] == [1, 2]
    assert all(np.isfinite(h["train_loss"]) for h in res.history)
    probs = C.predict(C.load_model("resnet18", tmp_path / "unit" / "best.pt"), paths, 32, ("identity",), dev,
                      amp=True)
    assert probs.shape == (6, 1) and np.all((probs > 0) & (probs < 1))


def test_pretrained_falls_back_to_scratch(monkeypatch):
    from spine_ui.train import classifier as C

    real = C.build_classifier

    def fake(arch, pretrained=False):
        if pretrained:
            raise RuntimeError("no network")
        return real(arch, pretrained=False)

    monkeypatch.setattr(C, "build_classifier", fake)
    msgs: list[str] = []
    with pytest.warns(UserWarning, match="training from scratch"):
        model, used = C.make_model("resnet18", True, msgs.append)
    assert used is False and model is not None and msgs


# --------------------------------------------------------------------------- configuration and CLI
def test_train_args_resolution():
    a = TrainArgs(data="d", out="models/x", epochs=3, imgsz=64, det_epochs=2, det_imgsz=96, folds=0, batch=8,
                  workers=0, stages=("export", "classify")).resolved()
    assert a.classifier.epochs == 3 and a.classifier.input_size == 64 and a.classifier.batch_for("resnet50") == 8
    assert a.detector.epochs == 2 and a.detector.imgsz == 96 and a.detector.workers == 0
    assert not a.selection.enabled and a.stages == ("classify", "export") and isinstance(a.out, Path)
    defaults = TrainArgs(data="d", out="o").resolved()
    assert defaults.classifier.batch_for("tf_efficientnetv2_s") == 24 and defaults.detector.epochs == 35
    assert defaults.selection.folds == 5 and defaults.stages == STAGES
    with pytest.raises(ValueError, match="unknown stage"):
        TrainArgs(data="d", out="o", stages=("classify", "nope")).resolved()
    with pytest.raises(ValueError):
        TrainArgs(data="d", out="o", device="tpu").resolved()


def test_default_run_dir():
    from spine_ui.train.runner import default_run_dir

    assert default_run_dir(Path("models/abc")) == Path("runs/abc")
    assert default_run_dir(Path("/x/bundles/abc")) == Path("/x/bundles/abc_run")


def test_cli_parser(capsys):
    from spine_ui.cli.train import args_from_namespace, cmd_train, register

    parser = argparse.ArgumentParser(prog="python -m spine_ui")
    register(parser.add_subparsers(dest="cmd", required=True))
    ns = parser.parse_args(["train", "--data", "d", "--out", "models/n", "--synthetic", "40", "--epochs", "2",
                            "--det-epochs", "1", "--imgsz", "128", "--det-imgsz", "96", "--folds", "3",
                            "--stages", "classify,select", "--device", "cpu", "--pretrained", "--resume"])
    assert ns.func is cmd_train
    a = args_from_namespace(ns)
    assert (a.synthetic, a.epochs, a.det_epochs, a.imgsz, a.det_imgsz, a.folds) == (40, 2, 1, 128, 96, 3)
    assert a.stages == ("classify", "select") and a.device == "cpu" and a.pretrained and a.resume
    bad = parser.parse_args(["train", "--data", "d", "--out", "o", "--stages", "classify,bogus"])
    assert bad.func(bad) == 2
    assert "unknown stage" in capsys.readouterr().err


def test_progress_goes_through_logging(capsys):
    import logging
    import re

    from spine_ui.train.runner import _progress_to_stderr

    stage = logging.getLogger("spine_ui.train.stages.data")
    with _progress_to_stderr(True):
        stage.info("cache %s: %d images", "train", 3)
        stage.warning("careful")
    with _progress_to_stderr(False):
        stage.info("hidden when quiet")
        stage.warning("shown when quiet")
    err = capsys.readouterr().err
    assert re.search(r"\[train +0:\d\d\.\d\] cache train: 3 images", err)
    assert "] WARNING: careful" in err and "hidden" not in err and "shown when quiet" in err
    assert not logging.getLogger("spine_ui.train").handlers  # the handler is removed after the run


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """~12 synthetic images at 128 px, classifiers at 64 px, 2 folds, 1 epoch, YOLO11n 1 epoch at 64 px."""
    from spine_ui.train.runner import train

    root = tmp_path_factory.mktemp("train")
    args = TrainArgs(data=root / "data", out=root / "models" / "tiny", synthetic=12, synthetic_height=128,
                     epochs=1, det_epochs=1, imgsz=64, det_imgsz=64, folds=2, batch=4, det_batch=4,
                     det_arch="yolo11n", workers=0, device="cpu", verbose=False,
                     detector=DetectorTrainConfig(nbs=4, plots=False), report=ReportConfig(bootstrap=200),
                     preprocess=PreprocessConfig(clahe_clip=2.5))  # not the default: the manifest must carry it
    t0 = time.perf_counter()
    result = train(args)
    return args, result, time.perf_counter() - t0


def test_tiny_run_writes_bundle_report_and_folds(tiny_run):
    from spine_ui.bundle.manifest import read_manifest

    args, result, _ = tiny_run
    run = result.run_dir
    assert result.bundle == args.out and (args.out / "manifest.json").is_file()
    man = read_manifest(args.out)
    assert man.trained and man.detector is not None and man.detector.arch == "yolo11n"
    assert [c.arch for c in man.classifiers] == ["densenet121", "tf_efficientnetv2_s", "resnet50"]
    assert all(c.input_size == 64 for c in man.classifiers)
    assert man.preprocess == args.preprocess != PreprocessConfig()  # what training used, not the default
    sel = json.loads((run / "select" / "done.json").read_text())["result"]
    assert sel["source"] == "cross-validation"
    assert sum(man.weights.values()) == pytest.approx(1.0)
    assert man.weights == pytest.approx(sel["weights"]) and man.triage.gate == pytest.approx(sel["gate"])
    assert man.ood["file"] == "ood.npz" and man.ood["percentile"] == 99.0 and "ood.npz" in man.files
    assert {"selection", "test", "data"} <= set(man.metrics) and "auroc" in man.metrics["test"]
    assert "detection" in man.metrics and "map50" in man.metrics["detection"]
    json.loads((args.out / "manifest.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    # study-grouped folds: no study in two validation folds, every training image out-of-fold once
    folds = json.loads((run / "folds.json").read_text())["fold_of"]
    index = [line.split(",") for line in (run / "cache" / "train" / "index.csv").read_text().splitlines()[1:]]
    study_fold: dict[str, int] = {}
    for image_id, study_id, *_ in index:
        assert study_fold.setdefault(study_id, folds[image_id]) == folds[image_id]
    assert set(folds) == {row[0] for row in index}
    # report
    rep = run / "report"
    for name in ("report.md", "report.html", "metrics.json", "roc_test.png", "pr_test.png", "roc_oof.png"):
        assert (rep / name).is_file(), name
    metrics = json.loads((rep / "metrics.json").read_text())
    assert {"selection", "test", "oof", "detection", "yolo_imbalance"} <= set(metrics)
    assert "per_class" in metrics["detection"] and "own_check" in metrics["detection"]
    assert "<table>" in (rep / "report.html").read_text()
    exported = json.loads((run / "export" / "done.json").read_text())["result"]
    assert exported["serving_check"]["max_abs_diff"] < 1e-3


def test_tiny_bundle_serves_through_the_cli(tiny_run):
    """Pick the training image nearest the training feature distribution (as the server computes it), then
    analyse its DICOM with ``python -m spine_ui analyze --json --bundle``."""
    from spine_ui.bundle.runtime import choose_runtime
    from spine_ui.bundle.store import Bundle
    from spine_ui.train.classifier import read_enhanced
    from spine_ui.core.triage import run_triage

    args, result, _ = tiny_run
    bundle = Bundle(args.out, choose_runtime("onnx"))
    ood = bundle.ood()
    images = sorted((result.run_dir / "cache" / "train" / "images").glob("*.png"))
    dist = {p.stem: float(ood.distance(run_triage(read_enhanced(p), bundle, tta=False).pooled_features)[0])
            for p in images}
    assert sum(d <= ood.threshold for d in dist.values()) >= len(dist) - 1  # 99th percentile of training
    image_id = min(dist, key=dist.get)
    dicom = args.data / "train_images" / f"{image_id}.dicom"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "spine_ui", "analyze", str(dicom), "--json", "--bundle",
                           str(args.out), "--detect", "always"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    finding = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"accepted", "verdict", "probability", "gate", "models", "lesions", "bundle", "gate_layers"} <= set(finding)
    assert finding["bundle"]["trained"] is True and "warning" not in finding
    assert finding["accepted"], finding["reason"]
    assert finding["gate"] == pytest.approx(bundle.manifest.triage.gate)
    assert set(finding["models"]) == {"densenet121", "tf_efficientnetv2_s", "resnet50"}
    assert finding["detector_ran"] is True
    features = next(layer for layer in finding["gate_layers"] if layer["name"] == "features")
    assert features["status"] == "passed"


def test_tiny_run_resume_skips_finished_stages(tiny_run):
    from spine_ui.train.runner import train

    args, result, _ = tiny_run
    marker = result.run_dir / "classify" / "done.json"
    before = marker.stat().st_mtime_ns
    t0 = time.perf_counter()
    again = train(TrainArgs(**{**args.__dict__, "resume": True}))
    assert time.perf_counter() - t0 < 60
    assert marker.stat().st_mtime_ns == before
    assert again.bundle == args.out and again.metrics["selection"]["source"] == "cross-validation"


def test_offline_amp_check_is_restored():
    import ultralytics.engine.trainer as trainer

    from spine_ui.train.detector import _OfflineAmpCheck

    original = trainer.check_amp
    with _OfflineAmpCheck():
        from ultralytics.utils import WEIGHTS_DIR

        if not (WEIGHTS_DIR / "yolo26n.pt").is_file():
            assert trainer.check_amp(None) is True
    assert trainer.check_amp is original
