"""Process settings: the malloc arena cap the server applies at start-up."""
from __future__ import annotations

import platform
import sys

import pytest

from spine_ui._env import limit_malloc_arenas
from spine_ui.config import RuntimeConfig


def test_arena_cap_from_the_environment(monkeypatch):
    monkeypatch.delenv("SPINE_MALLOC_ARENAS", raising=False)
    assert RuntimeConfig.from_env().malloc_arenas == 2
    monkeypatch.setenv("SPINE_MALLOC_ARENAS", "0")
    assert RuntimeConfig.from_env().malloc_arenas == 0


def test_arena_cap_is_skipped_when_off_or_already_set(monkeypatch):
    assert limit_malloc_arenas(0) is False
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # glibc read it at start-up; leave it alone
    assert limit_malloc_arenas(2) is False


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="mallopt(M_ARENA_MAX) is glibc's")
def test_arena_cap_is_applied_on_glibc(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas(2) is True
