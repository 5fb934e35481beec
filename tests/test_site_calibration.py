"""Site recalibration (``python -m spine_ui calibrate``): a synthetic site whose probabilities run high moves the
gate up on the bundle's input scale; too few cases are refused; the original bundle stays as it was."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spine_ui.core.calibration import PlattScaling, TemperatureScaling, logit, sigmoid
from spine_ui.errors import CalibrationDataError
from spine_ui.services.recalibrate import compose, read_site_cases, recalibrate

ROOT = Path(__file__).resolve().parents[1]


def _site(n: int, seed: int = 0, shift: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Truth 50/50; the bundle's probabilities at this site are those of a well-separated score shifted up by
    ``shift`` on the logit: normal studies sit around sigmoid(shift - 1.5), far above the 0.478 gate."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2)
    z = np.where(y == 1, 1.5, -1.5) + rng.normal(0, 1.0, n)
    return sigmoid(z + shift), y


def _truth_csv(p, y) -> str:
    rows = ["key,truth,probability"] + [f"{i:064x},{t},{q:.6f}" for i, (q, t) in enumerate(zip(p, y))]
    return "\n".join(rows) + "\n"


def _worklist_csv(p, y, gate: float = 0.478) -> str:
    from spine_ui.services.batch import WorklistRow, to_csv

    rows = []
    for i, (q, t) in enumerate(zip(p, y)):
        called = q >= gate
        rows.append(WorklistRow(study=f"s{i}.dcm", verdict="abnormal" if called else "normal", probability=float(q),
                                gate=gate, review="agree" if called == bool(t) else "disagree"))
    rows.append(WorklistRow(study="unreviewed.dcm", verdict="abnormal", probability=0.9, gate=gate))
    return to_csv(rows)


def test_shifted_site_moves_the_gate_up_on_the_input_scale():
    p, y = _site(200)
    cases = read_site_cases(_truth_csv(p, y))
    fit = recalibrate(cases, gate_before=0.478, n_boot=300)
    # the recalibrated bundle calls abnormal where site(p) >= gate: the cut on the input scale
    grid = np.linspace(0.001, 0.999, 4000)
    cut = grid[np.argmax(fit.site.apply(logit(grid)) >= fit.gate)]
    assert cut > 0.75  # true cut: sigmoid(2.0) ~ 0.88; the old gate 0.478 called most normal studies abnormal
    assert fit.gate_ci[0] <= fit.gate <= fit.gate_ci[1]
    assert fit.ece_after < fit.ece_before
    assert fit.site.intercept < 0  # it pulls the probabilities down
    # the opposite shift moves the cut the other way
    p2, y2 = _site(200, seed=1, shift=-2.0)
    fit2 = recalibrate(read_site_cases(_truth_csv(p2, y2)), gate_before=0.478, n_boot=100)
    cut2 = grid[np.argmax(fit2.site.apply(logit(grid)) >= fit2.gate)]
    assert cut2 < 0.3


def test_worklist_reviews_give_the_truth():
    p, y = _site(60, seed=3)
    cases = read_site_cases(_worklist_csv(p, y))
    assert cases.source == "worklist reviews" and cases.skipped == 1
    np.testing.assert_array_equal(cases.truth, y)
    np.testing.assert_allclose(cases.probabilities, p, atol=1e-5)


def test_too_few_cases_and_bad_files_are_refused():
    p, y = _site(30)
    with pytest.raises(CalibrationDataError, match="at least 20 of each"):
        recalibrate(read_site_cases(_truth_csv(p, y)), 0.478)
    fit = recalibrate(read_site_cases(_truth_csv(p, y)), 0.478, min_per_class=10, n_boot=50)
    assert 0 < fit.gate < 1
    with pytest.raises(CalibrationDataError, match="truth must be 0 or 1"):
        read_site_cases("key,truth,probability\nab,2,0.5\n")
    with pytest.raises(CalibrationDataError, match="between 0 and 1"):
        read_site_cases("key,truth,probability\nab,1,1.7\n")
    with pytest.raises(CalibrationDataError, match="empty"):
        read_site_cases(b"")


def test_compose_equals_applying_both():
    z = np.linspace(-5, 5, 11)
    first, then = PlattScaling(0.7, 0.3), PlattScaling(1.4, -0.9)
    np.testing.assert_allclose(compose(first, then).apply(z), then.apply(logit(first.apply(z))), atol=1e-5)
    t = TemperatureScaling(2.0)
    np.testing.assert_allclose(compose(t, then).apply(z), then.apply(logit(t.apply(z))), atol=1e-5)


def test_cli_writes_a_new_bundle_and_keeps_the_original(small_bundle_dir, tmp_path, phantom_dicom):
    import spine_ui
    from spine_ui.bundle.manifest import read_manifest

    src = tmp_path / "models" / "base"
    import shutil

    shutil.copytree(small_bundle_dir, src)
    before = (src / "manifest.json").read_bytes()
    p, y = _site(120, seed=4)
    reviews = tmp_path / "reviews.csv"
    reviews.write_text(_worklist_csv(p, y))
    out = tmp_path / "models" / "base-site"

    def run(*extra):
        return subprocess.run([sys.executable, "-m", "spine_ui", "calibrate", "--bundle", str(src), "--reviews",
                               str(reviews), "--out", str(out), "--bootstrap", "200", *extra], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)

    proc = run()
    assert proc.returncode == 0, proc.stderr
    assert "gate 0.4780 ->" in proc.stdout and "95% bootstrap CI" in proc.stdout
    assert (src / "manifest.json").read_bytes() == before  # the original stays
    man = read_manifest(out)
    assert man.name == "base-site" and man.version.startswith(read_manifest(src).version + "+site.")
    assert man.calibration.site is not None and man.calibration.ensemble is None
    site = man.calibration.info["site"]
    assert site["n"] == 120 and site["source"] == "worklist reviews" and len(site["gate_ci95"]) == 2
    assert man.triage.gate == site["gate"] and man.triage.gate != 0.478
    # the new bundle loads (hashes verified) and serves calibrated findings
    f = spine_ui.analyze(phantom_dicom, bundle=spine_ui.open_bundle(out, "onnx"))
    assert f.calibrated and f.gate == man.triage.gate
    assert f.probability == pytest.approx(float(man.calibration.site.apply(logit(f.probability_uncalibrated))),
                                          abs=1e-5)
    # refusing: an existing --out, and too few cases
    again = run()
    assert again.returncode == 2 and "already exists" in again.stderr
    shutil.rmtree(out)
    few = run("--min-per-class", "100")
    assert few.returncode == 2 and "Too few reviewed cases" in few.stderr and not out.exists()
