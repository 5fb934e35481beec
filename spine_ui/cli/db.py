"""``python -m spine_ui db upgrade | current | purge``: the store's schema and retention."""
from __future__ import annotations

import argparse
import datetime as dt
import sys

from spine_ui.errors import StoreError


def register(subparsers) -> None:
    p = subparsers.add_parser("db", help="the review database: schema upgrade, revision, retention purge")
    ps = p.add_subparsers(dest="db_cmd", required=True)
    u = ps.add_parser("upgrade", help="apply the Alembic migrations (the app also does this at start)")
    u.add_argument("--revision", default="head")
    ps.add_parser("current", help="print the schema revision in place and the newest one")
    g = ps.add_parser("purge", help="delete findings, marks and worklists older than the retention period")
    g.add_argument("--days", type=int, help="retention in days (default: SPINE_RETENTION_DAYS, 365)")
    g.add_argument("--audit", action="store_true", help="also delete audit events older than that")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spine_ui.config import StoreConfig
    from spine_ui.services.store import Store, head_revision

    cfg = StoreConfig.from_env()
    try:
        store = Store.open(cfg, migrate=args.db_cmd != "current")
        try:
            if args.db_cmd == "upgrade":
                if args.revision != "head":
                    from spine_ui.services.store import upgrade

                    upgrade(store.engine, args.revision)
                print(f"database ({store.backend}) at revision {store.revision()}")
            elif args.db_cmd == "current":
                print(f"database ({store.backend}) at revision {store.revision()}; newest {head_revision()}")
            else:
                days = cfg.retention_days if args.days is None else args.days
                if days <= 0:
                    print("retention is 0 (keep forever): nothing deleted")
                    return 0
                r = store.purge(dt.timedelta(days=days), audit=args.audit)
                print(f"deleted {r.findings} findings, {r.marks} marks, {r.worklists} worklists, "
                      f"{r.audit_events} audit events older than {r.cutoff:%Y-%m-%d %H:%M} UTC ({days} days)")
        finally:
            store.close()
    except StoreError as exc:
        print(f"error: {exc.user_message}", file=sys.stderr)
        return 1
    return 0
