"""No acknowledged mark is lost: a process writing a burst of marks, printing each one's id only after
``set_mark`` returned (after the commit), is killed with SIGKILL mid-burst; every acknowledged mark is in the
database afterwards (SQLite and PostgreSQL). Two processes on one PostgreSQL see each other's marks."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spine_ui.config import StoreConfig
from spine_ui.services.store import Store

ROOT = Path(__file__).resolve().parents[1]
KEY = "d" * 64
WRITER = """
import sys
from spine_ui.config import StoreConfig
from spine_ui.services.store import Store
store = Store.open(StoreConfig.from_env())
print("ready", flush=True)
i = 0
while True:
    i += 1
    m = store.set_mark(sys.argv[1], "agree" if i % 2 else "disagree", f"burst {i}", sys.argv[2], "1.0")
    print(f"ack {m.id} {i}", flush=True)
"""
READER = """
import sys
from spine_ui.config import StoreConfig
from spine_ui.services.store import Store
store = Store.open(StoreConfig.from_env())
for line in sys.stdin:
    m = store.set_mark(sys.argv[1], "agree", line.strip(), sys.argv[2], "1.0")
    marks = store.marks_for(sys.argv[1])
    print(" ".join(sorted(f"{x.reviewer}:{x.comment}" for x in marks)), flush=True)
"""


@pytest.fixture(scope="module")
def pg():
    from pgserver import start_server

    server = start_server()
    yield server
    server.cleanup()


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request, tmp_path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("SPINE_")}
    e["PYTHONPATH"] = str(ROOT)
    if request.param == "sqlite":
        e["SPINE_DATA_DIR"] = str(tmp_path / "data")
    else:
        e["SPINE_DATABASE_URL"] = request.getfixturevalue("pg").new_database()
    return e


def config(env: dict[str, str]) -> StoreConfig:
    return StoreConfig(data_dir=Path(env.get("SPINE_DATA_DIR", "data")), database_url=env.get("SPINE_DATABASE_URL"))


def test_sigkill_mid_burst_loses_no_acknowledged_mark(env):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, KEY, "alice"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        acked: list[int] = []
        deadline = time.monotonic() + 60
        while len(acked) < 40 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(int(line.split()[1]))
        os.kill(proc.pid, signal.SIGKILL)  # mid-burst: the writer is between two commits or inside one
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    acked += [int(line.split()[1]) for line in rest.splitlines() if line.startswith("ack ")]
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= 40, err
    store = Store.open(config(env))
    stored = {m.id for m in store.marks_for(KEY, history=True)}
    store.close()
    assert set(acked) <= stored  # every acknowledged mark survived (an unacknowledged last one may too)
    assert len(stored) - len(acked) <= 1


def test_two_processes_on_postgresql_see_each_others_marks(pg):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPINE_")}
    env.update(PYTHONPATH=str(ROOT), SPINE_DATABASE_URL=pg.new_database())
    Store.open(config(env)).close()  # migrate once, before both start
    procs = [subprocess.Popen([sys.executable, "-c", READER, KEY, who], env=env, cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for who in ("ann", "ben")]
    try:
        ann, ben = procs
        ann.stdin.write("first\n"), ann.stdin.flush()
        assert ann.stdout.readline().split() == ["ann:first"]
        ben.stdin.write("second\n"), ben.stdin.flush()
        assert ben.stdout.readline().split() == ["ann:first", "ben:second"]  # ben's replica sees ann's mark
        ann.stdin.write("third\n"), ann.stdin.flush()
        assert ann.stdout.readline().split() == ["ann:third", "ben:second"]  # and ann's sees ben's
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=30)
