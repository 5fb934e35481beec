"""``python -m spine_ui bench``: per-stage medians (min/max) on one synthetic DICOM, on onnxruntime and on
eager torch CPU in the same run (so the ratio is measured, not remembered), plus cold start and peak RSS.

Weights' values do not change cost, so the untrained bundle is a fair benchmark."""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np


def _stats(samples: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(samples) * 1000, 1), "min_ms": round(min(samples) * 1000, 1),
            "max_ms": round(max(samples) * 1000, 1), "n": len(samples)}


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return _stats(samples)


def synthetic_study(path: Path, height: int = 2560) -> Path:
    """A VinDr-like abnormal phantom: JPEG2000 lossless, 12-bit, MONOCHROME1."""
    from spine_ui.synth.dicom_writer import write_dicom
    from spine_ui.synth.phantom import render_spine, to_stored

    img, _ = render_spine(np.random.default_rng(2024), ["Surgical implant", "Vertebral collapse"], height=height)
    return write_dicom(path, to_stored(img, 12, monochrome1=True), bits_stored=12, photometric="MONOCHROME1",
                       transfer_syntax="jpeg2000", modality=None)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def stage_times(bundle, data: bytes, repeats: int, lime_samples: int | None, with_lime: bool) -> dict:
    from spine_ui.core.decode import decode_bytes
    from spine_ui.core.detect import run_detection
    from spine_ui.core.explain.gradcam import explain_gradcam
    from spine_ui.core.explain.lime_explainer import explain_lime
    from spine_ui.core.pipeline import AnalysisOptions, Analyzer
    from spine_ui.core.preprocess import enhance
    from spine_ui.core.triage import run_triage

    study = decode_bytes(data, "bench.dcm")
    enhanced = enhance(study.pixels, bundle.manifest.preprocess)
    tri = run_triage(enhanced, bundle)
    out = {
        "decode": timed(lambda: decode_bytes(data, "bench.dcm"), repeats),
        "preprocess": timed(lambda: enhance(study.pixels, bundle.manifest.preprocess), repeats),
        "triage_tta5": timed(lambda: run_triage(enhanced, bundle), repeats),
        "detection": timed(lambda: run_detection(enhanced, study.shape, bundle), repeats),
        "gradcam_fused": timed(lambda: explain_gradcam(tri, bundle, enhanced), repeats),
        "abnormal_first_answer": timed(lambda: Analyzer(bundle).analyze(
            data, "bench.dcm", AnalysisOptions(detect="always", gradcam=True, explain_normal=True)), repeats),
    }
    if with_lime:
        n = lime_samples or bundle.manifest.explain.lime_samples
        out["lime"] = timed(lambda: explain_lime(enhanced, bundle, n_samples=n), 1, warmup=0)
        out["lime"]["samples"] = n
    return out


def cold_start_s(models_dir: Path, bundle_name: str) -> float:
    """A fresh interpreter: import, open + verify the bundle, build every runner, build the UI if available."""
    code = ("import time; t=time.perf_counter(); import spine_ui; from spine_ui.bundle.resolve import load_default; "
            "b=load_default(); b.warm_up()\n"
            "try:\n from spine_ui.ui.app import build_app; from spine_ui.core.pipeline import Analyzer; build_app(Analyzer(b))\n"
            "except ImportError: pass\n"
            "print(time.perf_counter()-t)")
    env = {**os.environ, "SPINE_MODELS_DIR": str(models_dir), "SPINE_BUNDLE": bundle_name, "SPINE_RUNTIME": "onnx"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"cold start failed: {proc.stderr[-500:]}")
    return wall


def run_bench(repeats: int = 5, lime_samples: int | None = None, with_torch: bool = True,
              with_lime: bool = True, models_dir: Path | None = None) -> dict:
    from spine_ui.bundle.resolve import ensure_untrained
    from spine_ui.bundle.store import open_bundle
    from spine_ui.config import RuntimeConfig

    cfg = RuntimeConfig.from_env()
    models_dir = Path(models_dir or cfg.models_dir)
    path = ensure_untrained(models_dir / "untrained")
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_study(Path(tmp) / "bench.dcm").read_bytes()
    result: dict = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                    "study": {"bytes": len(data)}, "repeats": repeats}
    result["cold_start_s"] = round(cold_start_s(models_dir, "untrained"), 2)
    onnx = open_bundle(path, "onnx")
    t0 = time.perf_counter()
    onnx.warm_up()
    load_ms = round((time.perf_counter() - t0) * 1000, 1)  # build every runner (bundle already verified)
    result["onnx"] = stage_times(onnx, data, repeats, lime_samples, with_lime)
    result["onnx"]["load_ms"] = load_ms
    result["peak_rss_mb_after_onnx"] = round(peak_rss_mb(), 1)
    if with_torch:
        torch_b = open_bundle(path, "torch")
        result["torch_cpu"] = stage_times(torch_b, data, max(1, repeats // 2), lime_samples, False)
        result["ratio_torch_over_onnx"] = {
            k: round(result["torch_cpu"][k]["median_ms"] / result["onnx"][k]["median_ms"], 2)
            for k in ("triage_tta5", "detection", "abnormal_first_answer")}
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return result


def table(result: dict) -> str:
    rows = [f"{'stage':<24}{'onnx median':>14}{'min':>9}{'max':>9}{'torch median':>15}"]
    for k, v in result["onnx"].items():
        if not isinstance(v, dict):
            continue
        t = result.get("torch_cpu", {}).get(k)
        rows.append(f"{k:<24}{v['median_ms']:>12.0f}ms{v['min_ms']:>7.0f}ms{v['max_ms']:>7.0f}ms"
                    + (f"{t['median_ms']:>13.0f}ms" if t else ""))
    rows.append(f"cold start (to ready)   {result['cold_start_s']:>11.1f} s")
    rows.append(f"peak RSS (ONNX serving) {result['peak_rss_mb_after_onnx']:>11.0f} MB")
    for k, r in result.get("ratio_torch_over_onnx", {}).items():
        rows.append(f"torch/onnx {k:<13}{r:>11.2f}x")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m spine_ui bench")
    add_arguments(p)
    return run_from_args(p.parse_args(argv))


def add_arguments(p) -> None:
    p.add_argument("--json", help="write the figures as JSON here")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--lime-samples", type=int, default=None, help="default: the bundle's lime_samples")
    p.add_argument("--no-torch", action="store_true", help="skip the eager torch CPU comparison")
    p.add_argument("--no-lime", action="store_true")


def run_from_args(args) -> int:
    result = run_bench(args.repeats, args.lime_samples, not args.no_torch, not args.no_lime)
    print(table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def register(sub) -> None:
    be = sub.add_parser("bench", help="per-stage timings on a synthetic DICOM (onnx vs eager torch)")
    add_arguments(be)
    be.set_defaults(func=run_from_args)
