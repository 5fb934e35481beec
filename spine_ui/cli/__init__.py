"""Command line: ``python -m spine_ui analyze | bundle | synth`` (see ``--help`` of each)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from spine_ui.core.finding import UNTRAINED_WARNING
from spine_ui.errors import BundleError, InputError


def _bundle_from_args(args) -> "Bundle":  # noqa: F821
    from spine_ui.bundle.resolve import load_default
    from spine_ui.bundle.store import open_bundle
    from spine_ui.config import RuntimeConfig

    cfg = RuntimeConfig.from_env()
    runtime = args.runtime or cfg.runtime
    if args.bundle and Path(args.bundle).is_dir():
        return open_bundle(Path(args.bundle), runtime, cfg.threads)
    name = args.bundle or cfg.bundle_name
    return load_default(RuntimeConfig(runtime=runtime, threads=cfg.threads, models_dir=cfg.models_dir,
                                      bundle_name=name))


def cmd_analyze(args) -> int:
    """Analyse files, folders (recursive) and .zip archives. One file: as before. Several studies: one result
    each, a progress bar on stderr (on a terminal), ``--csv`` writes the worklist (most suspicious first).
    Exit 0 when every study was analysed or rejected, 2 when any file could not be read (all others are still
    analysed and listed)."""
    from tqdm import tqdm

    from spine_ui.core.pipeline import AnalysisOptions, Analyzer
    from spine_ui.services.batch import analyze_each, expand_inputs, sort_rows, to_csv

    paths = [Path(f) for f in args.files]
    for p in paths:
        if not (p.is_file() or p.is_dir()):
            print(f"error: no such file: {p.name}", file=sys.stderr)
            return 2
    skipped: list[str] = []
    items = expand_inputs(paths, skipped=skipped)
    single = len(paths) == 1 and len(items) == 1 and paths[0].is_file() and items[0][1] == paths[0]
    if skipped and not args.quiet:
        print(f"note: skipped {len(skipped)} file(s) that are not radiographs by name (e.g. {skipped[0]})",
              file=sys.stderr)
    if not items:
        print("error: no radiograph files found in the given folders or archives", file=sys.stderr)
        return 2
    analyzer = Analyzer(_bundle_from_args(args))
    explain = bool(args.explain)
    options = AnalysisOptions(detect=args.detect, gradcam=True, lime=explain, explain_normal=explain,
                              lime_samples=args.lime_samples, tta=not args.no_tta)
    rows = []
    unreadable = 0
    used: set[str] = set()
    bar = tqdm(total=len(items), unit="study", file=sys.stderr, dynamic_ncols=True,
               disable=True if (single or args.quiet) else None)  # None: only when stderr is a terminal
    try:
        for row, a in analyze_each(analyzer, items, options):
            bar.update(1)
            rows.append(row)
            if a is None:
                unreadable += 1
                tqdm.write(f"error: {row.reason}" if single else f"error: {row.study}: {row.reason}", file=sys.stderr)
                continue
            finding = a.finding()
            if args.out:
                _write_outputs(a, Path(args.out) / ("" if single else _unique_stem(row.study, used)))
            if not args.quiet:
                text = json.dumps(finding.to_dict()) if args.json else _summary(finding)
                if not single and not args.json:
                    text = f"== {row.study}\n{text}"
                tqdm.write(text, file=sys.stdout)
    finally:
        bar.close()
    if args.csv:
        out = Path(args.csv)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "w", encoding="utf-8", newline="") as fh:
                fh.write(to_csv(sort_rows(rows)))
        except OSError as exc:
            print(f"error: cannot write the worklist CSV ({exc.strerror or type(exc).__name__})", file=sys.stderr)
            return 1
        if not args.quiet:
            print(f"worklist: {len(rows)} studies written to {out}", file=sys.stderr)
    if unreadable and not single:
        where = f"; see their rows in {Path(args.csv).name}" if args.csv else ""
        print(f"error: {unreadable} of {len(rows)} files could not be read{where}", file=sys.stderr)
    return 2 if unreadable else 0


def _unique_stem(name: str, used: set[str]) -> str:
    stem = Path(name).stem or "study"
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}-{n}"
    used.add(candidate)
    return candidate


def _summary(f: "Finding") -> str:  # noqa: F821
    lines = []
    if not f.trained:
        lines.append(f"!! {UNTRAINED_WARNING}")
    if not f.accepted:
        lines.append(f"REJECTED: {f.reason}")
        return "\n".join(lines)
    lines.append(f"{f.verdict.upper()}  P = {f.probability:.3f}  (gate {f.gate})  [{f.runtime}]")
    for m in f.models:
        lines.append(f"  {m.arch:<22} p = {m.probability:.3f}  weight {m.weight}")
    for les in f.lesions:
        box = [round(v, 1) for v in les.box]
        lines.append(f"  lesion: {les.name:<22} {les.confidence:.2f}  box {box}")
    return "\n".join(lines)


def _write_outputs(a, out: Path) -> None:
    from spine_ui.core.overlays import draw_lesions, heatmap_overlay, lime_overlay, save_png

    out.mkdir(parents=True, exist_ok=True)
    (out / "finding.json").write_text(json.dumps(a.finding().to_dict(), indent=2))
    if not a.accepted or a.triage is None:
        return
    save_png(out / "overlay.png", draw_lesions(a.enhanced, a.lesions or [], a.study.shape))
    if a.cam is not None:
        save_png(out / "gradcam.png", heatmap_overlay(a.enhanced, a.cam.fused))
        for arch, m in a.cam.per_model.items():
            save_png(out / f"gradcam_{arch}.png", heatmap_overlay(a.enhanced, m))
    if a.lime is not None:
        save_png(out / "lime.png", lime_overlay(a.enhanced, a.lime.weights))


def cmd_bundle(args) -> int:
    if args.bundle_cmd == "init-untrained":
        from spine_ui.bundle.resolve import ensure_untrained

        sizes = dict(_kv(s) for s in args.size or [])
        path = ensure_untrained(Path(args.out), force=True, seed=args.seed, detector=not args.no_detector,
                                sizes={k: int(v) for k, v in sizes.items()})
        print(f"untrained bundle written to {path}")
    elif args.bundle_cmd == "import-checkpoints":
        from spine_ui.bundle.importer import import_checkpoints

        clfs = {"densenet121": args.densenet121, "tf_efficientnetv2_s": args.efficientnetv2_s,
                "resnet50": args.resnet50}
        sizes = dict(zip(("densenet121", "tf_efficientnetv2_s", "resnet50"),
                         (int(s) for s in args.sizes.split(","))))
        path = import_checkpoints(Path(args.out), clfs, sizes, Path(args.yolo) if args.yolo else None,
                                  name=args.name, version=args.version, trained=not args.untrained,
                                  gate=args.gate)
        print(f"bundle written to {path}")
    elif args.bundle_cmd == "verify":
        from spine_ui.bundle.store import Bundle
        from spine_ui.bundle.runtime import choose_runtime

        b = Bundle(Path(args.path), choose_runtime("onnx"))
        print(f"ok: {b.name} {b.manifest.version} ({len(b.manifest.files)} files verified)")
    elif args.bundle_cmd == "download":
        from spine_ui.bundle.hub import download_bundle

        print(f"bundle downloaded to {download_bundle(args.repo, Path(args.out), args.revision)}")
    return 0


def _serve() -> int:
    from spine_ui.ui.app import main as serve

    serve()
    return 0


def cmd_synth(args) -> int:
    from spine_ui.synth.dataset import make_dataset

    summary = make_dataset(Path(args.out), args.n, seed=args.seed, height=args.height)
    print(summary)
    return 0


def _kv(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected ARCH=SIZE, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m spine_ui", description="SpineXR Triage (research use only).")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    a = sub.add_parser("analyze", help="analyse radiographs (DICOM, PNG, JPEG, TIFF): files, folders, .zip archives")
    a.add_argument("files", nargs="+", metavar="FILE_OR_DIR",
                   help="files, folders (searched recursively, hidden files skipped) or .zip archives")
    a.add_argument("--csv", metavar="OUT.csv",
                   help="write the worklist (file name, verdict, probability, lesions, reason), most suspicious first")
    a.add_argument("-q", "--quiet", action="store_true", help="no per-study output (errors are still reported)")
    a.add_argument("--json", action="store_true", help="print one JSON object per file")
    a.add_argument("--explain", action="store_true", help="Grad-CAM and LIME, whatever the verdict")
    a.add_argument("--lime-samples", type=int, default=None)
    a.add_argument("--out", help="folder for overlay / Grad-CAM / LIME PNGs and finding.json")
    a.add_argument("--detect", choices=("auto", "always", "never"), default="auto")
    a.add_argument("--no-tta", action="store_true")
    a.add_argument("--bundle", help="bundle name under models/ or a bundle folder")
    a.add_argument("--runtime", choices=("auto", "onnx", "torch"))
    a.set_defaults(func=cmd_analyze)

    b = sub.add_parser("bundle", help="create, import, verify or download model bundles")
    bs = b.add_subparsers(dest="bundle_cmd", required=True)
    u = bs.add_parser("init-untrained", help="seeded random-init bundle (results carry no meaning)")
    u.add_argument("--out", default="models/untrained")
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--size", action="append", help="ARCH=SIZE input size override, repeatable")
    u.add_argument("--no-detector", action="store_true")
    i = bs.add_parser("import-checkpoints", help="bundle from timm classifier checkpoints + YOLO best.pt")
    i.add_argument("--densenet121", required=True)
    i.add_argument("--efficientnetv2-s", dest="efficientnetv2_s", required=True)
    i.add_argument("--resnet50", required=True)
    i.add_argument("--yolo", help="ultralytics YOLO11 best.pt")
    i.add_argument("--sizes", default="384,384,384", help="input sizes densenet,effnet,resnet (e.g. 384,384,224)")
    i.add_argument("--gate", type=float)
    i.add_argument("--name")
    i.add_argument("--version", default="1.0.0")
    i.add_argument("--untrained", action="store_true", help="mark the bundle as untrained")
    i.add_argument("--out", required=True)
    v = bs.add_parser("verify", help="check every file against the manifest hashes")
    v.add_argument("path")
    d = bs.add_parser("download", help="fetch a bundle from a Hugging Face model repo")
    d.add_argument("repo")
    d.add_argument("--out", required=True)
    d.add_argument("--revision")
    b.set_defaults(func=cmd_bundle)

    s = sub.add_parser("synth", help="write a synthetic VinDr-SpineXR-format dataset")
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=100)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--height", type=int, default=512)
    s.set_defaults(func=cmd_synth)

    from spine_ui.train.runner import add_train_parser

    add_train_parser(sub)

    sv = sub.add_parser("serve", help="start the web app (same as python app.py)")
    sv.set_defaults(func=lambda _args: _serve())

    from spine_ui.cli.bench import add_arguments, run_from_args

    be = sub.add_parser("bench", help="per-stage timings on a synthetic DICOM (onnx vs eager torch)")
    add_arguments(be)
    be.set_defaults(func=run_from_args)
    from spine_ui.cli import audit, db, users  # noqa: E402  (store, sign-in and audit commands)

    db.register(sub); users.register(sub); audit.register(sub)  # noqa: E702
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
