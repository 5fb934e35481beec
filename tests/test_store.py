"""The persistent store on SQLite and on a real PostgreSQL (started by the test run): restart keeps marks and
worklists, concurrent marks are all kept, migrations from empty and from revision 0001 with data, the migrated
schema equals the models, retention purge, typed errors for a locked / read-only / full / corrupt database."""
from __future__ import annotations

import datetime as dt
import sqlite3

import pytest
from sqlalchemy import create_engine, text

from spine_ui.config import StoreConfig
from spine_ui.core.finding import BundleInfo, Finding
from spine_ui.errors import (StoreCorruptError, StoreFullError, StoreLockedError, StoreReadOnlyError,
                             StoreUnavailableError)
from spine_ui.services.store import Entry, Store, head_revision, make_engine, upgrade

K1, K2 = "1" * 64, "2" * 64


@pytest.fixture(scope="session")
def pg():
    from pgserver import start_server

    server = start_server()
    yield server
    server.cleanup()


@pytest.fixture(params=["sqlite", "postgresql"])
def cfg(request, tmp_path) -> StoreConfig:
    if request.param == "sqlite":
        return StoreConfig(data_dir=tmp_path / "data")
    return StoreConfig(database_url=request.getfixturevalue("pg").new_database())


def finding(key: str, p: float = 0.61, version: str = "1.2.0") -> Finding:
    return Finding(accepted=True, reason=None, verdict="abnormal" if p >= 0.478 else "normal", probability=p,
                   gate=0.478, abnormal=p >= 0.478, bundle=BundleInfo("dernet", version, True), runtime="onnx",
                   key=key)


def test_restart_keeps_findings_worklists_and_marks(cfg):
    s = Store.open(cfg)
    s.save_finding(finding(K1))
    wl = s.create_worklist("alice", "Monday")
    s.add_to_worklist(wl, [Entry(1, K1, "a.dcm", "abnormal"), Entry(2, None, "broken.dcm", "unreadable", "damaged")])
    s.set_mark(K1, "agree", "clear collapse", "alice", "1.2.0", wl)
    s.close()

    s2 = Store.open(cfg)  # a new process would see the same: nothing is held in memory
    assert [w.id for w in s2.list_worklists("alice")] == [wl]
    assert s2.list_worklists("bob") == []
    got = s2.get_worklist(wl)
    assert [(e.position, e.key, e.display_name, e.verdict) for e in got.entries] == [
        (1, K1, "a.dcm", "abnormal"), (2, None, "broken.dcm", "unreadable")]
    assert got.findings[K1].finding.probability == pytest.approx(0.61)
    assert got.findings[K1].bundle_version == "1.2.0"
    (mark,) = got.marks[K1]
    assert (mark.review, mark.comment, mark.reviewer, mark.bundle_version) == ("agree", "clear collapse", "alice",
                                                                               "1.2.0")
    assert mark.time.tzinfo is not None and abs(mark.time - dt.datetime.now(dt.timezone.utc)).total_seconds() < 60
    s2.close()


def test_concurrent_marks_are_all_kept(cfg):
    a, b = Store.open(cfg), Store.open(cfg)  # two replicas of the app
    a.set_mark(K1, "agree", "", "alice", "1")
    b.set_mark(K1, "disagree", "no lesion", "bob", "1")
    a.set_mark(K1, "disagree", "changed my mind", "alice", "1")
    current = {m.reviewer: (m.review, m.comment) for m in b.marks_for(K1)}
    assert current == {"alice": ("disagree", "changed my mind"), "bob": ("disagree", "no lesion")}
    assert [m.reviewer for m in a.marks_for(K1, history=True)] == ["alice", "bob", "alice"]
    a.set_mark(K1, None, "", "bob", "1")  # bob withdraws his mark: history keeps it
    assert [m.reviewer for m in a.marks_for(K1)] == ["alice"]
    assert len(a.marks_for(K1, history=True)) == 4
    a.close(), b.close()


def test_refinding_a_study_by_content_hash(cfg):
    s = Store.open(cfg)
    s.save_finding(finding(K2, 0.2, "1.0.0"))
    s.set_mark(K2, "agree", "", "carol", "1.0.0")
    s.save_finding(finding(K2, 0.7, "2.0.0"))  # re-analysed by a newer bundle: the finding is replaced
    got = s.get_finding(K2)
    assert (got.bundle_version, got.finding.verdict) == ("2.0.0", "abnormal")
    assert s.marks_for(K2)[0].bundle_version == "1.0.0"  # the mark says which version was reviewed
    assert s.get_finding("f" * 64) is None
    s.close()


def test_audit_export_and_purge(cfg):
    s = Store.open(cfg)
    assert s.audit("alice", "analysed", K1, "1.0.0")
    assert s.audit("bob", "signin_failed", outcome="wrong password")
    with pytest.raises(ValueError):
        s.audit("bob", "deleted-everything")
    events = s.export_audit()
    assert [(e.user, e.action, e.study_key, e.outcome) for e in events] == [
        ("alice", "analysed", K1, "ok"), ("bob", "signin_failed", None, "wrong password")]
    assert s.export_audit(dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1)) == []
    s.save_finding(finding(K1))
    s.set_mark(K1, "agree", "", "alice", "1")
    s.create_worklist("alice")
    kept = s.purge(dt.timedelta(days=30))
    assert (kept.findings, kept.marks, kept.worklists) == (0, 0, 0)
    gone = s.purge(dt.timedelta(seconds=-1))
    assert (gone.findings, gone.marks, gone.worklists, gone.audit_events) == (1, 1, 1, 0)
    assert s.get_finding(K1) is None and s.marks_for(K1) == [] and s.list_worklists("alice") == []
    assert len(s.export_audit()) == 2  # audit events are kept unless asked
    assert s.purge(dt.timedelta(seconds=-1), audit=True).audit_events == 2
    s.close()


def test_migrates_empty_database_and_schema_matches_models(cfg):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from spine_ui.services.store.models import Base

    engine = make_engine(cfg)
    assert upgrade(engine) == head_revision() == "0002"
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert upgrade(engine) == "0002"  # idempotent (every app start runs it)
    engine.dispose()


def test_migrates_from_revision_0001_with_data(cfg):
    engine = make_engine(cfg)
    assert upgrade(engine, "0001") == "0001"
    now = dt.datetime(2026, 1, 2, 3, 4, 5)
    with engine.begin() as conn:  # what the previous schema version held
        conn.execute(text("INSERT INTO worklists (id, owner, title, created_at) VALUES ('w1', 'alice', 'old', :t)"),
                     {"t": now})
        conn.execute(text("INSERT INTO worklist_entries (worklist_id, position, study_key, display_name, verdict, "
                          "added_at) VALUES ('w1', 1, :k, 'a.dcm', 'normal', :t)"), {"k": K1, "t": now})
        conn.execute(text("INSERT INTO review_marks (study_key, review, comment, reviewer, bundle_version, "
                          "created_at) VALUES (:k, 'agree', 'old mark', 'alice', '0.9', :t)"), {"k": K1, "t": now})
    engine.dispose()
    s = Store.open(cfg)  # the app start applies 0002
    assert s.revision() == "0002"
    (mark,) = s.marks_for(K1)
    assert (mark.comment, mark.reviewer, mark.time.year) == ("old mark", "alice", 2026)
    assert s.get_worklist("w1").entries[0].display_name == "a.dcm"
    assert s.audit("alice", "opened", K1)  # the table 0002 adds
    s.close()


# --------------------------------------------------------------------------- SQLite faults
def test_sqlite_file_created_under_data_dir_in_wal_mode(tmp_path):
    s = Store.open(StoreConfig(data_dir=tmp_path / "fresh" / "data"))
    assert (tmp_path / "fresh" / "data" / "spine.db").is_file()
    with s.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    s.close()


def test_corrupt_database_is_a_clear_error(tmp_path):
    (tmp_path / "spine.db").write_bytes(b"this is not a database, just text " * 200)
    with pytest.raises(StoreCorruptError) as err:
        Store.open(StoreConfig(data_dir=tmp_path))
    assert "damaged" in err.value.user_message


def test_read_only_database_is_a_clear_error(tmp_path):
    Store.open(StoreConfig(data_dir=tmp_path)).close()
    path = tmp_path / "spine.db"
    # A connection SQLite itself opens read-only (as for a read-only file or mount; root ignores chmod).
    ro = Store(create_engine(f"sqlite:///file:{path}?mode=ro&uri=true"))
    with pytest.raises(StoreReadOnlyError) as err:
        ro.set_mark(K1, "agree", "", "alice", "1")
    assert "read-only" in err.value.user_message
    assert ro.marks_for(K1) == []  # reading still works
    assert ro.audit("alice", "opened") is False  # the audit never raises


def test_locked_database_is_a_clear_error(tmp_path):
    s = Store.open(StoreConfig(data_dir=tmp_path, busy_timeout_s=0.2))
    other = sqlite3.connect(tmp_path / "spine.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreLockedError):
            s.set_mark(K1, "agree", "", "alice", "1")
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert s.set_mark(K1, "agree", "", "alice", "1").review == "agree"  # works again once released
    s.close()


def test_full_database_is_a_clear_error(tmp_path):
    s = Store.open(StoreConfig(data_dir=tmp_path))
    with s.engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()

    from sqlalchemy import event

    @event.listens_for(s.engine, "connect")
    def _cap(dbapi_conn, _rec):  # the disk is "full" at the current size
        dbapi_conn.execute(f"PRAGMA max_page_count={pages}")

    s.engine.dispose()
    with pytest.raises(StoreFullError):
        for i in range(200):
            s.set_mark(K1, "agree", "x" * 2000, f"user{i}", "1")
    s.close()


def test_postgresql_down_at_start_and_during_use(tmp_path):
    from pgserver import start_server

    server = start_server()  # its own server: this test stops it
    try:
        cfg = StoreConfig(database_url=server.new_database(), connect_timeout_s=2)
        s = Store.open(cfg)
        s.set_mark(K1, "agree", "", "alice", "1")
        server.stop()
        with pytest.raises(StoreUnavailableError) as err:
            s.set_mark(K1, "disagree", "", "alice", "1")
        assert "cannot be reached" in err.value.user_message
        with pytest.raises(StoreUnavailableError):
            Store.open(cfg)  # down at start
        assert s.audit("alice", "opened") is False
        server.start()
        assert s.set_mark(K1, "disagree", "", "alice", "1").review == "disagree"  # the pool reconnects
        assert [m.review for m in s.marks_for(K1, history=True)] == ["agree", "disagree"]
        s.close()
    finally:
        server.cleanup()
