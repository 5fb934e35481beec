"""A throw-away PostgreSQL server for tests: Debian's ``postgresql`` binaries, a temp data folder owned by the
``postgres`` user (PostgreSQL refuses to run as root), 127.0.0.1 on a free port, the unix socket in the temp
folder. Tests skip, saying why, only when the binaries are missing."""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from uihelpers import free_port

def _pg_bin() -> Path:
    """SPINE_PG_BIN, else the newest Debian server version installed (/usr/lib/postgresql/<major>/bin)."""
    if os.environ.get("SPINE_PG_BIN"):
        return Path(os.environ["SPINE_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3])
                   if p.parts[-3].isdigit() else 0)
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()


def skip_reason() -> str | None:
    if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
        return (f"PostgreSQL server binaries not found in {PG_BIN} (Debian: apt-get install postgresql; "
                "or set SPINE_PG_BIN to the folder holding initdb and pg_ctl)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and 'runuser' is missing (util-linux)"
    return None


class PgServer:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="spine-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.running = False
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        else:
            self.prefix = []
        self._run(PG_BIN / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")

    def _run(self, *cmd) -> None:
        subprocess.run(self.prefix + [str(c) for c in cmd], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=on"
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-o", opts, "-l", self.root / "log", "-w", "-t", "60", "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")
            self.running = False

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh empty database; returns its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def cleanup(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_server() -> PgServer:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    server = PgServer()
    try:
        server.start()
    except BaseException:
        server.cleanup()
        raise
    return server
