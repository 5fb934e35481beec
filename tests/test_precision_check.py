"""The per-bundle bf16 decision-path check: recorded in the manifest, read back, and the only way ``auto``
serves bf16 decisions; it never re-blesses a modified bundle and refuses to run where bf16 cannot be tested."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from spine_ui.bundle import precision as prec
from spine_ui.bundle.manifest import read_manifest
from spine_ui.bundle.precision import PrecisionCheck, decision_precision_for, passed_check, record_check, run_check
from spine_ui.bundle.runtime import cpu_has_bf16
from spine_ui.bundle.store import forget_bundles, open_bundle
from spine_ui.errors import BundleError, BundleIntegrityError

pytest.importorskip("openvino")


def check(max_dp: float = 0.001, flips: int = 0, gate_flips: int = 0, studies: int = 20) -> PrecisionCheck:
    return PrecisionCheck("bf16", studies, max_dp, max_dp / 2, flips, gate_flips, 4, 4, 0.003, "test",
                          "openvino x vs onnxruntime y", "2026-12-01T00:00:00+00:00")


@pytest.fixture
def bundle_copy(small_bundle_dir, tmp_path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(small_bundle_dir, dst)
    forget_bundles()
    yield dst
    forget_bundles()


def test_pass_rule():
    assert check().passed
    assert not check(max_dp=0.005).passed  # the tolerance is strict: |dP| < 0.005
    assert not check(flips=1).passed and not check(gate_flips=1).passed and not check(studies=0).passed
    assert PrecisionCheck.from_json(check().to_json()) == check()
    assert check().to_json()["passed"] is True


def test_record_round_trip_keeps_bundle_valid(bundle_copy):
    before = json.loads((bundle_copy / "manifest.json").read_text())
    assert "precision_checks" not in before and passed_check(read_manifest(bundle_copy)) is None
    record_check(bundle_copy, check(max_dp=0.009))
    record_check(bundle_copy, check())  # replaces the earlier bf16 record
    m = read_manifest(bundle_copy)
    assert [c.max_abs_dp for c in m.precision_checks] == [0.001]
    assert passed_check(m) == check()
    after = json.loads((bundle_copy / "manifest.json").read_text())
    assert after["files"] == before["files"]  # hashes untouched
    assert open_bundle(bundle_copy, "onnx").manifest.precision_checks == [check()]  # still verifies


def test_record_refuses_a_modified_bundle(bundle_copy):
    onnx = next(bundle_copy.glob("*.onnx"))
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    with pytest.raises(BundleIntegrityError):
        record_check(bundle_copy, check())
    assert "precision_checks" not in (bundle_copy / "manifest.json").read_text()


def test_auto_serves_bf16_only_after_a_passed_check(bundle_copy, monkeypatch):
    monkeypatch.setattr("spine_ui.bundle.runtime.cpu_has_bf16", lambda: True)
    monkeypatch.setattr("spine_ui.bundle.runtime.cuda_available", lambda: False)
    assert decision_precision_for(bundle_copy, "auto") == "fp32"  # no check recorded
    record_check(bundle_copy, check(max_dp=0.0052))
    assert decision_precision_for(bundle_copy, "auto") == "fp32"  # recorded, not passed
    record_check(bundle_copy, check())
    assert decision_precision_for(bundle_copy, "auto") == "bf16"
    assert decision_precision_for(bundle_copy, "fp32") == "fp32"  # an explicit choice wins
    monkeypatch.setattr("spine_ui.bundle.runtime.cpu_has_bf16", lambda: False)
    assert decision_precision_for(bundle_copy, "auto") == "fp32"  # no BF16 on this CPU
    monkeypatch.setattr("spine_ui.bundle.runtime.cpu_has_bf16", lambda: True)
    monkeypatch.setattr("spine_ui.bundle.runtime.cuda_available", lambda: True)
    assert decision_precision_for(bundle_copy, "auto") == "fp32"  # a GPU serves torch
    with pytest.raises(BundleError):
        decision_precision_for(bundle_copy, "int8")


def test_cli_check_refuses_without_bf16(bundle_copy, monkeypatch, capsys):
    from spine_ui.cli import main

    monkeypatch.setattr("spine_ui.bundle.runtime.cpu_has_bf16", lambda: False)
    code = main(["bundle", "check-precision", str(bundle_copy), "--studies", "1"])
    assert code == 3 and "no BF16" in capsys.readouterr().err
    assert "precision_checks" not in (bundle_copy / "manifest.json").read_text()


def test_box_matching():
    from spine_ui.core.detect import Lesion

    a = [Lesion("Osteophytes", "Osteophytes", 0, 0.8, (0, 0, 10, 10)), Lesion("Other lesions", "x", 6, 0.5, (20, 20, 30, 30))]
    b = [Lesion("Osteophytes", "Osteophytes", 0, 0.75, (0, 0, 10, 11)), Lesion("Osteophytes", "x", 0, 0.5, (20, 20, 30, 30))]
    matched, dconf = prec._matched(a, b)
    assert matched == 1 and dconf == pytest.approx(0.05)  # the second box has another class at that place


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no BF16: a bf16 check cannot run here")
def test_real_check_on_a_bf16_cpu(bundle_copy):
    images = prec.phantoms(2, height=384)
    result = run_check(bundle_copy, images, "2 phantoms")
    assert result.studies == 2 and result.median_abs_dp <= result.max_abs_dp
    assert 0 <= result.boxes_matched <= result.boxes_fp32
    assert result.max_abs_dp > 0  # bf16 arithmetic really ran: not bit-identical to fp32
