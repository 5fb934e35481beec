"""Helpers for tests that drive the web app's handlers or start it on loopback."""
from __future__ import annotations

import shutil
import socket
import uuid
from pathlib import Path

#: LIME samples for app tests: enough to exercise batching and progress, cheap on 2 cores.
LIME_SAMPLES = 16


def value(update):
    """The value inside a gr.update(...) dict, or the plain value."""
    if isinstance(update, dict) and update.get("__type__") == "update":
        return update.get("value")
    return update


def visible(update) -> bool | None:
    return update.get("visible") if isinstance(update, dict) and update.get("__type__") == "update" else None


def as_upload(ui, src: Path, name: str | None = None) -> Path:
    """A copy of ``src`` where gradio puts uploads: <gradio cache>/<random folder>/<original name>."""
    folder = ui.cache_dir / uuid.uuid4().hex
    folder.mkdir(parents=True)
    dst = folder / (name or src.name)
    shutil.copyfile(src, dst)
    return dst


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
