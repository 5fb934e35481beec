"""Atomic writes of files and folders: readers see the old one or the new one, never a half-written one.

Each write goes to a uniquely named temporary file in the target's folder, then ``os.replace`` renames it
over the target (atomic on POSIX within one file system). A failed write leaves the target untouched and no
temporary file behind. No fsync: this protects against interrupted writes and concurrent readers, not
against power loss.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_dir"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for a writer that wants a file name (``torch.save``,
    ``cv2.imwrite`` ...); it replaces ``path`` when the block succeeds and is removed when it raises.
    The temporary name keeps ``path``'s suffix, for writers that choose a format by extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parent folders created); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (parent folders created); returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, **dumps_kwargs: Any) -> Path:
    """Write ``obj`` as JSON (plus a final newline) to ``path`` atomically; ``dumps_kwargs`` go to ``json.dumps``."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, **dumps_kwargs) + "\n")


@contextmanager
def atomic_dir(path: str | os.PathLike,
               replace: bool | Callable[[Path], bool] = True) -> Iterator[Path]:
    """Yield an empty sibling temp folder to fill; when the block succeeds it becomes ``path``, when it raises
    it is deleted. Readers never see a half-built folder. An existing ``path`` is removed first when
    ``replace`` is true (or returns true for it, checked at the end); otherwise ``os.rename`` raises
    ``OSError`` for a non-empty ``path``, as it does when another process created ``path`` meanwhile."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        yield tmp
        tmp.chmod(0o755)
        if path.exists() and (replace(path) if callable(replace) else replace):
            shutil.rmtree(path)
        os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
