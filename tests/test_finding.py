"""The typed Finding and the public facade: ``spine_ui.analyze(path) -> Finding``."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import spine_ui
from spine_ui.core.finding import BundleInfo, Finding


def test_facade_analyze_returns_a_typed_finding(small_bundle_dir, phantom_dicom):
    finding = spine_ui.analyze(phantom_dicom, bundle=spine_ui.open_bundle(small_bundle_dir, "onnx"))
    assert isinstance(finding, Finding) and finding.accepted and finding.verdict in ("normal", "abnormal")
    assert finding.key and len(finding.key) == 64
    with pytest.raises(Exception):
        finding.probability = 0.0  # frozen
    d = finding.to_dict()
    json.dumps(d)
    assert Finding.from_dict(d, key=finding.key).to_dict() == d  # the store's round trip
    assert {m.arch for m in finding.models} == set(d["models"])
    assert d["probability"] == round(finding.probability, 6)


def test_failure_finding_keys():
    f = Finding.failure("The file is empty.", BundleInfo("b", "1", False), 0.478, "CPU onnxruntime")
    d = f.to_dict()
    assert d["error"] is True and d["verdict"] == "unreadable" and "timings_ms" not in d and "warning" not in d
    assert Finding.from_dict(d).to_dict() == d


def test_python_one_liner_from_the_issue(small_bundle_dir, phantom_dicom, tmp_path):
    """``python -c "import spine_ui; f = spine_ui.analyze('x.dcm'); print(f.to_dict()['probability'])"``."""
    env = {"SPINE_MODELS_DIR": str(small_bundle_dir.parent), "SPINE_BUNDLE": small_bundle_dir.name,
           "SPINE_RUNTIME": "onnx", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    code = f"import spine_ui; f = spine_ui.analyze({str(phantom_dicom)!r}); print(f.to_dict()['probability'])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          cwd=str(spine_ui.__path__[0].rsplit("/", 1)[0]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 0.0 <= float(proc.stdout.strip().splitlines()[-1]) <= 1.0
