"""A tiny TRAINED bundle for tests that need a model that has learnt something: one timm ResNet18 at 128 px
trained from scratch to tell synthetic phantoms with a surgical implant (bright, local) from phantoms without
lesions. Deterministic (seeded); about a minute on 2 CPU cores; cached on disk by conftest."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np

SIZE = 128
LESION = "Surgical implant"


def phantom_images(n: int, seed: int, height: int = 256) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` enhanced (CLAHE uint8) phantoms, alternately with and without an implant, and their labels."""
    from spine_ui.config import PreprocessConfig
    from spine_ui.core.preprocess import enhance
    from spine_ui.synth.phantom import render_spine

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        img, _ = render_spine(rng, [LESION] if i % 2 else [], height=height)
        images.append(enhance(img, PreprocessConfig()))
        labels.append(i % 2)
    return images, np.array(labels)


def build(out_dir: Path, n: int = 64, epochs: int = 12, seed: int = 0) -> Path:
    import torch

    from spine_ui.bundle.architectures import build_classifier
    from spine_ui.bundle.export import assemble
    from spine_ui.bundle.manifest import Manifest
    from spine_ui.config import ClassifierSpec, ExplainConfig, TriageConfig
    from spine_ui.core.contract import to_model_input

    torch.manual_seed(seed)
    images, labels = phantom_images(n, seed)
    x = torch.from_numpy(np.stack([to_model_input(im, SIZE)[0] for im in images]))
    y = torch.from_numpy(labels.astype(np.float32))
    model = build_classifier("resnet18")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(n, generator=gen).split(16):
            xb = x[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xb)[:, 0], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    manifest = Manifest(
        name="tiny-trained", version="test", trained=True, classifiers=[], detector=None,
        triage=TriageConfig(gate=0.5, tta_views=("identity", "hflip")),
        explain=ExplainConfig(lime_samples=120, lime_size=SIZE, lime_segments=40),
        provenance={"kind": "test", "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "note": f"ResNet18 from scratch, {n} phantoms (implant vs none), {epochs} epochs"})
    return assemble(Path(out_dir), manifest, [(ClassifierSpec("resnet18", SIZE, 1.0, "layer4"), model)], None)
