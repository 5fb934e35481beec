"""``Analyzer``: decode -> preprocess -> gate -> triage -> detect -> explain, one stage at a time.

The UI streams ``stages()``; the CLI, benchmark and tests call ``analyze()``. Results are cached per file
content hash so asking for LIME after triage (or reopening a study) never recomputes earlier stages.

With a ``scheduler`` (``spine_ui.services.scheduler.Scheduler``, the web app's) every stage's computation runs
on its inference worker: first-answer stages on the interactive lane, LIME and the explanation checks in
batches on the explain lane, stoppable by a cancel token. Without one (the CLI, a single user) stages run
inline in the caller's thread.
"""
from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Iterator, Protocol, TypeVar

import numpy as np

from spine_ui.bundle.store import Bundle
from spine_ui.config import DecodeConfig, GateConfig, ViewerConfig
from spine_ui.core.decode import Study, decode_bytes
from spine_ui.core.display import DisplayImage, make_display
from spine_ui.core.detect import DetectionResult, Lesion, run_detection
from spine_ui.core.explain.gradcam import CamResult, explain_gradcam
from spine_ui.core.explain.faithfulness import ExplanationChecks, box_cam_ratios, run_checks
from spine_ui.core.explain.lime_explainer import LimeResult, explain_lime
from spine_ui.core.gate import GateResult, LayerResult, check_features, run_gate
from spine_ui.core.preprocess import enhance
from spine_ui.lru import LRU
from spine_ui.core.finding import BundleInfo, Finding, ImageInfo, LimeSummary, MemberProbability
from spine_ui.core.triage import TriageResult, run_triage

T = TypeVar("T")


class Scheduling(Protocol):
    """What the Analyzer needs from a scheduler (``spine_ui.services.scheduler.Scheduler`` provides it)."""

    def interactive(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the first-answer lane and return its value (or raise its exception)."""

    def explain(self, fn: Callable[[], T], token: Any = None) -> T:
        """Run ``fn`` on the explanation lane; raises ``TaskCancelledError`` once ``token`` is cancelled."""

    def hold(self) -> ContextManager[None]:
        """While inside (one first answer, between its tasks), explanation tasks wait."""


@dataclass(frozen=True)
class AnalysisOptions:
    detect: str = "auto"  # "auto" (the bundle's policy: abnormal only), "always", "never"
    gradcam: bool = True  # Grad-CAM for abnormal studies (or any study with explain_normal)
    lime: bool = False
    explain_normal: bool = False  # "explain anyway" for studies below the gate
    lime_samples: int | None = None
    tta: bool = True
    checks: bool = True  # explanation checks after LIME (faithfulness curves, LIME stability): stage "checks"


@dataclass
class Analysis:
    """Everything computed for one study. ``finding()`` is the JSON-safe summary (no patient identifiers)."""

    key: str
    bundle: Bundle
    study: Study | None = None
    enhanced: np.ndarray | None = None
    display: DisplayImage | None = None  # the original values, downsampled, for window/level in the viewer
    gate: GateResult | None = None
    triage: TriageResult | None = None
    detection: DetectionResult | None = None
    cam: CamResult | None = None
    lime: LimeResult | None = None
    checks: ExplanationChecks | None = None  # curves and stability (lesion ratios are added by finding())
    timings_ms: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    lime_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # LIME never blocks `lock`

    @property
    def lesions(self) -> tuple[Lesion, ...] | None:
        """The detected lesions, or None when the detector has not run."""
        return self.detection.lesions if self.detection is not None else None

    @property
    def accepted(self) -> bool:
        return self.gate is not None and self.gate.accepted

    @property
    def abnormal(self) -> bool:
        return bool(self.triage and self.triage.abnormal)

    def finding(self) -> Finding:
        """The typed, JSON-safe result so far (no patient identifiers)."""
        man = self.bundle.manifest
        t = self.triage if self.accepted else None
        meta = self.study.meta if self.study else None
        return Finding(
            accepted=self.accepted,
            reason=self.gate.reason if self.gate else None,
            verdict=("rejected" if not self.accepted else None if t is None else
                     "abnormal" if t.abnormal else "normal"),
            probability=t.probability if t else None,
            gate=man.triage.gate,
            abnormal=t.abnormal if t else None,
            bundle=BundleInfo(man.name, man.version, man.trained),
            runtime=self.bundle.runtime.label,
            models=tuple(MemberProbability(m.arch, m.probability, m.weight, m.view_probabilities)
                         for m in t.models) if t else (),
            lesions=tuple(self.detection.lesions) if (self.detection is not None and t) else (),
            detector_ran=self.detection is not None,
            gradcam=self.cam.method if self.cam else None,
            lime=LimeSummary(self.lime.n_samples, self.lime.score) if self.lime else None,
            gate_layers=self.gate.layers if self.gate else (),
            image=(ImageInfo(self.study.shape[1], self.study.shape[0], meta.source, meta.photometric,
                             meta.bits_stored, meta.transfer_syntax, tuple(meta.notes), meta.modality,
                             meta.view_position, meta.body_part) if self.study else None),
            timings_ms=dict(self.timings_ms),
            key=self.key,
            checks=self._checks(),
            calibrated=man.calibration is not None,
            probability_uncalibrated=t.probability_uncalibrated if t else None,
        )


    def _checks(self) -> ExplanationChecks | None:
        """The explanation checks so far, with the per-lesion Grad-CAM ratios when boxes and a map exist."""
        lesions = self.lesions if self.accepted and self.triage is not None else None
        ratios = (box_cam_ratios(self.cam.fused, [les.box for les in lesions], self.study.shape)
                  if self.cam is not None and lesions else ())
        if self.checks is None and not ratios:
            return None
        return dataclasses.replace(self.checks or ExplanationChecks(), lesions=ratios)


class Analyzer:
    """Runs the stages for one bundle; thread-safe, with a small LRU of analyses keyed by content hash."""

    def __init__(self, bundle: Bundle, *, gate_cfg: GateConfig = GateConfig(),
                 decode_cfg: DecodeConfig = DecodeConfig(), cache_size: int = 8,
                 scheduler: Scheduling | None = None, lime_batch: int | None = None,
                 viewer_cfg: ViewerConfig = ViewerConfig()) -> None:
        self.bundle = bundle
        self.gate_cfg = gate_cfg
        self.decode_cfg = decode_cfg
        self.viewer_cfg = viewer_cfg
        self.cache_size = cache_size
        self.scheduler = scheduler
        self.lime_batch = lime_batch or None  # perturbations per scheduled batch (None: the bundle's)
        self._cache: LRU[str, Analysis] = LRU(cache_size)

    def _interactive(self, fn: Callable[[], T]) -> T:
        return self.scheduler.interactive(fn) if self.scheduler is not None else fn()

    def _hold(self) -> ContextManager[None]:
        return self.scheduler.hold() if self.scheduler is not None else nullcontext()

    # --- stages -------------------------------------------------------------------------------------------
    def cached(self, key: str | None) -> Analysis | None:
        """The analysis held for this content hash, if the cache still has it."""
        return self._cache.get(key) if key else None

    def load(self, source: str | Path | bytes, filename: str = "") -> Analysis:
        """Decode, enhance and run the tag/image gate layers (cached by content hash)."""
        data = Path(source).read_bytes() if not isinstance(source, (bytes, bytearray)) else bytes(source)
        if isinstance(source, (str, Path)) and not filename:
            filename = Path(source).name
        key = hashlib.sha256(data).hexdigest()
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        a = Analysis(key=key, bundle=self.bundle)

        def compute() -> None:
            with _timer(a, "decode"):
                a.study = decode_bytes(data, filename, self.decode_cfg)
            with _timer(a, "preprocess"):
                a.enhanced = enhance(a.study.pixels, self.bundle.manifest.preprocess)
            with _timer(a, "gate"):
                a.gate = run_gate(a.study.pixels, a.study.meta, self.gate_cfg)
            with _timer(a, "display"):
                a.display = make_display(a.study, self.viewer_cfg)
            a.study = a.study.without_pixels()  # later stages use the working image; cached analyses stay small

        self._interactive(compute)
        self._cache.put(key, a)
        return a

    def triage(self, a: Analysis, tta: bool = True) -> Analysis:
        with a.lock:
            if a.triage is None and a.accepted:
                def compute() -> None:
                    with _timer(a, "triage"):
                        triage = run_triage(a.enhanced, self.bundle, tta=tta)
                    with _timer(a, "gate_features"):
                        a.gate = _with_feature_layer(a.gate, triage, self.bundle)
                    a.triage = triage

                self._interactive(compute)
        return a

    def detect(self, a: Analysis, mode: str = "auto") -> Analysis:
        wanted = mode == "always" or (mode == "auto" and (
            a.abnormal or self.bundle.manifest.detector_config.run == "always"))
        with a.lock:
            if a.detection is None and a.accepted and a.triage is not None and wanted:
                a.detection = self._interactive(_timed(a, "detect", lambda: run_detection(
                    a.enhanced, a.study.shape, self.bundle)))
        return a

    def gradcam(self, a: Analysis) -> Analysis:
        with a.lock:
            if a.cam is None and a.accepted and a.triage is not None:
                a.cam = self._interactive(_timed(a, "gradcam", lambda: explain_gradcam(
                    a.triage, self.bundle, a.enhanced)))
        return a

    def lime(self, a: Analysis, n_samples: int | None = None,
             progress: Callable[[int, int], None] | None = None, token: Any = None) -> Analysis:
        """LIME on the explain lane, one batch per task; ``TaskCancelledError`` when ``token`` is cancelled."""
        with a.lime_lock:
            stale = a.lime is not None and n_samples is not None and a.lime.n_samples != n_samples
            if (a.lime is None or stale) and a.accepted and a.triage is not None:
                with _timer(a, "lime"):
                    a.lime = explain_lime(a.enhanced, self.bundle, n_samples=n_samples, progress=progress,
                                          run_batch=self._explain_batches(token), batch_size=self.lime_batch)
                a.checks = None
        return a

    def checks(self, a: Analysis, token: Any = None) -> Analysis:
        """Explanation checks (core/explain/faithfulness.py) once LIME has run: part of the explanation stage,
        after the first answer and after LIME; like LIME, one explain-lane task per batch of model calls,
        stopped by ``token`` (``TaskCancelledError``, ``a.checks`` left unset)."""
        with a.lime_lock:  # like LIME's, never blocks ``lock`` (a first answer on this study)
            missing_cam = a.checks is not None and a.checks.gradcam is None and a.cam is not None
            if (a.checks is None or missing_cam) and a.lime is not None and a.lime.segment_weights is not None:
                with _timer(a, "checks"):
                    a.checks = run_checks(a.enhanced, self.bundle, a.lime,
                                          a.triage if a.cam is not None else None,
                                          run_batch=self._explain_batches(token), batch_size=self.lime_batch)
        return a

    def _explain_batches(self, token: Any) -> Callable[[Callable[[], T]], T] | None:
        """Runs one batch on the scheduler's explain lane, stopped by ``token``; None (inline) without one."""
        sched = self.scheduler
        return (lambda fn: sched.explain(fn, token)) if sched is not None else None

    # --- orchestration ------------------------------------------------------------------------------------
    def stages(self, source: str | Path | bytes | Analysis, filename: str = "",
               options: AnalysisOptions = AnalysisOptions(),
               progress: Callable[[int, int], None] | None = None,
               token: Any = None) -> Iterator[tuple[str, Analysis]]:
        """Yield ``(stage_name, analysis)`` after each stage, so a UI can show results as they arrive. ``source``
        may be an analysis already loaded (a follow-up action on a cached study): nothing done is redone.
        ``token`` (a scheduler cancel token) stops LIME and the checks when the study is replaced or closed."""
        with self._hold():  # one first answer: no explanation batch slips in between its tasks
            a = source if isinstance(source, Analysis) else self.load(source, filename)
            yield "gate", a
            if not a.accepted:
                return
            self.triage(a, tta=options.tta)
            yield "triage", a
            if not a.accepted:  # rejected by the feature-space layer
                return
            self.detect(a, options.detect)
            explain = a.abnormal or options.explain_normal
            if options.gradcam and explain:
                self.gradcam(a)
        yield "detect", a
        if options.lime and explain:
            self.lime(a, options.lime_samples, progress, token)
            yield "lime", a
            if options.checks and a.lime is not None:
                self.checks(a, token)
                yield "checks", a

    def analyze(self, source: str | Path | bytes | Analysis, filename: str = "",
                options: AnalysisOptions = AnalysisOptions()) -> Analysis:
        a = None
        for _stage, a in self.stages(source, filename, options):
            pass
        return a


def _with_feature_layer(gate: GateResult, triage: TriageResult, bundle: Bundle) -> GateResult:
    layer: LayerResult = check_features(triage.pooled_features[None, :], bundle.ood())
    layers = tuple(l for l in gate.layers if l.name != layer.name) + (layer,)
    if layer.status == "rejected":
        return GateResult(False, layer.detail, layers)
    return GateResult(gate.accepted, gate.reason, layers)


def _timed(a: Analysis, name: str, fn: Callable[[], T]) -> Callable[[], T]:
    def run() -> T:
        with _timer(a, name):
            return fn()
    return run


class _timer:
    def __init__(self, a: Analysis, name: str) -> None:
        self.a, self.name = a, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.a.timings_ms[self.name] = (time.perf_counter() - self.t0) * 1000.0
