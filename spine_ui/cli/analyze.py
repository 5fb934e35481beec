"""``analyze``: one study, or many (files, folders, .zip archives) as a worklist, on the same core."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from spine_ui.core.finding import UNTRAINED_WARNING

if TYPE_CHECKING:
    from spine_ui.bundle.store import Bundle
    from spine_ui.services.batch.engines import BatchJob
    from spine_ui.core.finding import Finding


def bundle_from_args(args) -> "Bundle":
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

    from spine_ui.core.pipeline import AnalysisOptions
    from spine_ui.errors import EngineUnavailableError
    from spine_ui.services.batch import expand_inputs
    from spine_ui.services.batch.engines import CsvStream, get_engine, in_input_order

    paths = [Path(f) for f in args.files]
    for p in paths:
        if not (p.is_file() or p.is_dir()):
            print(f"error: no such file: {p.name}", file=sys.stderr)
            return 2
    if args.engine != "local" and args.out:
        print("error: --out (overlay images) needs --engine local; the Ray engine writes the worklist only",
              file=sys.stderr)
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
    explain = bool(args.explain)
    options = AnalysisOptions(detect=args.detect, gradcam=True, lime=explain, explain_normal=explain,
                              lime_samples=args.lime_samples, tta=not args.no_tta)
    job = _job(args, options)
    stream = None
    if args.csv:
        try:
            stream = CsvStream(args.csv)  # rows stream to OUT.csv.partial as they finish
        except OSError as exc:
            print(f"error: cannot write the worklist CSV ({exc.strerror or type(exc).__name__})", file=sys.stderr)
            return 1
    results = []
    unreadable = 0
    used: set[str] = set()
    bar = tqdm(total=len(items), unit="study", file=sys.stderr, dynamic_ncols=True,
               disable=True if (single or args.quiet) else None)  # None: only when stderr is a terminal
    try:
        for result in get_engine(args.engine)(items, job):
            bar.update(1)
            results.append(result)
            if stream is not None:
                stream.add(result)
            row, finding = result.row, result.finding
            if finding is None:
                unreadable += 1
                tqdm.write(f"error: {row.reason}" if single else f"error: {row.study}: {row.reason}", file=sys.stderr)
                continue
            if args.out:
                _write_outputs(result.analysis, Path(args.out) / ("" if single else _unique_stem(row.study, used)))
            if not args.quiet:
                text = json.dumps(finding.to_dict()) if args.json else _summary(finding)
                if not single and not args.json:
                    text = f"== {row.study}\n{text}"
                tqdm.write(text, file=sys.stdout)
    except EngineUnavailableError as exc:
        print(f"error: {exc.user_message}", file=sys.stderr)
        return 1
    finally:
        bar.close()
        if stream is not None:
            stream.close()
    rows = in_input_order(results)
    if stream is not None:
        try:
            stream.finish()
        except OSError as exc:
            print(f"error: cannot write the worklist CSV ({exc.strerror or type(exc).__name__})", file=sys.stderr)
            return 1
        if not args.quiet:
            print(f"worklist: {len(rows)} studies written to {stream.path}", file=sys.stderr)
    if unreadable and not single:
        where = f"; see their rows in {Path(args.csv).name}" if args.csv else ""
        print(f"error: {unreadable} of {len(rows)} files could not be read{where}", file=sys.stderr)
    return 2 if unreadable else 0


def _job(args, options) -> "BatchJob":
    """The engine's job: the local engine gets an open analyzer, the Ray engine the bundle folder."""
    import dataclasses

    from spine_ui.config import ClusterConfig, RuntimeConfig
    from spine_ui.core.pipeline import Analyzer
    from spine_ui.services.batch.engines import BatchJob

    cfg = RuntimeConfig.from_env()
    runtime = args.runtime or cfg.runtime
    cluster = ClusterConfig.from_env()
    cluster = dataclasses.replace(cluster, address=args.address if args.address is not None else cluster.address,
                                  workers=args.workers if args.workers is not None else cluster.workers)
    if args.engine == "local":
        analyzer = Analyzer(bundle_from_args(args))
        return BatchJob(analyzer.bundle.path, runtime, cfg.threads, options, analyzer=analyzer, cluster=cluster)
    return BatchJob(bundle_dir_from_args(args), runtime, cfg.threads, options, cluster=cluster)


def bundle_dir_from_args(args) -> Path:
    """The bundle folder named by ``--bundle`` or the environment, without opening it (workers do)."""
    from spine_ui.bundle.resolve import locate
    from spine_ui.config import RuntimeConfig

    if args.bundle and Path(args.bundle).is_dir():
        return Path(args.bundle)
    cfg = RuntimeConfig.from_env()
    import dataclasses

    return locate(dataclasses.replace(cfg, bundle_name=args.bundle or cfg.bundle_name))


def _unique_stem(name: str, used: set[str]) -> str:
    stem = Path(name).stem or "study"
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}-{n}"
    used.add(candidate)
    return candidate


def _summary(f: "Finding") -> str:
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


def register(sub: argparse._SubParsersAction) -> None:
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
    a.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: in this process (default); ray: a Ray cluster (pip install -r requirements-extra.txt)")
    a.add_argument("--address", metavar="auto|HOST:PORT",
                   help="Ray cluster to join (default: start a local one on 127.0.0.1; env SPINE_RAY_ADDRESS)")
    a.add_argument("--workers", type=int, metavar="N",
                   help="Ray inference actors (default: one per CPU of the cluster; env SPINE_RAY_WORKERS)")
    a.set_defaults(func=cmd_analyze)
