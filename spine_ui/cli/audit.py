"""``python -m spine_ui audit export [--since DATE] --csv FILE``: the audit log for an administrator."""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import sys
from pathlib import Path
from typing import Iterable

COLUMNS = ("time", "user", "action", "study_key", "bundle_version", "outcome")


def register(subparsers) -> None:
    p = subparsers.add_parser("audit", help="the audit log (who analysed, opened, marked, exported what, when)")
    ps = p.add_subparsers(dest="audit_cmd", required=True)
    e = ps.add_parser("export", help="write audit events as CSV")
    e.add_argument("--since", type=parse_date, help="YYYY-MM-DD or an ISO time (UTC unless given)")
    e.add_argument("--csv", required=True, metavar="FILE", help="output file ('-' for stdout)")
    e.add_argument("--user", default="local", help="who exports (recorded in the audit log)")
    p.set_defaults(func=run)


def parse_date(text: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (use YYYY-MM-DD)") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def to_csv(events: Iterable) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for e in events:
        w.writerow([e.time.astimezone(dt.timezone.utc).isoformat(timespec="seconds"), e.user, e.action,
                    e.study_key or "", e.bundle_version or "", e.outcome])
    return buf.getvalue()


def run(args: argparse.Namespace) -> int:
    from spine_ui.config import StoreConfig
    from spine_ui.errors import StoreError
    from spine_ui.services.store import Store

    try:
        store = Store.open(StoreConfig.from_env())
        try:
            events = store.export_audit(args.since)
            text = to_csv(events)
            if args.csv == "-":
                sys.stdout.write(text)
            else:
                Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
                Path(args.csv).write_text(text, encoding="utf-8")
            store.audit(args.user, "exported", outcome=f"audit csv, {len(events)} events")
        finally:
            store.close()
    except StoreError as exc:
        print(f"error: {exc.user_message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot write the CSV ({exc.strerror or type(exc).__name__})", file=sys.stderr)
        return 1
    if args.csv != "-":
        print(f"{len(events)} audit events written to {args.csv}", file=sys.stderr)
    return 0
