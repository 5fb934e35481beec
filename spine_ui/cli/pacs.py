"""``pacs run``: pull spine radiographs from a DICOMweb PACS, analyse them, store SR + SC back into each study."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import sys
from pathlib import Path

EXIT_PACS = 4


def _date(text: str) -> str:
    digits = re.sub(r"[-/.]", "", text.strip())
    if not re.fullmatch(r"\d{8}", digits):
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD or YYYYMMDD, got {text!r}")
    return digits


def cmd_pacs_run(args) -> int:
    from spine_ui.cli.analyze import bundle_from_args
    from spine_ui.config import PacsConfig
    from spine_ui.core.pipeline import AnalysisOptions, Analyzer
    from spine_ui.services.pacs import PacsClient, SqliteProcessedLog, run_forever, run_once

    cfg = PacsConfig.from_env()
    changes = {}
    if args.modality is not None:
        changes["modalities"] = tuple(m.strip().upper() for m in args.modality.split(",") if m.strip())
    if args.state:
        changes["state_path"] = Path(args.state)
    if args.insecure:
        changes["verify_tls"] = False
    if args.retries is not None:
        changes["retries"] = args.retries
    cfg = dataclasses.replace(cfg, **changes)
    url = args.dicomweb or cfg.url
    if not url:
        print("error: no PACS given: pass --dicomweb URL or set SPINE_DICOMWEB_URL", file=sys.stderr)
        return 2
    logging.getLogger("spine_ui.pacs").setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    client = PacsClient(cfg, url)
    analyzer = Analyzer(bundle_from_args(args))
    processed = SqliteProcessedLog(cfg.state_path)
    options = AnalysisOptions(detect=args.detect, gradcam=True, lime=args.lime, tta=not args.no_tta)
    kwargs = dict(since=args.since, modalities=cfg.modalities, options=options)
    try:
        if args.once:
            summary = run_once(client, analyzer, processed, **kwargs)
            return EXIT_PACS if summary.error else 0
        try:
            run_forever(client, analyzer, processed, interval_s=args.interval or cfg.interval_s, **kwargs)
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
        return 0
    finally:
        processed.close()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pacs", help="DICOMweb PACS loop: query, retrieve, analyse, store SR + SC back")
    ps = p.add_subparsers(dest="pacs_cmd", required=True)
    r = ps.add_parser("run", help="process new studies (QIDO/WADO/STOW-RS); auth and TLS from SPINE_DICOMWEB_*")
    r.add_argument("--dicomweb", metavar="URL", help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web "
                                                     "(default: SPINE_DICOMWEB_URL)")
    r.add_argument("--once", action="store_true", help="one pass, then exit (4 when the PACS failed)")
    r.add_argument("--since", type=_date, metavar="DATE", help="only studies with StudyDate >= DATE")
    r.add_argument("--modality", metavar="CR,DX", help="only series of these modalities (series without a "
                                                       "Modality tag are left to the gate)")
    r.add_argument("--interval", type=float, metavar="S", help="seconds between passes (default 60)")
    r.add_argument("--state", metavar="FILE", help="processed-instance log (default $SPINE_DATA_DIR/pacs_state.sqlite)")
    r.add_argument("--retries", type=int, help="retries per PACS request (default 4, exponential backoff)")
    r.add_argument("--insecure", action="store_true", help="do not verify the PACS's TLS certificate")
    r.add_argument("--detect", choices=("auto", "always", "never"), default="auto")
    r.add_argument("--lime", action="store_true", help="also compute LIME (slow) and store its picture")
    r.add_argument("--no-tta", action="store_true")
    r.add_argument("--bundle", help="bundle name under models/ or a bundle folder")
    r.add_argument("--runtime", choices=("auto", "onnx", "torch"))
    r.set_defaults(func=cmd_pacs_run)
