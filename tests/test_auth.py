"""Sign-in: ``users add`` writes argon2 hashes to a 0600 file atomically; a wrong password is refused, audited
and rate-limited (per name and per client address) with exponential back-off; the running app's login page
uses it (one launch on loopback); off by default."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from spine_ui.config import StoreConfig
from spine_ui.services.auth import (CLIENT_ADDRESS, FREE_FAILURES, Authenticator, RateLimiter, add_user,
                                    load_users)
from spine_ui.services.store import Store

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_users_add_cli_writes_hashes_0600(tmp_path):
    users = tmp_path / "conf" / "users.json"
    env = {**os.environ, "SPINE_USERS": str(users), "PYTHONPATH": str(ROOT)}
    for name, role, pw in (("alice", "admin", "correct horse"), ("bob", "reviewer", "battery staple")):
        r = subprocess.run([sys.executable, "-m", "spine_ui", "users", "add", name, "--role", role,
                            "--password-stdin"], input=pw + "\n", env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    text = users.read_text()
    assert "correct horse" not in text and "battery staple" not in text and "$argon2id$" in text
    assert {n: u.role for n, u in load_users(users).items()} == {"alice": "admin", "bob": "reviewer"}
    assert [p.name for p in users.parent.iterdir()] == ["users.json"]  # no temp file left behind
    bad = subprocess.run([sys.executable, "-m", "spine_ui", "users", "add", "x y", "--password-stdin"],
                         input="longenough\n", env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "user name" in bad.stderr
    short = subprocess.run([sys.executable, "-m", "spine_ui", "users", "add", "carol", "--password-stdin"],
                           input="short\n", env=env, capture_output=True, text=True, timeout=120)
    assert short.returncode == 2 and "8 characters" in short.stderr


def test_wrong_password_refused_audited_and_rate_limited(tmp_path):
    users = tmp_path / "users.json"
    add_user(users, "alice", "correct horse", "reviewer")
    store = Store.open(StoreConfig(data_dir=tmp_path / "data"))
    clock = Clock()
    auth = Authenticator(users, store.audit, RateLimiter(clock))
    assert auth("alice", "correct horse") is True
    assert auth("alice", "wrong") is False
    assert auth("mallory", "alice's password?") is False  # unknown name: audited without the typed name
    events = [(e.user, e.action, e.outcome) for e in store.export_audit()]
    assert events == [("alice", "signin_failed", "wrong password"), ("(unknown)", "signin_failed", "unknown user")]
    for _ in range(FREE_FAILURES - 1):
        assert auth("alice", "wrong") is False
    assert auth("alice", "correct horse") is False  # locked out: even the right password waits
    assert store.export_audit()[-1].outcome == "rate-limited"
    clock.t += 2.5  # the first back-off is 2 s
    assert auth("alice", "correct horse") is True
    waits = []
    for i in range(FREE_FAILURES + 3):
        clock.t += auth.limiter.blocked_for("user:alice") + 0.1  # each try after the previous wait ran out
        assert auth("alice", "wrong") is False
        waits.append(round(auth.limiter.blocked_for("user:alice")))
    assert waits == [0, 0, 0, 0, 2, 4, 8, 16]  # exponential after FREE_FAILURES; tries while waiting don't count
    assert auth.role("alice") == "reviewer" and auth.role("nobody") is None
    store.close()


def test_rate_limit_per_client_address(tmp_path):
    users = tmp_path / "users.json"
    add_user(users, "alice", "correct horse")
    add_user(users, "bob", "battery staple")
    auth = Authenticator(users, None, RateLimiter(Clock()))
    token = CLIENT_ADDRESS.set("10.0.0.7")
    try:
        for i in range(FREE_FAILURES):  # a different name every time: the address is what repeats
            assert auth(f"guess{i}", "x") is False
        assert auth("bob", "battery staple") is False  # this address waits
    finally:
        CLIENT_ADDRESS.reset(token)
    token = CLIENT_ADDRESS.set("10.0.0.8")
    try:
        assert auth("bob", "battery staple") is True  # another address is not affected
    finally:
        CLIENT_ADDRESS.reset(token)


def test_running_app_login_page(small_bundle_dir, tmp_path, monkeypatch):
    """The real login route: right password in, wrong one refused and audited, the 6th try rate-limited."""
    pytest.importorskip("gradio")
    import httpx

    from spine_ui.bundle.store import open_bundle
    from spine_ui.core.pipeline import Analyzer
    from spine_ui.services.store.reviews import Reviews
    from spine_ui.ui.app import auth_kwargs, build_app, launch_kwargs
    from uihelpers import free_port

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gr"))
    users = tmp_path / "users.json"
    add_user(users, "alice", "correct horse", "admin")
    cfg = StoreConfig(data_dir=tmp_path / "data", users_file=users)
    reviews = Reviews(cfg)
    auth = Authenticator(users, reviews.audit)
    demo = build_app(Analyzer(open_bundle(small_bundle_dir, "onnx")), examples_dir=None, lime_samples=8,
                     reviews=reviews, auth=auth)
    port = free_port()
    demo.launch(**launch_kwargs(**auth_kwargs(auth), server_name="127.0.0.1", server_port=port,
                                prevent_thread_lock=True, quiet=True))
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=30) as c:
            assert c.get("/config").status_code == 401  # nothing without signing in
            assert c.post("/login", data={"username": "alice", "password": "nope"}).status_code == 400
            ok = c.post("/login", data={"username": "alice", "password": "correct horse"})
            assert ok.status_code == 200 and ok.json() == {"success": True}
            assert c.get("/config").status_code == 200
            for _ in range(FREE_FAILURES):
                c.post("/login", data={"username": "alice", "password": "nope"})
            assert c.post("/login", data={"username": "alice", "password": "correct horse"}).status_code == 400
    finally:
        demo.close()
    outcomes = [e.outcome for e in reviews.require().export_audit() if e.action == "signin_failed"]
    assert outcomes[0] == "wrong password" and outcomes[-1] == "rate-limited"
    assert auth.limiter.blocked_for("addr:127.0.0.1") > 0  # the middleware handed over the client address


def test_sign_in_off_by_default(monkeypatch):
    monkeypatch.delenv("SPINE_USERS", raising=False)
    from spine_ui.ui.app import auth_kwargs

    assert StoreConfig.from_env().users_file is None and auth_kwargs(None) == {}
