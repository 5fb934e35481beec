"""Command line: ``python -m spine_ui <command>``. Each command lives in its own module with a
``register(subparsers)`` function; :func:`build_parser` lists them."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from spine_ui.errors import BundleError, InputError


def _serve() -> int:
    from spine_ui.ui.app import main as serve

    serve()
    return 0


def cmd_synth(args) -> int:
    from spine_ui.synth.dataset import make_dataset

    summary = make_dataset(Path(args.out), args.n, seed=args.seed, height=args.height)
    print(summary)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from spine_ui.cli import analyze, audit, bench, bundle, calibrate, db, pacs, train, users

    p = argparse.ArgumentParser(prog="python -m spine_ui", description="SpineXR Triage (research use only).")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)
    analyze.register(sub)
    bundle.register(sub)
    s = sub.add_parser("synth", help="write a synthetic VinDr-SpineXR-format dataset")
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=100)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--height", type=int, default=512)
    s.set_defaults(func=cmd_synth)

    train.register(sub)

    sv = sub.add_parser("serve", help="start the web app (same as python app.py)")
    sv.set_defaults(func=lambda _args: _serve())
    bench.register(sub)
    pacs.register(sub)
    calibrate.register(sub)
    db.register(sub)
    users.register(sub)
    audit.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except InputError as exc:
        print(f"error: {exc.user_message}", file=sys.stderr)
        return 2
    except BundleError as exc:
        print(f"error: {exc.user_message}", file=sys.stderr)
        return 3
