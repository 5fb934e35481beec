"""``classifier.fit`` on a few PNGs, alone or as one rank of a torchrun job (used by tests/test_ddp.py).

    python tests/ddp_fit.py DATA OUT ARCH                                   # one process
    python -m torch.distributed.run --nproc-per-node 2 tests/ddp_fit.py DATA OUT ARCH
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from spine_ui.train import distributed  # noqa: E402
from spine_ui.train.classifier import fit  # noqa: E402
from spine_ui.train.config import ClassifierTrainConfig  # noqa: E402


def main(data: str, out: str, arch: str) -> None:
    dist, device = distributed.setup("cpu")
    torch.set_num_threads(1)
    paths = sorted(Path(data).glob("*.png"))
    labels = [int(p.stem[-1]) for p in paths]
    cfg = ClassifierTrainConfig(archs=(arch,), input_size=32, batch=((arch, 4),), workers=0, patience=5,
                                eval_batch=4, lr=1e-3)
    result = fit(arch, paths[:8], labels[:8], Path(out), cfg, device, val_paths=paths[8:], val_labels=labels[8:],
                 epochs=2, fingerprint="ddp-test", dist=dist)
    if dist.is_main:
        (Path(out) / "result.json").write_text(json.dumps({**result.to_json(), "world": dist.world,
                                                           "backend": dist.backend}))
    distributed.teardown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
