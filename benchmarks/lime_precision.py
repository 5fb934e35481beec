"""LIME at bf16 (OpenVINO) against fp32 (onnxruntime) on synthetic phantoms, in one run:

- per study: Spearman rank correlation of the superpixel weights (scipy.stats.spearmanr), overlap of the
  top-10 superpixels by |weight|, LIME wall time at each precision, and whether a repeat at bf16 is identical;
- the decision path at bf16: max |dP| of the triage probability (5-view TTA ensemble) over the studies, on each
  bundle given (the decision path stays fp32 unless this is < 0.005 on a trained bundle).

    .venv/bin/python benchmarks/lime_precision.py                       # the default (untrained) bundle
    .venv/bin/python benchmarks/lime_precision.py --bundle models/untrained --trained /tmp/i12bundle --studies 5
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import spine_ui  # noqa: E402,F401  (offline environment first)

def studies(n: int, height: int) -> list[np.ndarray]:
    from spine_ui.bundle.precision import phantoms

    return phantoms(n, height)


def lime_agreement(path: Path, images: list[np.ndarray], samples: int | None) -> dict:
    from scipy.stats import spearmanr

    from spine_ui.bundle.store import open_bundle
    from spine_ui.core.explain.lime_explainer import explain_lime
    from spine_ui.core.preprocess import enhance

    fp32 = open_bundle(path, "onnx", lime_precision="fp32")
    bf16 = open_bundle(path, "onnx", lime_precision="bf16")
    fp32.warm_up()
    bf16.warm_up()
    rows = []
    for i, img in enumerate(images):
        e = enhance(img, fp32.manifest.preprocess)
        explain_lime(e, bf16, n_samples=16) if i == 0 else None  # first-call allocations out of the timing
        t0 = time.perf_counter()
        a = explain_lime(e, fp32, n_samples=samples)
        t1 = time.perf_counter()
        b = explain_lime(e, bf16, n_samples=samples)
        t2 = time.perf_counter()
        again = explain_lime(e, bf16, n_samples=samples)
        wa, wb = a.segment_weights, b.segment_weights
        rho = float(spearmanr(wa, wb).statistic)
        top = lambda w: set(np.argsort(-np.abs(w))[:10].tolist())  # noqa: E731
        rows.append({"study": i, "superpixels": int(len(wa)), "spearman": rho,
                     "top10_overlap": len(top(wa) & top(wb)), "fp32_s": t1 - t0, "bf16_s": t2 - t1,
                     "bf16_repeat_identical": bool(np.array_equal(wb, again.segment_weights))})
        print(f"  study {i}: spearman {rho:.4f}  top-10 overlap {rows[-1]['top10_overlap']}/10  "
              f"LIME fp32 {t1 - t0:.2f} s  bf16 {t2 - t1:.2f} s  repeat identical {rows[-1]['bf16_repeat_identical']}",
              flush=True)
    return {"bundle": fp32.manifest.name, "samples": samples or fp32.manifest.explain.lime_samples, "studies": rows,
            "spearman_min": min(r["spearman"] for r in rows), "spearman_median": float(np.median([r["spearman"] for r in rows])),
            "top10_min": min(r["top10_overlap"] for r in rows),
            "fp32_s_median": float(np.median([r["fp32_s"] for r in rows])),
            "bf16_s_median": float(np.median([r["bf16_s"] for r in rows]))}


def decision_dp(path: Path, images: list[np.ndarray]) -> dict:
    """The bundle's bf16 decision-path check (``spine_ui.bundle.precision.run_check``; needs a BF16 CPU)."""
    from spine_ui.bundle.manifest import read_manifest
    from spine_ui.bundle.precision import run_check

    c = run_check(path, images, f"{len(images)} synthetic phantoms")
    return {"bundle": read_manifest(path).name, "trained": read_manifest(path).trained, "studies": c.studies,
            "max_abs_dp": c.max_abs_dp, "median_abs_dp": c.median_abs_dp, "verdict_flips": c.verdict_flips,
            "gate_flips": c.gate_flips, "passed": c.passed}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="bundle for the LIME agreement (default: the app's bundle)")
    ap.add_argument("--trained", type=Path, action="append", default=[],
                    help="a trained bundle for the decision-path |dP| (repeatable)")
    ap.add_argument("--studies", type=int, default=5)
    ap.add_argument("--dp-studies", type=int, default=20)
    ap.add_argument("--samples", type=int, default=None, help="LIME samples (default: the bundle's)")
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "lime_precision.json")
    args = ap.parse_args(argv)

    from spine_ui.bundle.resolve import locate
    from spine_ui.bundle.runtime import cpu_has_bf16
    from spine_ui.config import RuntimeConfig

    path = args.bundle or locate(RuntimeConfig.from_env())
    print(f"CPU reports BF16: {cpu_has_bf16()}")
    print(f"LIME bf16 (OpenVINO) vs fp32 (onnxruntime), {args.studies} phantoms, bundle {path.name}:")
    out = {"cpu_bf16": cpu_has_bf16(), "lime": lime_agreement(path, studies(args.studies, args.height), args.samples)}
    lime = out["lime"]
    print(f"LIME: spearman min {lime['spearman_min']:.4f} median {lime['spearman_median']:.4f}; top-10 overlap "
          f"min {lime['top10_min']}/10; median time fp32 {lime['fp32_s_median']:.2f} s, bf16 {lime['bf16_s_median']:.2f} s "
          f"({lime['fp32_s_median'] / lime['bf16_s_median']:.2f}x)")
    dp_images = studies(args.dp_studies, args.height)
    out["decision"] = [decision_dp(p, dp_images) for p in [path, *args.trained]]
    for d in out["decision"]:
        print(f"decision path at bf16, bundle {d['bundle']} (trained={d['trained']}): max |dP| {d['max_abs_dp']:.5f}, "
              f"median {d['median_abs_dp']:.5f}, verdict flips {d['verdict_flips']}/{d['studies']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
