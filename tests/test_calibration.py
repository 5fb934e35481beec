"""Calibration: temperature and Platt scaling recover known parameters; ECE against independent references."""
from __future__ import annotations

import json

import numpy as np
import pytest

from spine_ui.core.calibration import (PlattScaling, TemperatureScaling, calibrate_probability,
                                       calibrator_from_json, expected_calibration_error, logit, nll,
                                       plot_reliability, reliability, sigmoid)


def _sample(z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (rng.random(z.shape[0]) < sigmoid(z)).astype(int)


@pytest.mark.parametrize("t0", [0.5, 2.5])
def test_temperature_scaling_recovers_a_known_temperature(t0):
    rng = np.random.default_rng(7)
    z = rng.normal(0.0, 4.0, 20_000)
    y = _sample(z / t0, rng)  # labels drawn from sigmoid(z / T0)
    cal = TemperatureScaling.fit(z, y)
    assert cal.temperature == pytest.approx(t0, rel=0.06)
    assert nll(cal.apply(z), y) < nll(sigmoid(z), y)  # better than the raw logits
    assert expected_calibration_error(y, cal.apply(z)) < 0.02


def test_temperature_scaling_on_view_logits_means_over_views():
    rng = np.random.default_rng(3)
    z = rng.normal(0.0, 3.0, (4000, 1)) + rng.normal(0.0, 0.2, (4000, 5))  # 5 TTA views per image
    y = _sample(z[:, 0] / 2.0, rng)
    cal = TemperatureScaling.fit(z, y)
    assert 1.6 < cal.temperature < 2.4
    np.testing.assert_allclose(cal.apply(z), sigmoid(z / cal.temperature).mean(axis=1))


def test_temperature_is_positive_and_bounded():
    with pytest.raises(ValueError):
        TemperatureScaling(0.0)
    with pytest.raises(ValueError):
        TemperatureScaling(-1.0)
    z = np.array([-3.0, -2.0, 2.0, 3.0])
    cal = TemperatureScaling.fit(z, [0, 0, 1, 1])  # separable: the NLL falls as T -> 0, the bound stops it
    assert 0.05 <= cal.temperature < 0.2
    with pytest.raises(ValueError, match="both classes"):
        TemperatureScaling.fit(z, [1, 1, 1, 1])


def test_platt_recovers_a_known_shift():
    """Scores whose true log-odds are z - 1.5 (the model runs high): Platt learns slope ~1, intercept ~-1.5;
    temperature scaling (no bias) cannot undo the shift."""
    rng = np.random.default_rng(11)
    z = rng.normal(1.0, 3.0, 20_000)
    y = _sample(z - 1.5, rng)
    platt = PlattScaling.fit(z, y, C=1e6)
    assert platt.slope == pytest.approx(1.0, abs=0.06)
    assert platt.intercept == pytest.approx(-1.5, abs=0.1)
    temp = TemperatureScaling.fit(z, y)
    assert expected_calibration_error(y, platt.apply(z)) < expected_calibration_error(y, temp.apply(z))


def test_calibrators_round_trip_through_json():
    for cal in (TemperatureScaling(1.7), PlattScaling(0.8, -0.3)):
        back = calibrator_from_json(json.loads(json.dumps(cal.to_json())))
        assert back == cal
    with pytest.raises(ValueError, match="unknown calibration"):
        calibrator_from_json({"method": "isotonic"})
    p = np.array([0.1, 0.478, 0.9])
    np.testing.assert_allclose(calibrate_probability(TemperatureScaling(1.0), p), p, atol=1e-9)
    np.testing.assert_allclose(calibrate_probability(PlattScaling(1.0, 0.0), p), p, atol=1e-9)


def _reference_ece(y: np.ndarray, p: np.ndarray, bins: int) -> float:
    """Written independently: numpy histograms of counts, of p and of y over the same equal-width edges."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    n, _ = np.histogram(p, bins=edges)
    sum_p, _ = np.histogram(p, bins=edges, weights=p)
    sum_y, _ = np.histogram(p, bins=edges, weights=y)
    keep = n > 0
    return float(np.sum(np.abs(sum_y[keep] - sum_p[keep])) / len(p))


@pytest.mark.parametrize("bins", [5, 10, 15])
def test_ece_matches_references(bins):
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(bins)
    p = rng.beta(0.7, 0.9, 3000)
    y = (rng.random(3000) < p ** 1.6).astype(int)  # miscalibrated on purpose
    edge_p = np.concatenate([p, [0.0, 1.0, 0.5, 0.2, 0.3]])  # bin edges and the closed last bin
    edge_y = np.concatenate([y, [0, 1, 1, 0, 1]])
    assert reliability(edge_y, edge_p, bins).ece == pytest.approx(_reference_ece(edge_y, edge_p, bins), abs=1e-12)
    rel = reliability(y, p, bins)
    assert rel.ece == pytest.approx(_reference_ece(y, p, bins), abs=1e-12)
    assert rel.ece > 0.05
    # scikit-learn's uniform calibration curve (it puts a value on an inner edge in the lower bin, so only
    # continuous values here): the same per-bin means over the non-empty bins
    prob_true, prob_pred = calibration_curve(y, p, n_bins=bins, strategy="uniform")
    filled = np.asarray(rel.counts) > 0
    np.testing.assert_allclose(np.asarray(rel.frequency)[filled], prob_true, atol=1e-12)
    np.testing.assert_allclose(np.asarray(rel.confidence)[filled], prob_pred, atol=1e-12)
    assert sum(rel.counts) == 3000


def test_ece_of_perfectly_calibrated_bins_is_zero_and_json_is_clean(tmp_path):
    p = np.array([0.25] * 4 + [0.75] * 4)
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    assert expected_calibration_error(y, p, bins=10) == pytest.approx(0.0)
    assert expected_calibration_error(1 - y, p, bins=10) == pytest.approx(0.5)
    data = reliability(y, p).to_json()
    json.dumps(data, allow_nan=False)
    assert data["counts"][2] == 4 and data["frequency"][0] is None
    png = plot_reliability({"before": (y, p), "after": (y, np.full(8, 0.5))}, tmp_path / "rel.png", "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_logit_inverts_sigmoid_and_stays_finite():
    z = np.linspace(-8, 8, 17)
    np.testing.assert_allclose(logit(sigmoid(z)), z, atol=1e-6)
    assert np.all(np.isfinite(logit(np.array([0.0, 1.0]))))


# --------------------------------------------------------------------------- serving a calibrated bundle
def _copy_with_calibration(src, dst, calibration, gate=None):
    import dataclasses
    import shutil

    from spine_ui.bundle.manifest import read_manifest, write_manifest

    shutil.copytree(src, dst)
    man = read_manifest(dst)
    man.calibration = calibration
    if gate is not None:
        man.triage = dataclasses.replace(man.triage, gate=gate)
    write_manifest(dst, man)
    return dst


def test_calibrated_bundle_serves_the_calibrated_probability(small_bundle_dir, phantom_dicom, tmp_path):
    import spine_ui
    from spine_ui.bundle.manifest import read_manifest
    from spine_ui.core.calibration import BundleCalibration
    from spine_ui.core.finding import Finding

    plain = spine_ui.analyze(phantom_dicom, bundle=spine_ui.open_bundle(small_bundle_dir, "onnx"))
    assert plain.calibrated is False and "probability_uncalibrated" not in plain.to_dict()
    temps = {"densenet121": TemperatureScaling(2.0), "resnet50": TemperatureScaling(0.5)}
    cal = BundleCalibration(temps, ensemble=PlattScaling(1.3, 0.4), site=PlattScaling(0.9, -0.2), info={})
    raw_p = plain.probability
    gate = 0.5 * (1 + raw_p)  # above the raw vote: only the calibrated scale can flip the verdict
    bdir = _copy_with_calibration(small_bundle_dir, tmp_path / "cal", cal, gate=gate)
    assert read_manifest(bdir).calibration == cal  # JSON round trip through the manifest
    f = spine_ui.analyze(phantom_dicom, bundle=spine_ui.open_bundle(bdir, "onnx"))
    d = f.to_dict()
    assert d["calibrated"] is True and d["probability_uncalibrated"] == pytest.approx(raw_p, abs=1e-6)
    assert list(d)[3:6] == ["probability", "calibrated", "probability_uncalibrated"]
    # expected: members' view logits / T, mean over views, weighted vote, Platt, then the site Platt
    member = {}
    for m in f.models:
        z = logit(np.asarray(m.views))
        member[m.arch] = float(np.mean(sigmoid(z / temps.get(m.arch, TemperatureScaling(1.0)).temperature)))
        assert m.probability == pytest.approx(float(np.mean(m.views)), abs=1e-6)  # members stay raw
    vote = sum(member[m.arch] * m.weight for m in f.models) / sum(m.weight for m in f.models)
    expected = float(sigmoid(0.9 * (1.3 * logit(vote) + 0.4) - 0.2))
    assert f.probability == pytest.approx(expected, abs=1e-4)
    assert f.gate == gate and f.abnormal == (f.probability >= gate)
    assert Finding.from_dict(d, key=f.key).to_dict() == d


# --------------------------------------------------------------------------- training and the UI card
def test_training_calibration_on_oof_views_and_the_gate_scale():
    from spine_ui.core.contract import weighted_vote
    from spine_ui.train.calibration import calibrated_scores, ece_summary, fit_bundle_calibration

    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 3000)
    # two over-confident members (true log-odds = z / 3) with 3 jittered views each
    z = {a: (2 * y - 1)[:, None] * 2.0 + rng.normal(0, 4.0, (3000, 1)) + rng.normal(0, 0.1, (3000, 3))
         for a in ("a", "b")}
    views = {a: sigmoid(v) for a, v in z.items()}
    weights = {"a": 0.6, "b": 0.4}
    cal = fit_bundle_calibration(views, y, weights)
    assert all(t.temperature > 1.5 for t in cal.members.values())  # over-confidence -> T > 1
    before = weighted_vote({a: v.mean(axis=1) for a, v in views.items()}, weights)
    after = calibrated_scores(cal, views, weights)
    summary = ece_summary(y, before, after)
    assert summary["ece_after"] < summary["ece_before"] / 2
    json.dumps(summary, allow_nan=False)


def test_triage_card_says_whether_calibrated():
    from spine_ui.core.finding import BundleInfo, Finding
    from spine_ui.ui.render import triage_html

    base = dict(accepted=True, reason=None, verdict="abnormal", probability=0.71, gate=0.5, abnormal=True,
                bundle=BundleInfo("b", "1", True), runtime="CPU onnxruntime")
    assert "Not calibrated" in triage_html(Finding(**base))
    html = triage_html(Finding(**base, calibrated=True, probability_uncalibrated=0.634))
    assert "Calibrated probability" in html and "0.634" in html and "Not calibrated" not in html
