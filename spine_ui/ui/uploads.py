"""Uploads: each read into memory and gradio's temporary copy deleted at once (``UploadFiles``, mixed into
``SpineUI``); the last few held by content hash for follow-up actions (``RecentStudies``)."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from spine_ui.errors import InputError
from spine_ui.lru import LRU

log = logging.getLogger(__name__)

#: Upper bound on the bytes of uploads held in memory (the LRU drops the oldest beyond it).
RECENT_MAX_BYTES = 1024 ** 3
#: Zero-byte temp files gradio's File.preprocess leaves in its cache root are swept once this old.
ORPHAN_AGE_S = 120.0


class RecentStudies:
    """The uploads of the last few studies, in memory only, keyed by content hash (bounded LRU).

    The page keeps only the key in its session state, so follow-up actions (explain anyway, LIME, another
    Grad-CAM map) find the study without the server keeping one copy per browser session."""

    def __init__(self, size: int, max_bytes: int | None = None) -> None:
        self._items: LRU[str, bytes] = LRU(size, max_bytes, len)

    def put(self, key: str, data: bytes) -> str:
        """Hold ``data`` under its analysis key (the content hash the Analyzer computed)."""
        self._items.put(key, data)
        return key

    def get(self, key: str | None) -> bytes | None:
        return self._items.get(key or None)


class UploadFiles:
    """Reading and deleting gradio's upload copies; the host sets ``analyzer``, ``cache_dir`` and ``keep``."""

    analyzer: Any
    cache_dir: Path
    keep: Callable[[], set[str]]

    def take_upload(self, path: str | os.PathLike) -> bytes:
        """Read the uploaded file into memory, then delete gradio's temporary copy of it."""
        p = Path(path)
        try:
            with open(p, "rb") as fh:
                data = fh.read(self.analyzer.decode_cfg.max_file_bytes + 1)
        except OSError as exc:
            raise InputError("The uploaded file could not be read; please upload it again.") from exc
        finally:
            self.discard(p)
        return data

    def discard(self, p: Path) -> None:
        """Delete ``p`` if it is an upload in gradio's cache (not an example), plus its now-empty folder."""
        try:
            cache = self.cache_dir.resolve()
            rp = p.resolve()
            if str(p) in self.keep() or str(rp) in self.keep() or not rp.is_relative_to(cache) or rp == cache:
                return
            rp.unlink(missing_ok=True)
            if rp.parent != cache:
                try:
                    rp.parent.rmdir()
                except OSError:
                    pass
            self._sweep_orphans(cache)
        except OSError as exc:
            log.warning("Could not delete an uploaded temp file (%s).", type(exc).__name__)

    @staticmethod
    def _sweep_orphans(cache: Path) -> None:
        """gradio's ``File.preprocess`` creates an empty ``tmp*`` file in the cache root on every call and never
        removes it; delete those (empty and older than ORPHAN_AGE_S, so no in-flight upload is touched)."""
        now = time.time()
        try:
            with os.scandir(cache) as it:
                for entry in it:
                    if not entry.name.startswith("tmp") or not entry.is_file(follow_symlinks=False):
                        continue
                    st = entry.stat(follow_symlinks=False)
                    if st.st_size == 0 and now - st.st_mtime > ORPHAN_AGE_S:
                        try:
                            os.unlink(entry.path)
                        except OSError:
                            pass
        except OSError:
            pass
