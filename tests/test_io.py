"""Atomic writes (spine_ui._io): the target is the old or the new content, never partial; no temp files left."""
from __future__ import annotations

import json

import pytest

from spine_ui._io import atomic_dir, atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text


def test_writes_replace_and_leave_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_json(target, {"x": float("1.5")})
    assert json.loads(target.read_text()) == {"x": 1.5} and target.read_text().endswith("\n")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.json", "b.bin", "sub"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "state.pt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.suffix == ".pt" and tmp.parent == tmp_path
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.pt"]
    with pytest.raises(TypeError):
        atomic_write_json(target, {"x": object()})
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_atomic_dir(tmp_path):
    out = tmp_path / "models" / "b"
    with atomic_dir(out) as tmp:
        (tmp / "f").write_text("1")
        assert not out.exists()
    assert (out / "f").read_text() == "1"
    with pytest.raises(ValueError):
        with atomic_dir(out) as tmp:
            (tmp / "g").write_text("2")
            raise ValueError("failed export")
    assert sorted(p.name for p in out.iterdir()) == ["f"] and [p.name for p in out.parent.iterdir()] == ["b"]
    with pytest.raises(OSError):  # not replacing an existing, non-empty folder
        with atomic_dir(out, replace=lambda p: not (p / "f").exists()) as tmp:
            (tmp / "h").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["f"] and [p.name for p in out.parent.iterdir()] == ["b"]
    with atomic_dir(out) as tmp:
        (tmp / "h").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["h"]
