"""Training and scoring of one DERNet member (timm backbone, one logit).

The dataset reads the cached enhanced PNGs (``spine_ui.train.vindr.build_cache``: the server's
``enhance()`` output), augments that working image, then applies the model contract
(``spine_ui.core.contract.to_model_input``: resize + normalise), as the server does. Scoring uses
``contract.model_input`` with the serving TTA views, so out-of-fold and test probabilities are computed
exactly as ``run_triage`` computes them.

Checkpoints (per unit of work = one architecture on one fold, or the final fit)::

    <dir>/last.pt     model + optimiser + scheduler + scaler + early-stopping state, every epoch (resume)
    <dir>/best.pt     state dict of the best epoch (highest validation AUROC; the last epoch without validation)
    <dir>/done.json   fingerprint + history; present when the unit is finished
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from spine_ui._io import atomic_path, atomic_write_json
from spine_ui.bundle.architectures import build_classifier
from spine_ui.config import PreprocessConfig
from spine_ui.core.contract import model_input, rotate, sigmoid, to_model_input
from spine_ui.train import distributed
from spine_ui.train.config import ClassifierTrainConfig
from spine_ui.train.distributed import Dist
from spine_ui.train.metrics import auroc

#: progress callback (one line of text); defaults to this module's logger (``spine_ui.train`` hierarchy)
Log = Callable[[str], None]
_log = logging.getLogger(__name__)


def read_enhanced(path: str | Path) -> np.ndarray:
    """A cached enhanced image (uint8 grayscale PNG)."""
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise FileNotFoundError(f"cannot read cached image {path}")
    return img


# --------------------------------------------------------------------------- augmentation
def augment(img: np.ndarray, rng: np.random.Generator, cfg: ClassifierTrainConfig) -> np.ndarray:
    """Random flip, rotation, brightness/contrast jitter and blur of an enhanced uint8 working image."""
    out = img
    if rng.random() < cfg.hflip:
        out = np.ascontiguousarray(out[:, ::-1])
    if cfg.rotation > 0:
        out = rotate(out, float(rng.uniform(-cfg.rotation, cfg.rotation)))
    if cfg.brightness > 0 or cfg.contrast > 0:
        x = out.astype(np.float32)
        x *= float(rng.uniform(1.0 - cfg.brightness, 1.0 + cfg.brightness))
        c = float(rng.uniform(1.0 - cfg.contrast, 1.0 + cfg.contrast))
        mean = float(x.mean())
        x = (x - mean) * c + mean
        out = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    if cfg.blur_p > 0 and rng.random() < cfg.blur_p:
        # sigma is drawn in model-input pixels and scaled to the working image
        sigma = float(rng.uniform(*cfg.blur_sigma)) * max(out.shape) / cfg.input_size
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=max(sigma, 1e-3))
    return out


class CachedImages(Dataset):
    """(normalised 3 x S x S tensor, label) from cached PNGs; augmented when ``train``.

    Augmentation is seeded by (seed, epoch, index): the same draws whatever the number of workers.
    Set ``epoch`` before each pass (workers are not persistent, so they see the new value).
    """

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], size: int, cfg: ClassifierTrainConfig,
                 preprocess: PreprocessConfig = PreprocessConfig(), train: bool = False) -> None:
        self.paths = [Path(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.float32)
        self.size, self.cfg, self.preprocess, self.train = size, cfg, preprocess, train
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = read_enhanced(self.paths[i])
        if self.train:
            img = augment(img, np.random.default_rng((self.cfg.seed, self.epoch, i)), self.cfg)
        x, _ = to_model_input(img, self.size, self.preprocess)
        return torch.from_numpy(x), torch.tensor(self.labels[i])


# --------------------------------------------------------------------------- models
def make_model(arch: str, pretrained: bool, log: Log = _log.info) -> tuple[nn.Module, bool]:
    """(model, pretrained weights actually loaded). Falls back to random init when weights are unavailable."""
    if pretrained:
        try:
            return build_classifier(arch, pretrained=True), True
        except Exception as exc:  # offline, no cached weights, hub error: train from scratch
            msg = (f"ImageNet weights for {arch} could not be loaded ({type(exc).__name__}: "
                   f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); training from scratch")
            warnings.warn(msg, stacklevel=2)
            log(f"WARNING: {msg}")
    return build_classifier(arch, pretrained=False), False


def load_model(arch: str, state_path: Path) -> nn.Module:
    """A timm classifier with the state dict at ``state_path``, in eval mode on the CPU."""
    model = build_classifier(arch, pretrained=False)
    model.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
    return model.eval()


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but CUDA is not available")
    return torch.device(device)


# --------------------------------------------------------------------------- training
@dataclass
class FitResult:
    """What one ``fit`` run did (stored in the unit's ``done.json``)."""
    arch: str
    best_epoch: int  # 1-based
    best_score: float  # validation AUROC (or -loss when the validation set holds one class); NaN without val
    epochs_run: int
    stopped_early: bool
    pretrained: bool
    seconds: float
    history: list[dict] = field(default_factory=list)
    criterion: str = "auroc"

    def to_json(self) -> dict:
        """JSON-safe dict of the fields."""
        return asdict(self)


def _loader(ds: Dataset, batch: int, shuffle: bool, workers: int, device: torch.device, seed: int,
            drop_last: bool = False) -> DataLoader:
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(ds, batch_size=batch, shuffle=shuffle, num_workers=max(0, min(int(workers), 2)),
                      pin_memory=device.type == "cuda", drop_last=drop_last, generator=g)


def _amp(device: torch.device, cfg: ClassifierTrainConfig) -> bool:
    return bool(cfg.amp and device.type == "cuda")


def _evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool,
              dist: Dist = Dist()) -> tuple[float, float]:
    """(AUROC, mean BCE) of the identity view on a validation loader (this rank's shard; the logits of every
    rank are gathered, so every rank gets the same figures)."""
    model.eval()
    logits, labels = [], []
    with torch.no_grad():
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                out = model(x)[:, 0]
            logits.append(out.float().cpu())
            labels.append(y)
    z = torch.cat(logits)
    y = torch.cat(labels)
    if dist.enabled:
        idx = loader.dataset.indices  # a Subset: this rank's shard
        pairs = distributed.gather(list(zip(idx, zip(z.tolist(), y.tolist()))), len(loader.dataset.dataset), dist)
        z = torch.tensor([p[0] for p in pairs])
        y = torch.tensor([p[1] for p in pairs])
    loss = float(nn.functional.binary_cross_entropy_with_logits(z, y))
    return auroc(y.numpy(), torch.sigmoid(z).numpy()), loss


def fit(arch: str, train_paths: Sequence[Path], train_labels: Sequence[int], out_dir: Path,
        cfg: ClassifierTrainConfig, device: torch.device, *, val_paths: Sequence[Path] | None = None,
        val_labels: Sequence[int] | None = None, epochs: int | None = None, fingerprint: str = "",
        preprocess: PreprocessConfig = PreprocessConfig(), log: Log = _log.info,
        dist: Dist | None = None) -> FitResult:
    """Train one model; keeps ``best.pt`` by validation AUROC with early stopping, resumable from ``last.pt``.

    Without a validation set the model trains for ``epochs`` epochs and the last one is kept. An existing
    ``last.pt`` is resumed only when it was written with the same (non-empty) ``fingerprint``. Under torchrun
    (``dist``, default: the running process group) every rank trains its shard of each global batch through
    DDP and rank 0 alone writes the checkpoints (see :mod:`spine_ui.train.distributed`).
    """
    dist = dist or distributed.current()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    epochs = int(epochs or cfg.epochs)
    has_val = bool(val_paths)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % (2**32))
    model, pretrained = make_model(arch, cfg.pretrained, log)
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    net = distributed.wrap(model, device, dist)  # DDP (SyncBatchNorm on CUDA) under torchrun, else the model
    model = distributed.unwrap(net)
    amp = _amp(device, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    crit = nn.BCEWithLogitsLoss()

    batch = cfg.batch_for(arch)
    train_ds = CachedImages(train_paths, train_labels, cfg.input_size, cfg, preprocess, train=True)
    # the same sampler for one process or many, so N ranks see the global batches one process sees
    train_dl, sampler = distributed.train_loader(train_ds, batch, cfg.workers, device, cfg.seed, dist)
    val_dl = None
    criterion = "auroc"
    if has_val:
        val_ds = CachedImages(val_paths, val_labels, cfg.input_size, cfg, preprocess, train=False)
        if dist.enabled:
            val_ds = Subset(val_ds, distributed.shard(len(val_ds), dist))
        val_dl = _loader(val_ds, cfg.eval_batch, False, cfg.workers, device, cfg.seed)
        if len(set(int(v) for v in val_labels)) < 2:
            criterion = "neg_loss"
            log(f"  {arch}: validation set holds one class; selecting the best epoch by validation loss")

    state = {"epoch": 0, "best_score": -math.inf, "best_epoch": 0, "bad": 0, "history": [], "seconds": 0.0}
    last = out_dir / "last.pt"
    if last.exists() and fingerprint:
        ck = torch.load(last, map_location="cpu", weights_only=True)
        if ck.get("fingerprint") == fingerprint:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            scaler.load_state_dict(ck["scaler"])
            state = ck["state"]
            pretrained = ck.get("pretrained", pretrained)
            log(f"  {arch}: resuming after epoch {state['epoch']}")
    t0 = time.perf_counter() - state["seconds"]
    stopped = False
    for epoch in range(state["epoch"] + 1, epochs + 1):
        if has_val and state["bad"] >= cfg.patience:
            stopped = True
            break
        net.train()
        train_ds.epoch = epoch
        sampler.set_epoch(epoch)
        te = time.perf_counter()
        total, count = 0.0, 0
        for x, y in train_dl:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                loss = crit(net(x)[:, 0].float(), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            total += float(loss.detach()) * x.shape[0]
            count += x.shape[0]
        sched.step()
        if dist.enabled:  # the global mean loss
            sums = torch.tensor([total, float(count)], dtype=torch.float64)
            torch.distributed.all_reduce(sums)
            total, count = float(sums[0]), int(sums[1])
        row = {"epoch": epoch, "train_loss": total / max(count, 1), "lr": opt.param_groups[0]["lr"]}
        if val_dl is not None:
            val_auc, val_loss = _evaluate(model, val_dl, device, amp, dist)
            score = val_auc if criterion == "auroc" else -val_loss
            row.update(val_auroc=val_auc, val_loss=val_loss)
            if score > state["best_score"]:
                state.update(best_score=score, best_epoch=epoch, bad=0)
                if dist.is_main:
                    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out_dir / "best.pt")
            else:
                state["bad"] += 1
        else:
            state.update(best_epoch=epoch, best_score=float("nan"))
        row["seconds"] = time.perf_counter() - te
        state["history"].append(row)
        state["epoch"] = epoch
        state["seconds"] = time.perf_counter() - t0
        if dist.is_main:
            with atomic_path(last) as tmp:  # an interrupted save must not spoil the resume point
                torch.save({"fingerprint": fingerprint, "model": model.state_dict(), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "state": state,
                            "pretrained": pretrained}, tmp)
        msg = f"  {arch} epoch {epoch}/{epochs} loss {row['train_loss']:.4f}"
        if "val_auroc" in row:
            msg += f" val AUROC {row['val_auroc']:.4f} loss {row['val_loss']:.4f}"
        log(msg + f" ({row['seconds']:.1f} s)")
    distributed.barrier(dist)  # rank 0's checkpoints are on disk before any rank looks
    if not has_val or not (out_dir / "best.pt").exists():
        if dist.is_main:
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out_dir / "best.pt")
        if has_val:  # no epoch ran (epochs == 0) or every score was NaN
            state["best_epoch"] = state["epoch"]
    if has_val and state["bad"] >= cfg.patience and state["epoch"] < epochs:
        stopped = True
    result = FitResult(arch, int(state["best_epoch"]), float(state["best_score"]) if has_val else float("nan"),
                       int(state["epoch"]), stopped, bool(pretrained), float(state["seconds"]),
                       list(state["history"]), criterion if has_val else "none")
    if dist.is_main:
        atomic_write_json(out_dir / "done.json", {"fingerprint": fingerprint, **result.to_json()})
        last.unlink(missing_ok=True)  # the optimiser state is not needed once the unit is done
    distributed.barrier(dist)
    return result


# --------------------------------------------------------------------------- scoring
def predict(model: nn.Module, paths: Sequence[Path], size: int, views: tuple[str, ...], device: torch.device,
            preprocess: PreprocessConfig = PreprocessConfig(), batch: int = 32, amp: bool = False) -> np.ndarray:
    """Per-view probabilities [N, V], computed like ``spine_ui.core.triage.run_triage`` (mean over V = model P)."""
    model = model.to(device).eval()
    v = len(views)
    per = max(1, batch // v)
    out = np.zeros((len(paths), v), dtype=np.float64)
    with torch.no_grad():
        for start in range(0, len(paths), per):
            chunk = paths[start:start + per]
            stack = np.concatenate([model_input(read_enhanced(p), size, views, preprocess)[0] for p in chunk])
            x = torch.from_numpy(stack).to(device)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                z = model(x)[:, 0]
            out[start:start + len(chunk)] = sigmoid(z.float().cpu().numpy()).reshape(len(chunk), v)
    return out


def predict_all(model: nn.Module, paths: Sequence[Path], size: int, views: tuple[str, ...], device: torch.device,
                dist: Dist | None = None, **kwargs) -> np.ndarray:
    """:func:`predict` over every path, each rank scoring its shard; every rank gets the whole [N, V] array."""
    dist = dist or distributed.current()
    if not dist.enabled:
        return predict(model, paths, size, views, device, **kwargs)
    idx = distributed.shard(len(paths), dist)
    part = predict(model, [paths[i] for i in idx], size, views, device, **kwargs)
    rows = distributed.gather(list(zip(idx, part)), len(paths), dist)
    return np.stack(rows) if rows else np.zeros((0, len(views)))


def pooled_features(model: nn.Module, paths: Sequence[Path], size: int, device: torch.device,
                    preprocess: PreprocessConfig = PreprocessConfig(), batch: int = 32) -> np.ndarray:
    """Identity-view global-average-pooled pre-head features [N, C] (what ``TriageResult.pooled_features``
    concatenates for the feature-space outlier layer)."""
    model = model.to(device).eval()
    feats = []
    with torch.no_grad():
        for start in range(0, len(paths), batch):
            x = np.stack([to_model_input(read_enhanced(p), size, preprocess)[0] for p in paths[start:start + batch]])
            f = model.forward_features(torch.from_numpy(x).to(device))
            feats.append(f.float().mean(dim=(2, 3)).cpu().numpy())
    return np.concatenate(feats).astype(np.float64) if feats else np.zeros((0, 0))
