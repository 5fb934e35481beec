"""Run-folder helpers shared by the stages: the cached split, fingerprints and ``done.json`` markers."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from spine_ui._io import atomic_write_json

#: (train indices, validation indices) of one cross-validation fold
Fold = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Split:
    """One cached split: image ids in annotation order, their studies and labels, the cache folder."""

    ids: list[str]
    studies: list[str]
    labels: np.ndarray
    root: Path  # cache_dir/<split>

    def paths(self, idx: Sequence[int] | None = None) -> list[Path]:
        """Cached enhanced PNGs (all, or the given indices)."""
        ids = self.ids if idx is None else [self.ids[i] for i in idx]
        return [self.root / "images" / f"{i}.png" for i in ids]


def fingerprint(*parts: Any) -> str:
    """Short SHA-256 of the canonical JSON of ``parts`` (the settings a result depends on)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def ids_key(ids: Sequence[str]) -> str:
    """Short SHA-256 of an ordered id list."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def read_json(path: Path) -> dict | None:
    """The JSON object at ``path``, or None when missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: Any) -> Path:
    """Write strict JSON (NaN -> null) atomically, creating parent folders."""
    from spine_ui.train.report import clean_json

    return atomic_write_json(path, clean_json(data))


def done(path: Path, fp: str) -> dict | None:
    """The ``done.json`` at ``path`` when it was written with fingerprint ``fp``, else None."""
    d = read_json(path)
    return d if d and d.get("fingerprint") == fp else None
