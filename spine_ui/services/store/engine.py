"""Engines and migrations: SQLite (WAL, full sync, busy timeout) or PostgreSQL (psycopg 3); Alembic upgrades
run programmatically; driver errors become typed :class:`~spine_ui.errors.StoreError` with a user message."""
from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from spine_ui.config import StoreConfig
from spine_ui.errors import (StoreCorruptError, StoreError, StoreFullError, StoreLockedError, StoreReadOnlyError,
                             StoreUnavailableError)

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def make_engine(cfg: StoreConfig) -> Engine:
    """An engine for ``cfg`` (creating the SQLite data folder); nothing is connected yet."""
    if cfg.database_url:
        return create_engine(cfg.url, pool_pre_ping=True, pool_size=5, max_overflow=5,
                             connect_args={"connect_timeout": cfg.connect_timeout_s})
    try:
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreReadOnlyError("The data folder for the review database cannot be created (permissions or a "
                                 "read-only disk): nothing can be saved.") from exc
    engine = create_engine(cfg.url, connect_args={"timeout": cfg.busy_timeout_s, "check_same_thread": False})
    busy_ms = int(cfg.busy_timeout_s * 1000)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:  # every new SQLite connection
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cur.execute("PRAGMA synchronous=FULL")  # a commit is on disk before set_mark returns
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return engine


def alembic_config(engine: Engine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if engine is not None:
        cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise translate(exc) from exc


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Bring the schema to ``revision`` (default: the newest); returns the revision now in place."""
    cfg = alembic_config(engine)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    except SQLAlchemyError as exc:
        raise translate(exc) from exc
    return current_revision(engine)


def translate(exc: BaseException) -> StoreError:
    """The typed store error for a driver error (the message names the cause, never data)."""
    if isinstance(exc, StoreError):
        return exc
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    text = str(orig).lower()
    if isinstance(orig, sqlite3.Error):
        if "locked" in text or "busy" in text:
            return StoreLockedError()
        if "readonly" in text or "read-only" in text:
            return StoreReadOnlyError()
        if "full" in text:
            return StoreFullError()
        if "not a database" in text or "malformed" in text or "corrupt" in text:
            return StoreCorruptError()
        if "unable to open" in text:
            return StoreReadOnlyError("The review database file cannot be opened (missing folder or permissions): "
                                      "nothing was saved.")
    if isinstance(exc, DBAPIError) and (exc.connection_invalidated or _pg_unreachable(text)):
        return StoreUnavailableError()
    if "read-only" in text or "read only" in text:
        return StoreReadOnlyError()
    if "no space" in text or "disk full" in text:
        return StoreFullError()
    log.warning("Store error (%s).", type(orig).__name__)
    return StoreError()


def _pg_unreachable(text: str) -> bool:
    return any(s in text for s in ("connection refused", "could not connect", "server closed the connection",
                                   "terminating connection", "connection failed", "connection is closed",
                                   "the database system is shutting down", "the database system is starting up",
                                   "timeout expired", "consuming input failed", "no such file or directory"))
