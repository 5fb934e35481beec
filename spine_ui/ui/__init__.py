"""Gradio front end (``python app.py``). Import lazily: gradio is only needed when the UI is used."""
from __future__ import annotations

from typing import Any

__all__ = ["build_app", "main"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from spine_ui.ui import app

        return getattr(app, name)
    raise AttributeError(name)
