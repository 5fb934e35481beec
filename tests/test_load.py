"""Bounded load test against a running app on 127.0.0.1 (``benchmarks/load_test.py``). Not in the default run
(``-m "not load"`` in pyproject's addopts); run it with

    .venv/bin/python -m pytest -m load tests/test_load.py -s

Sizes from the environment: SPINE_LOAD_USERS (20), SPINE_LOAD_REQUESTS (100), SPINE_LOAD_TIMEOUT (1500 s),
SPINE_LOAD_BUNDLE / SPINE_LOAD_MODELS_DIR (default: the app's own, models/untrained).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.load

ROOT = Path(__file__).resolve().parents[1]


def _load_test_module():
    spec = importlib.util.spec_from_file_location("load_test", ROOT / "benchmarks" / "load_test.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_concurrent_users_on_loopback(tmp_path):
    lt = _load_test_module()
    argv = ["--users", os.environ.get("SPINE_LOAD_USERS", "20"),
            "--requests", os.environ.get("SPINE_LOAD_REQUESTS", "100"),
            "--timeout", os.environ.get("SPINE_LOAD_TIMEOUT", "1500"),
            "--json", str(tmp_path / "load.json"), "--quiet"]
    if os.environ.get("SPINE_LOAD_BUNDLE"):
        argv += ["--bundle", os.environ["SPINE_LOAD_BUNDLE"]]
    if os.environ.get("SPINE_LOAD_MODELS_DIR"):
        argv += ["--models-dir", os.environ["SPINE_LOAD_MODELS_DIR"]]
    args = lt.build_parser().parse_args(argv)
    summary = lt.run(args)
    lt.print_summary(summary)
    failures = [f"#{f['index']} {f['kind']}: {f['error']}" for f in summary["failures"]]
    assert summary["failed"] == 0, failures
    assert not summary["timed_out"] and summary["server_alive"]
    assert summary["completed"] == args.requests
    lat = summary["latency"]
    assert lat["good"]["n"] > 0 and lat["bad"]["n"] > 0 and lat["all"]["p95_s"] is not None
    rss = summary["rss"]
    assert rss["growth_ok"], rss
