"""``calibrate``: recalibrate a bundle to a site from its reviewed cases; writes a NEW bundle version."""
from __future__ import annotations

import argparse
from pathlib import Path


def cmd_calibrate(args: argparse.Namespace) -> int:
    from spine_ui.bundle.manifest import read_manifest
    from spine_ui.services.recalibrate import read_site_cases, recalibrate, sha256_text, write_site_bundle

    data = Path(args.reviews).read_bytes()
    cases = read_site_cases(data)
    man = read_manifest(Path(args.bundle))
    fit = recalibrate(cases, man.triage.gate, min_per_class=args.min_per_class, n_boot=args.bootstrap,
                      seed=args.seed)
    out = write_site_bundle(Path(args.bundle), Path(args.out), fit, cases, sha256_text(data))
    lo, hi = fit.gate_ci
    print(f"site bundle written to {out}: {fit.n} cases ({fit.n_abnormal} abnormal), gate {fit.gate_before:.4f} -> "
          f"{fit.gate:.4f} (95% bootstrap CI {lo:.4f}-{hi:.4f}), ECE {fit.ece_before:.4f} -> {fit.ece_after:.4f}"
          f"{f'; {cases.skipped} rows without a review mark skipped' if cases.skipped else ''}")
    return 0


def register(subparsers) -> None:
    from spine_ui.services.recalibrate import MIN_PER_CLASS

    p = subparsers.add_parser(
        "calibrate", help="recalibrate a bundle to a site from reviewed cases (writes a new bundle)",
        description="Fit a site calibration (Platt scaling) and gate (Youden's J, bootstrap CI) from a worklist "
                    "export with agree/disagree marks, or a CSV with the columns key,truth,probability; writes a "
                    "new bundle version at --out and leaves the original untouched.")
    p.add_argument("--bundle", required=True, help="the bundle folder whose probabilities the reviews hold")
    p.add_argument("--reviews", required=True, help="worklist CSV/JSON export with review marks, or truth CSV")
    p.add_argument("--out", required=True, help="the new bundle folder (must not exist)")
    p.add_argument("--min-per-class", type=int, default=MIN_PER_CLASS,
                   help=f"refuse below this many cases of either class (default {MIN_PER_CLASS})")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the gate's CI")
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=cmd_calibrate)
