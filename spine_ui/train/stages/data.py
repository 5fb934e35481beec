"""Stage ``data``: the synthetic dataset (when asked), the enhanced training cache of both splits (built with
``TrainArgs.preprocess``, the config the exported manifest records) and the study-grouped CV folds."""
from __future__ import annotations

import logging
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np

from spine_ui.train.config import TrainArgs
from spine_ui.train.stages.common import Fold, Split, read_json, write_json

log = logging.getLogger(__name__)


def _synthesise(args: TrainArgs, run_dir: Path) -> None:
    from spine_ui.synth.dataset import make_dataset

    data = args.data
    marker = data / ".synthetic.json"
    want = {"n": int(args.synthetic), "seed": int(args.synthetic_seed), "height": int(args.synthetic_height)}
    have = read_json(marker)
    if have == want:
        return
    if (data / "annotations" / "train.csv").exists() and have is None:
        raise FileExistsError(f"{data} already holds a dataset that --synthetic did not write; "
                              "give --data an empty folder to generate a synthetic set")
    log.info("writing %d synthetic images (height %d) into %s", args.synthetic, args.synthetic_height, data)
    for split in ("train", "test"):
        shutil.rmtree(data / f"{split}_images", ignore_errors=True)
    make_dataset(data, int(args.synthetic), seed=int(args.synthetic_seed), height=int(args.synthetic_height),
                 progress=False)
    write_json(marker, want)
    shutil.rmtree(run_dir / "cache", ignore_errors=True)  # same image ids, new pixels


def prepare_data(args: TrainArgs, run_dir: Path) -> tuple[Split, Split, Path]:
    """Synthetic data (when asked), then the enhanced cache of both splits: (train, test, cache folder)."""
    from spine_ui.train.vindr import build_cache

    if args.synthetic and args.synthetic > 0:
        _synthesise(args, run_dir)
    for split in ("train", "test"):
        if not (args.data / "annotations" / f"{split}.csv").is_file():
            raise FileNotFoundError(f"{args.data}/annotations/{split}.csv not found (VinDr-SpineXR layout expected)")
    cache = run_dir / "cache"
    splits = []
    for split in ("train", "test"):
        index = build_cache(args.data, split, cache, args.preprocess, progress=args.verbose and sys.stderr.isatty())
        log.info("cache %s: %d images (%d built, %d reused)", split, len(index), index.built, index.skipped)
        splits.append(Split([r.image_id for r in index.rows], [r.study_id for r in index.rows],
                            np.array([int(r.abnormal) for r in index.rows]), index.root))
    return splits[0], splits[1], cache


def make_folds(train: Split, args: TrainArgs, run_dir: Path) -> list[Fold]:
    """Study-grouped stratified folds of the train split (``folds.json``); [] when CV is off or impossible."""
    from spine_ui.train.folds import grouped_folds

    sel = args.selection
    if not sel.enabled:
        return []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            folds = grouped_folds(train.studies, train.labels, n_folds=sel.folds, seed=sel.seed)
        for w in caught:
            log.warning("%s", w.message)
    except ValueError as exc:
        log.warning("cross-validation impossible (%s); selection falls back to the defaults", exc)
        return []
    assignment = {}
    for k, (_, va) in enumerate(folds):
        for i in va:
            assignment[train.ids[int(i)]] = k
    write_json(run_dir / "folds.json", {"folds": len(folds), "seed": sel.seed, "fold_of": assignment})
    return folds
