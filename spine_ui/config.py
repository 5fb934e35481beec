"""Configuration: one frozen dataclass per concern. The bundle manifest stores the model-facing ones
(preprocess, triage, detector, explain) so a bundle fully describes how it must be served."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: VinDr-SpineXR lesion types: the data key (as spelled in the CSV) and the display name.
LESION_CLASSES: tuple[str, ...] = (
    "Osteophytes",
    "Disc space narrowing",
    "Surgical implant",
    "Spondylolysthesis",
    "Foraminal stenosis",
    "Vertebral collapse",
    "Other lesions",
)
DISPLAY_NAMES: dict[str, str] = {"Spondylolysthesis": "Spondylolisthesis"}


def display_name(label: str) -> str:
    """Human spelling of a VinDr data key (the CSV writes "Spondylolysthesis")."""
    return DISPLAY_NAMES.get(label, label)


@dataclass(frozen=True)
class DecodeConfig:
    """Limits for untrusted uploads, checked from headers before any pixel buffer is allocated."""

    max_file_bytes: int = 200 * 1024 * 1024
    max_pixels: int = 80_000_000  # ~ 9000 x 9000; real radiographs are below 4300 x 4300
    max_side: int = 16_384
    min_side: int = 32


@dataclass(frozen=True)
class PreprocessConfig:
    """The one preprocessing policy shared by training and serving."""

    clahe_clip: float = 2.0
    clahe_tiles: int = 8
    working_size: int = 1024  # long side of the CLAHE image (detector input and display)
    resize: str = "stretch"  # "stretch" to a square model input, or "letterbox"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class ClassifierSpec:
    """One DERNet member."""

    arch: str
    input_size: int
    weight: float
    cam_layer: str


DEFAULT_CLASSIFIERS: tuple[ClassifierSpec, ...] = (
    ClassifierSpec("densenet121", 384, 0.42, "features.norm5"),
    ClassifierSpec("tf_efficientnetv2_s", 384, 0.32, "bn2"),
    ClassifierSpec("resnet50", 384, 0.26, "layer4"),
)


@dataclass(frozen=True)
class TriageConfig:
    """Weighted soft voting with a gate; TTA views are names from ``spine_ui.core.contract.TTA_VIEWS``."""

    gate: float = 0.478
    tta_views: tuple[str, ...] = ("identity", "hflip", "rot+5", "rot-5", "zoom0.9")


@dataclass(frozen=True)
class DetectorConfig:
    arch: str = "yolo11l"
    imgsz: int = 640
    conf: float = 0.25
    iou: float = 0.65
    classes: tuple[str, ...] = LESION_CLASSES
    run: str = "abnormal"  # "abnormal" (only when triage is positive) or "always"


@dataclass(frozen=True)
class ExplainConfig:
    lime_samples: int = 300
    lime_batch: int = 16
    lime_segments: int = 60
    lime_size: int = 192  # LIME scores perturbations with every member at this input size (cost ~ size^2)
    lime_seed: int = 0
    cam_grid: int = 24  # common grid of the fused ensemble map
    check_steps: int = 10  # deletion/insertion steps of the explanation checks (core/explain/faithfulness.py)
    check_random_orders: int = 3  # random removal orders averaged as the checks' baseline


@dataclass(frozen=True)
class GateConfig:
    """Non-spine input rejection (image statistics; the feature-space threshold lives in the bundle)."""

    max_colorfulness: float = 12.0
    min_aspect: float = 0.2  # short side / long side
    min_dynamic_range: float = 0.08  # p99 - p1 of intensities in [0, 1]
    min_std: float = 0.02
    allowed_modalities: tuple[str, ...] = ("CR", "DX", "DR", "RF", "XA", "MG", "OT", "RG", "PX")
    spine_body_parts: tuple[str, ...] = (
        "SPINE", "CSPINE", "TSPINE", "LSPINE", "SSPINE", "NECK", "BACK", "CHEST", "ABDOMEN", "PELVIS",
        "WHOLEBODY", "LUMBAR", "THORACIC", "CERVICAL", "SACRUM", "COCCYX",
    )
    ood_percentile: float = 99.0


@dataclass(frozen=True)
class SchedulerConfig:
    """The inference scheduler (``spine_ui.services.scheduler``): one worker, interactive before explain.

    ``lime_batch`` (0: the bundle's ``explain.lime_batch``) bounds how long an interactive task can wait behind
    LIME: one batch of that many perturbations (8: ~0.35 s at bf16 on 2 cores; per-sample cost is flat from 8
    to 32 on OpenVINO, measured). ``max_interactive`` / ``max_explain`` bound the queued tasks
    per lane; beyond them a submit is refused with ``SchedulerBusyError``."""

    workers: int = 1  # inference threads taking tasks; each runtime call itself uses all cores
    lime_batch: int = 8
    max_interactive: int = 256
    max_explain: int = 256
    ui_concurrency: int = 32  # gradio events that may wait on the scheduler at once (it orders them, not gradio)
    hold_s: float = 30.0  # a first answer in progress keeps LIME batches waiting at most this long

    @classmethod
    def from_env(cls) -> "SchedulerConfig":
        return cls(
            workers=max(1, int(os.environ.get("SPINE_SCHED_WORKERS", "1"))),
            lime_batch=int(os.environ.get("SPINE_LIME_BATCH", "8")),
            max_interactive=int(os.environ.get("SPINE_SCHED_MAX_INTERACTIVE", "256")),
            max_explain=int(os.environ.get("SPINE_SCHED_MAX_EXPLAIN", "256")),
            ui_concurrency=max(1, int(os.environ.get("SPINE_UI_CONCURRENCY", "32"))),
            hold_s=float(os.environ.get("SPINE_SCHED_HOLD_S", "30")),
        )


@dataclass(frozen=True)
class ViewerConfig:
    """The viewer's display copy of the original values (window/level in the browser)."""

    max_side: int = 2048  # long side of the uint16 display copy kept per analysed study
    compress_level: int = 1  # zlib level of the copy sent to the browser (1: fast, most of the gain)

    @classmethod
    def from_env(cls) -> "ViewerConfig":
        return cls(max_side=max(256, int(os.environ.get("SPINE_VIEW_MAX_SIDE", "2048"))),
                   compress_level=min(9, max(0, int(os.environ.get("SPINE_VIEW_ZLIB_LEVEL", "1")))))


@dataclass(frozen=True)
class RuntimeConfig:
    """Where models run. ``SPINE_RUNTIME`` = onnx | openvino | torch overrides the automatic choice;
    ``SPINE_LIME_PRECISION`` = auto | bf16 | fp32 sets LIME's scoring precision (auto: bf16 where the CPU has it);
    ``SPINE_DECISION_PRECISION`` = auto (default) | fp32 | bf16 the triage and detection precision (auto: bf16
    through OpenVINO only for a bundle whose manifest records a passed bf16 check, on a CPU with BF16)."""

    runtime: str = "auto"
    lime_precision: str = "auto"
    decision_precision: str = "auto"
    threads: int = 0  # 0: all cores
    models_dir: Path = Path("models")
    bundle_name: str = "untrained"
    malloc_arenas: int = 2  # the server caps glibc malloc arenas (0: glibc default); see _env.limit_malloc_arenas

    @classmethod
    def from_env(cls) -> "RuntimeConfig":
        return cls(
            runtime=os.environ.get("SPINE_RUNTIME", "auto").lower(),
            lime_precision=os.environ.get("SPINE_LIME_PRECISION", "auto").lower(),
            decision_precision=os.environ.get("SPINE_DECISION_PRECISION", "auto").lower(),
            threads=int(os.environ.get("SPINE_THREADS", "0")),
            models_dir=Path(os.environ.get("SPINE_MODELS_DIR", "models")),
            bundle_name=os.environ.get("SPINE_BUNDLE", "untrained"),
            malloc_arenas=int(os.environ.get("SPINE_MALLOC_ARENAS", "2")),
        )


def _env_int(name: str, default: int | None, lo: int, hi: int) -> int | None:
    """An integer environment variable clamped to [lo, hi]; unset or unparsable -> ``default``."""
    text = os.environ.get(name, "").strip()
    try:
        value = int(text) if text else default
    except ValueError:
        value = default
    return None if value is None else max(lo, min(int(value), hi))


@dataclass(frozen=True)
class UIConfig:
    """The web app's knobs: ``SPINE_CACHE_STUDIES`` (studies held analysed in memory, also the largest
    worklist), ``SPINE_LIME_SAMPLES`` (default LIME samples; else the bundle's), ``SPINE_SOURCE_URL`` (the
    AGPL source link in the footer)."""

    cache_studies: int = 64
    lime_samples: int | None = None
    source_url: str | None = None

    @classmethod
    def from_env(cls) -> "UIConfig":
        return cls(cache_studies=_env_int("SPINE_CACHE_STUDIES", 64, 1, 1000),
                   lime_samples=_env_int("SPINE_LIME_SAMPLES", None, 8, 2000),
                   source_url=os.environ.get("SPINE_SOURCE_URL") or None)


def _env_flag(name: str, default: bool) -> bool:
    text = os.environ.get(name, "").strip().lower()
    return default if not text else text not in ("0", "false", "no", "off")


@dataclass(frozen=True)
class PacsConfig:
    """DICOMweb (QIDO/WADO/STOW-RS) connection for the PACS loop and the UI worklist.

    ``SPINE_DICOMWEB_URL``; auth: ``SPINE_DICOMWEB_TOKEN`` (bearer) or ``SPINE_DICOMWEB_USER`` +
    ``SPINE_DICOMWEB_PASSWORD`` (basic); TLS is verified unless ``SPINE_DICOMWEB_VERIFY_TLS=0``
    (``SPINE_DICOMWEB_CA_BUNDLE``: a CA file); ``SPINE_PACS_MODALITIES`` (e.g. "CR,DX"; empty = any);
    the processed-instance log is ``$SPINE_DATA_DIR/pacs_state.sqlite``; ``SPINE_PACS_SHOW_ACCESSION`` /
    ``SPINE_PACS_SHOW_STUDY_DATE`` let the UI worklist show those (off by default)."""

    url: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    verify_tls: bool = True
    ca_bundle: str | None = None
    modalities: tuple[str, ...] = ()
    timeout_s: float = 30.0
    retries: int = 4
    backoff_s: float = 1.0
    interval_s: float = 60.0
    state_path: Path = Path("data") / "pacs_state.sqlite"
    show_accession: bool = False
    show_study_date: bool = False

    @classmethod
    def from_env(cls) -> "PacsConfig":
        data_dir = Path(os.environ.get("SPINE_DATA_DIR", "data"))
        mods = os.environ.get("SPINE_PACS_MODALITIES", "")
        return cls(url=os.environ.get("SPINE_DICOMWEB_URL") or None,
                   user=os.environ.get("SPINE_DICOMWEB_USER") or None,
                   password=os.environ.get("SPINE_DICOMWEB_PASSWORD") or None,
                   token=os.environ.get("SPINE_DICOMWEB_TOKEN") or None,
                   verify_tls=_env_flag("SPINE_DICOMWEB_VERIFY_TLS", True),
                   ca_bundle=os.environ.get("SPINE_DICOMWEB_CA_BUNDLE") or None,
                   modalities=tuple(m.strip().upper() for m in mods.split(",") if m.strip()),
                   state_path=data_dir / "pacs_state.sqlite",
                   show_accession=_env_flag("SPINE_PACS_SHOW_ACCESSION", False),
                   show_study_date=_env_flag("SPINE_PACS_SHOW_STUDY_DATE", False))


T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a config dataclass (tuples become lists, paths strings)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, tuple):
            v = [to_dict(x) if dataclasses.is_dataclass(x) else x for x in v]
        elif isinstance(v, Path):
            v = str(v)
        out[f.name] = v
    return out


def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
    """Build a config dataclass from a manifest dict, ignoring unknown keys, keeping defaults for missing."""
    data = data or {}
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            v = data[f.name]
            if isinstance(v, list):
                v = tuple(v)
            kwargs[f.name] = v
    return cls(**kwargs)  # type: ignore[call-arg]


@dataclass(frozen=True)
class StoreConfig:
    """Where worklists, findings, review marks and the audit log are kept, and who may sign in.

    SQLite at ``data_dir/spine.db`` by default; PostgreSQL when ``database_url`` is set (several app replicas
    then share one database). ``users_file``: sign-in is on when set (``None``: one local user, "local").
    ``retention_days``: findings, marks and worklists older than this are deleted by ``db purge`` (0: never).
    ``store_names``: keep each study's file name in its worklist (False: a neutral label, "study-<hash>")."""

    data_dir: Path = Path("data")
    database_url: str | None = None
    retention_days: int = 365
    users_file: Path | None = None
    store_names: bool = True
    busy_timeout_s: float = 10.0
    connect_timeout_s: int = 5

    @property
    def url(self) -> str:
        """The SQLAlchemy URL: PostgreSQL through psycopg 3, or the SQLite file."""
        if self.database_url:
            url = self.database_url
            for prefix in ("postgresql://", "postgres://"):
                if url.startswith(prefix):
                    url = "postgresql+psycopg://" + url[len(prefix):]
            return url
        return f"sqlite:///{(self.data_dir / 'spine.db').as_posix()}"

    @classmethod
    def from_env(cls) -> "StoreConfig":
        users = os.environ.get("SPINE_USERS", "").strip()
        return cls(
            data_dir=Path(os.environ.get("SPINE_DATA_DIR", "data")),
            database_url=os.environ.get("SPINE_DATABASE_URL", "").strip() or None,
            retention_days=int(os.environ.get("SPINE_RETENTION_DAYS", "365")),
            users_file=Path(users) if users else None,
            store_names=os.environ.get("SPINE_STORE_NAMES", "1").strip().lower() not in ("0", "false", "no"),
        )


@dataclass(frozen=True)
class ClusterConfig:
    """The Ray batch engine (``analyze --engine ray``). ``SPINE_RAY_ADDRESS`` (``auto`` or ``HOST:PORT``; empty:
    start a local cluster on 127.0.0.1), ``SPINE_RAY_WORKERS`` (inference actors; 0: one per
    ``cpus_per_worker`` CPUs of the cluster), ``SPINE_RAY_CPUS_PER_WORKER`` (CPUs, hence ONNX threads, per
    actor), ``SPINE_RAY_OBJECT_STORE_MB`` (object store of a local cluster)."""

    address: str = ""
    workers: int = 0
    cpus_per_worker: int = 1
    object_store_mb: int = 512
    inflight_per_worker: int = 2  # studies queued per actor: the next one is read while one is analysed
    max_restarts: int = 3  # an actor that dies is restarted this often (its queued studies are retried)
    max_attempts: int = 3  # a study whose worker died is resubmitted this often, then reported as a row

    @classmethod
    def from_env(cls) -> "ClusterConfig":
        return cls(address=os.environ.get("SPINE_RAY_ADDRESS", ""),
                   workers=int(os.environ.get("SPINE_RAY_WORKERS", "0")),
                   cpus_per_worker=max(1, int(os.environ.get("SPINE_RAY_CPUS_PER_WORKER", "1"))),
                   object_store_mb=int(os.environ.get("SPINE_RAY_OBJECT_STORE_MB", "512")))
