"""``python -m spine_ui train``: the training backend's command line (see :mod:`spine_ui.train.runner`)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from spine_ui.train.config import STAGES, TrainArgs


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add ``train`` to the ``python -m spine_ui`` sub-commands (``func=cmd_train``)."""
    p = subparsers.add_parser(
        "train", help="train the DERNet classifiers and the YOLO11 detector into a bundle",
        description="Study-grouped cross-validation on the train split, weight/gate selection on out-of-fold "
                    "predictions, final report on the test split, export to a bundle. Research use only.")
    p.add_argument("--data", required=True, type=Path, help="VinDr-SpineXR-layout folder (annotations/, *_images/)")
    p.add_argument("--out", required=True, type=Path, help="bundle folder to write, e.g. models/NAME")
    p.add_argument("--synthetic", type=int, default=0, metavar="N",
                   help="first write N synthetic images into --data (an empty folder)")
    p.add_argument("--synthetic-height", type=int, default=512, help="height of the synthetic images")
    p.add_argument("--epochs", type=int, help="classifier epochs (upper bound with early stopping; default 50)")
    p.add_argument("--det-epochs", type=int, help="detector epochs (default 35)")
    p.add_argument("--imgsz", type=int, help="classifier input size (default 384)")
    p.add_argument("--det-imgsz", type=int, help="detector image size (default 640)")
    p.add_argument("--folds", type=int, help="cross-validation folds (default 5; 0 or 1 skips selection)")
    p.add_argument("--batch", type=int, help="classifier batch size for every member (default 32/24/32)")
    p.add_argument("--det-batch", type=int, help="detector batch size (default 12)")
    p.add_argument("--det-arch", help="detector definition (default yolo11l)")
    p.add_argument("--workers", type=int, help="data-loader workers (default 2)")
    p.add_argument("--stages", default=",".join(STAGES),
                   help=f"comma-separated subset of {','.join(STAGES)} (default: all)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--pretrained", action="store_true",
                   help="start classifiers from ImageNet weights when they can be loaded (else from scratch)")
    p.add_argument("--resume", action="store_true", help="skip finished stages, continue unfinished ones")
    p.add_argument("--run-dir", type=Path, help="run folder (default runs/NAME for models/NAME, else OUT_run)")
    p.add_argument("--name", help="bundle name in the manifest (default: the --out folder name)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--det-device", help="ultralytics device string for the detector, e.g. 0,1,2,3 (its own "
                                        "multi-GPU training); default: the run's device")
    d = p.add_argument_group("several processes / GPUs / nodes (torch DDP through torchrun)")
    d.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="processes on this node (one per GPU; on CPU they share the cores, gloo backend)")
    d.add_argument("--nnodes", default="1", help="nodes taking part (torchrun --nnodes)")
    d.add_argument("--node-rank", type=int, default=0, help="this node's rank, 0 .. nnodes-1")
    d.add_argument("--master-addr", default="127.0.0.1", help="address of the rank-0 node")
    d.add_argument("--master-port", type=int, default=29500, help="free port on the rank-0 node")
    p.set_defaults(func=cmd_train)


def args_from_namespace(ns: argparse.Namespace) -> TrainArgs:
    """The parsed command line as ``TrainArgs``."""
    stages = tuple(s.strip() for s in ns.stages.split(",") if s.strip())
    return TrainArgs(data=ns.data, out=ns.out, synthetic=ns.synthetic, synthetic_height=ns.synthetic_height,
                     epochs=ns.epochs, det_epochs=ns.det_epochs, imgsz=ns.imgsz, det_imgsz=ns.det_imgsz,
                     folds=ns.folds, batch=ns.batch, det_batch=ns.det_batch, det_arch=ns.det_arch,
                     workers=ns.workers, stages=stages, device=ns.device, pretrained=ns.pretrained,
                     resume=ns.resume, run_dir=ns.run_dir, name=ns.name, verbose=not ns.quiet,
                     det_device=getattr(ns, "det_device", None))


def cmd_train(ns: argparse.Namespace) -> int:
    """Run training; prints a one-line JSON summary. Exit 2 on bad options, 1 on missing/unsafe paths."""
    from spine_ui.train import distributed
    from spine_ui.train.runner import train

    try:
        args = args_from_namespace(ns)
        args.resolved()  # validate before any work
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    nproc = getattr(ns, "nproc", 1)
    if (nproc > 1 or str(getattr(ns, "nnodes", "1")) != "1") and not distributed.launched_by_torchrun():
        argv = sys.argv[sys.argv.index("train") + 1:] if "train" in sys.argv else []
        return distributed.launch(argv, nproc, ns.nnodes, ns.node_rank, ns.master_addr, ns.master_port)
    try:
        result = train(args)
    except (FileNotFoundError, FileExistsError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") != "0":
        return 0  # a helper rank of a torchrun job: rank 0 reports
    test = (result.metrics.get("test") or {}).get("ensemble") or {}
    selection = result.metrics.get("selection") or {}
    print(json.dumps({"bundle": str(result.bundle) if result.bundle else None, "run_dir": str(result.run_dir),
                      "report": str(result.report) if result.report else None,
                      "test_auroc": test.get("auroc"), "gate": selection.get("gate"),
                      "weights": selection.get("weights")}, default=str))
    return 0
