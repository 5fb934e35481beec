"""Users and sign-in: a users file of argon2 hashes and roles, the password check gradio's ``auth=`` calls,
and a per-name / per-address rate limit with exponential back-off.

The file (``SPINE_USERS``) is JSON: ``{"version": 1, "users": {NAME: {"role": ROLE, "hash": ARGON2}}}``,
written atomically with mode 0600. Roles: ``reviewer`` (analyse, mark) and ``admin`` (also export and audit).
"""
from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

log = logging.getLogger(__name__)

ROLES = ("reviewer", "admin")
LOCAL_USER = "local"  # the one user when sign-in is off (an admin on their own machine)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
FREE_FAILURES = 5  # failures allowed before the back-off starts
MAX_BACKOFF_S = 900.0
UNKNOWN_USER = "(unknown)"
#: The client address of the request being authenticated (set by :class:`ClientAddressMiddleware`).
CLIENT_ADDRESS: contextvars.ContextVar[str | None] = contextvars.ContextVar("spine_client_address", default=None)
_hasher = PasswordHasher()


@dataclass(frozen=True)
class User:
    name: str
    role: str
    hash: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def valid_name(name: str) -> bool:
    return bool(NAME_RE.match(name or "")) and name != LOCAL_USER


def load_users(path: Path) -> dict[str, User]:
    """The users of ``path`` (an empty dict when the file does not exist yet)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"the users file cannot be read ({type(exc).__name__})") from exc
    return {n: User(n, u.get("role", "reviewer"), u["hash"]) for n, u in (raw.get("users") or {}).items()}


def save_users(path: Path, users: dict[str, User]) -> None:
    """Write the users file atomically (temp file in the same folder, fsync, rename), mode 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"version": 1, "users": {u.name: {"role": u.role, "hash": u.hash} for u in users.values()}}
    fd, tmp = tempfile.mkstemp(prefix=".users-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_user(path: Path, name: str, password: str, role: str = "reviewer") -> User:
    """Add or replace ``name`` (its password and role)."""
    if not valid_name(name):
        raise ValueError("a user name is 1-64 letters, digits, '.', '_', '@' or '-' (and not 'local')")
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    if len(password) < 8:
        raise ValueError("a password needs at least 8 characters")
    users = load_users(path)
    users[name] = User(name, role, _hasher.hash(password))
    save_users(path, users)
    return users[name]


class RateLimiter:
    """After ``FREE_FAILURES`` failures for a key (user name or address), further attempts are refused for
    2, 4, 8, ... seconds (capped); a success clears the key."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._fails: dict[str, tuple[int, float]] = {}  # key -> (failures, blocked until)
        self._lock = threading.Lock()

    def blocked_for(self, key: str) -> float:
        with self._lock:
            _n, until = self._fails.get(key, (0, 0.0))
            return max(0.0, until - self.clock())

    def failure(self, key: str) -> None:
        with self._lock:
            n, _until = self._fails.get(key, (0, 0.0))
            n += 1
            wait = 0.0 if n < FREE_FAILURES else min(MAX_BACKOFF_S, 2.0 ** (n - FREE_FAILURES + 1))
            self._fails[key] = (n, self.clock() + wait)
            if len(self._fails) > 10_000:  # bounded memory under a spray of names
                self._fails.pop(next(iter(self._fails)))

    def success(self, key: str) -> None:
        with self._lock:
            self._fails.pop(key, None)


class Authenticator:
    """``auth(name, password) -> bool`` for gradio; refusals are audited as ``signin_failed``."""

    def __init__(self, users_file: Path, audit: Callable[..., Any] | None = None,
                 limiter: RateLimiter | None = None) -> None:
        self.users_file = Path(users_file)
        self.audit = audit
        self.limiter = limiter or RateLimiter()

    def users(self) -> dict[str, User]:
        return load_users(self.users_file)  # re-read: ``users add`` takes effect without a restart

    def role(self, name: str | None) -> str | None:
        if name is None:
            return None
        user = self.users().get(name)
        return user.role if user else None

    def __call__(self, name: str, password: str) -> bool:
        address = CLIENT_ADDRESS.get()
        keys = ["user:" + name] + (["addr:" + address] if address else [])
        try:
            user = self.users().get(name)
        except ValueError:
            log.error("The users file cannot be read; sign-in refused.")
            user = None
        who = name if user else UNKNOWN_USER  # an unknown name may be a password typed in the wrong box
        if any(self.limiter.blocked_for(k) > 0 for k in keys):
            self._refuse(who, "rate-limited")
            return False
        ok = False
        if user is not None:
            try:
                ok = _hasher.verify(user.hash, password)
            except (VerificationError, InvalidHashError):
                ok = False
        if ok:
            for k in keys:
                self.limiter.success(k)
            return True
        for k in keys:
            self.limiter.failure(k)
        self._refuse(who, "wrong password" if user else "unknown user")
        return False

    def _refuse(self, who: str, outcome: str) -> None:
        log.info("Sign-in refused (%s).", outcome)
        if self.audit is not None:
            self.audit(who, "signin_failed", outcome=outcome)


class ClientAddressMiddleware:
    """ASGI middleware: makes the client address of a ``/login`` request visible to :class:`Authenticator`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope.get("type") == "http" and scope.get("path", "").rstrip("/").endswith("/login"):
            client = scope.get("client")
            token = CLIENT_ADDRESS.set(client[0] if client else None)
            try:
                await self.app(scope, receive, send)
            finally:
                CLIENT_ADDRESS.reset(token)
            return
        await self.app(scope, receive, send)
