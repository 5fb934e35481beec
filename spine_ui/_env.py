"""Process-wide settings applied before any third-party import: offline by default, no telemetry.

Ultralytics otherwise downloads Arial.ttf and checks for updates; gradio sends analytics; huggingface_hub
retries a hub it cannot reach; ``import openvino`` sends a Google Analytics event through openvino_telemetry
unless that package cannot be imported (OpenVINO then uses its own no-op stub). ``SPINE_ONLINE=1`` lets the hub download path try the network.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import sys
from pathlib import Path

CACHE_DIR = Path(os.environ.get("SPINE_CACHE_DIR", Path.home() / ".cache" / "spine_ui"))


def configure() -> None:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    if os.environ.get("SPINE_ONLINE") != "1":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]  (ImportError -> OpenVINO's stub)
    cfg = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(CACHE_DIR / "ultralytics")))
    _place_fonts(cfg / "Ultralytics")


def _place_fonts(target: Path) -> None:
    """Give ultralytics its fonts locally (matplotlib ships DejaVu Sans) so it never downloads them."""
    wanted = [target / "Arial.ttf", target / "Arial.Unicode.ttf"]
    if all(p.exists() for p in wanted):
        return
    try:
        import matplotlib

        src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        target.mkdir(parents=True, exist_ok=True)
        for p in wanted:
            if not p.exists():
                shutil.copyfile(src, p)
    except (ImportError, OSError):  # plotting labels degrade; nothing else depends on it
        pass


def restore_threads(n: int = 0) -> int:
    """Ultralytics pins torch to (cores - 1) threads; put torch back to ``n`` (0: all cores)."""
    import torch

    n = n or os.cpu_count() or 1
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def limit_malloc_arenas(n: int) -> bool:
    """Cap glibc's malloc arenas at ``n`` for this process (like ``MALLOC_ARENA_MAX=n``; 0 keeps glibc's 8 per
    core). glibc gives threads that allocate concurrently arenas of their own; the server's worker threads
    allocate large image buffers, which fragment them: in the 20-user load test RSS rose by ~280 MB over the
    first ~350 requests with the default and stayed flat with 2 arenas. No-op off Linux/glibc or when
    ``MALLOC_ARENA_MAX`` is already set (glibc applied it at start-up). Returns whether the cap was set."""
    if n <= 0 or "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-8, int(n)))  # -8: M_ARENA_MAX in glibc's malloc.h
    except (OSError, AttributeError):
        return False
