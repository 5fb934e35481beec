"""``bundle``: create the untrained bundle, import checkpoints, verify hashes, download from the Hub."""
from __future__ import annotations

import argparse
from pathlib import Path


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
    elif args.bundle_cmd == "check-precision":
        return check_precision(args)
    elif args.bundle_cmd == "download":
        from spine_ui.bundle.hub import download_bundle

        print(f"bundle downloaded to {download_bundle(args.repo, Path(args.out), args.revision)}")
    return 0


def check_precision(args) -> int:
    """Compare the bf16 decision path with fp32 on phantoms or a folder; record it in the manifest."""
    from spine_ui.bundle.precision import folder_images, phantoms, record_check, run_check

    if args.images:
        images = folder_images(args.images, args.studies)
        source = f"{len(images)} images from a folder"
    else:
        images = phantoms(args.studies, args.height)
        source = f"{len(images)} synthetic phantoms ({args.height} px)"
    check = run_check(Path(args.path), images, source)
    print(check.line())
    if not args.dry_run:
        record_check(Path(args.path), check)
        print(f"recorded in {Path(args.path).name}/manifest.json; SPINE_DECISION_PRECISION=auto serves "
              f"{'bf16' if check.passed else 'fp32'} decisions with this bundle")
    return 0 if check.passed else 1


def _kv(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected ARCH=SIZE, got {text!r}")
    return key, value


def register(sub: argparse._SubParsersAction) -> None:
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
    c = bs.add_parser("check-precision", help="compare the bf16 decision path with fp32 and record the result "
                                              "(auto precision serves bf16 only after a passed check)")
    c.add_argument("path")
    c.add_argument("--studies", type=int, default=20, help="phantoms (or at most this many folder images)")
    c.add_argument("--height", type=int, default=1024, help="phantom height in pixels")
    c.add_argument("--images", help="check on the images under this folder instead of phantoms")
    c.add_argument("--dry-run", action="store_true", help="print the result, do not record it")
    d = bs.add_parser("download", help="fetch a bundle from a Hugging Face model repo")
    d.add_argument("repo")
    d.add_argument("--out", required=True)
    d.add_argument("--revision")
    b.set_defaults(func=cmd_bundle)
