"""Cancel tokens per browser session: a session's LIME stops when it opens another study, or when it closes."""
from __future__ import annotations

import threading
from collections import OrderedDict

from spine_ui.services.scheduler import CancelToken


class SessionTokens:
    """One live (study key, token) per session; at most ``size`` sessions (the oldest is cancelled)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = max(1, int(size))
        self._live: OrderedDict[str, tuple[str, CancelToken]] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, session: str | None, study: str | None) -> CancelToken:
        """The token for ``study`` in ``session``; a different study replaces (cancels) the previous one's."""
        if not session:
            return CancelToken()  # no session (API call): nothing can replace it
        dropped: list[CancelToken] = []
        with self._lock:
            current = self._live.get(session)
            if current is not None and current[0] == study and not current[1].cancelled:
                self._live.move_to_end(session)
                return current[1]
            if current is not None:
                dropped.append(current[1])
            token = CancelToken()
            self._live[session] = (study or "", token)
            self._live.move_to_end(session)
            while len(self._live) > self.size:
                dropped.append(self._live.popitem(last=False)[1][1])
        for old in dropped:
            old.cancel("replaced")
        return token

    def close(self, session: str | None, study: str | None = None) -> None:
        """The session ended (tab closed, client gone) or closed ``study``: stop its work. With ``study``, a
        session already on another study is left alone."""
        if not session:
            return
        with self._lock:
            current = self._live.get(session)
            if current is None or (study is not None and current[0] != study):
                return
            del self._live[session]
        if current is not None:
            current[1].cancel("closed")

    def __len__(self) -> int:
        return len(self._live)
