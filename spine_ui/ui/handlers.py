"""The handlers behind the page and the API (``SpineUI``): plain Python generators yielding
``{output name: value}``, callable without a server (tests). No model logic: they run the core's
:class:`~spine_ui.core.pipeline.Analyzer` and turn its typed :class:`~spine_ui.core.finding.Finding` into views.

Each upload is read into memory and gradio's temporary copy is deleted straight away (``uploads.py``); results
stream stage by stage (triage first, then boxes + Grad-CAM, LIME last), each turned into the page's outputs by
``views.py``. Rejected and unreadable files end in an error panel with a plain-language reason, never in an
exception. Follow-up actions (explain anyway, LIME, Grad-CAM map choice)
address the cached analysis by its key (the content hash).

Model work runs on the Analyzer's scheduler (when it has one, as the web app's does): first answers before
anyone's LIME. A browser session's LIME stops when the session uploads or opens another study, clears the upload
or goes away (``session`` below: gradio's session hash plus the tab).
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr
import numpy as np

from spine_ui.config import StoreConfig, UIConfig
from spine_ui.core.finding import BundleInfo, Finding
from spine_ui.core.pipeline import Analysis, AnalysisOptions, Analyzer
from spine_ui.errors import InputError, SchedulerError, TaskCancelledError
from spine_ui.services.scheduler.sessions import SessionTokens
from spine_ui.services.reports.metrics import metric_lines
from spine_ui.services.store.reviews import Reviews
from spine_ui.ui import render as R
from spine_ui.ui.uploads import ORPHAN_AGE_S, RECENT_MAX_BYTES, RecentStudies, UploadFiles
from spine_ui.ui.views import NOTHING, OUTPUTS, PDF_NAME, REPORT_NAME, StudyViews

__all__ = ["GENERIC_ERROR", "GONE", "NOTHING", "NO_FILE", "ORPHAN_AGE_S", "OUTPUTS", "PDF_NAME", "RECENT_MAX_BYTES",
           "REPORT_NAME", "RecentStudies", "SpineUI", "default_lime_samples"]

log = logging.getLogger(__name__)

GENERIC_ERROR = ("The analysis failed unexpectedly; please try again or use another file.")
NO_FILE = "No file was provided."
GONE = "This study is no longer held in memory (the server keeps only the most recent ones). Upload it again."


def default_lime_samples(analyzer: Analyzer, cfg: UIConfig | None = None) -> int:
    """``SPINE_LIME_SAMPLES`` when set, else the bundle's LIME sample count (8..2000)."""
    n = (cfg or UIConfig.from_env()).lime_samples
    return max(8, min(int(n if n is not None else analyzer.bundle.manifest.explain.lime_samples), 2000))


class SpineUI(UploadFiles, StudyViews):
    """The handlers behind the page and the API; plain Python, callable without a server (tests)."""

    def __init__(self, analyzer: Analyzer, lime_samples: int | None = None, reviews: Reviews | None = None,
                 role: Callable[[str], str | None] | None = None) -> None:
        self.analyzer = analyzer
        self.reviews = reviews if reviews is not None else Reviews(StoreConfig.from_env())
        self.role = role or (lambda _user: "admin")  # sign-in off: the one local user may do everything
        self.recent = RecentStudies(analyzer.cache_size, RECENT_MAX_BYTES)
        self.info = analyzer.bundle.info()
        self.info["metrics"] = metric_lines(analyzer.bundle.manifest.metrics, analyzer.bundle.manifest.trained)
        self.lime_samples = lime_samples or default_lime_samples(analyzer)
        self.cache_dir: Path = Path(gr.utils.get_upload_folder())
        self.keep: Callable[[], set[str]] = set  # files gradio must keep (a component's own value): never deleted
        self.tokens = SessionTokens()  # per session: the cancel token of the study it shows

    # --- UI handlers (yield {output name: value}) -------------------------------------------------------
    # The page runs two chained events per study: the stages up to boxes + Grad-CAM (streamed, fast), then
    # LIME on the cached analysis with a progress bar on the LIME panel.
    def on_upload(self, path: str | None, always: bool, lime_samples: float,
                  progress: Any = None, session: str | None = None, user: str = "local"
                  ) -> Iterator[dict[str, Any]]:
        """Analyse one upload (streamed), then keep its finding in the review database and audit it."""
        self.tokens.open(session, None)  # a new upload (or a cleared one) stops the previous study's LIME
        key = None
        for out in self._on_upload(path, always, lime_samples, progress):
            key = out.get("state", key)
            yield out
        a = self.analyzer.cached(key) if key else None
        if a is not None:
            self.reviews.record_finding(a.finding(), user)
        elif path:
            self.reviews.audit(user, "analysed", None, self.info.get("version"), "not accepted")

    def _on_upload(self, path: str | None, always: bool, lime_samples: float,
                   progress: Any = None) -> Iterator[dict[str, Any]]:
        if not path:
            yield self.cleared()
            return
        try:
            data = self.take_upload(path)
        except InputError as exc:
            out = self.failed("The file could not be read", exc.user_message)
            out["state"] = None
            yield out
            return
        yield from self.run(data, self.options(always, lime_samples, explain=False, lime=False),
                            progress=progress, new_state=True)

    def source(self, key: str | None) -> Analysis | bytes | None:
        """The study a follow-up action addresses: its cached analysis by key, else its held upload (re-analysed
        from the bytes after the analysis cache dropped it), else None."""
        if not key:
            return None
        return self.analyzer.cached(key) or self.recent.get(key)

    def on_explain(self, key: str | None, always: bool, lime_samples: float,
                   progress: Any = None, user: str = "local") -> Iterator[dict[str, Any]]:
        source = self.source(key)
        self.reviews.audit(user, "explained", key, self.info.get("version"), "ok" if source is not None else "gone")
        if source is None:
            yield self.failed("No study loaded", GONE if key else "Upload a radiograph first.")
            return
        yield from self.run(source, self.options(always, lime_samples, explain=True, lime=False), progress=progress)

    def on_lime(self, key: str | None, always: bool, lime_samples: float, explain: bool = False,
                progress: Any = None, session: str | None = None) -> Iterator[dict[str, Any]]:
        """LIME for the loaded study when it is explained (abnormal, 'always' or 'explain anyway'); one update
        at the end (``NOTHING`` when there is nothing to do, or when the session moved on to another study)."""
        source = self.source(key)
        if source is None:
            yield dict(NOTHING)
            return
        produced = False
        token = self.tokens.open(session, key)
        for out in self.run(source, self.options(always, lime_samples, explain=explain, lime=True), progress=progress,
                            final_only=True, token=token):
            produced = True
            yield out  # inside run(): its report file still exists while gradio copies it
        if not produced:
            yield dict(NOTHING)

    def close_session(self, session: str | None, key: str | None = None) -> None:
        """The session's page closed (or cleared study ``key``): stop its LIME."""
        self.tokens.close(session, key)

    def on_cam_choice(self, choice: str, key: str | None) -> np.ndarray | None:
        source = self.source(key)
        if source is None:
            return None
        try:
            a = source if isinstance(source, Analysis) else self.analyzer.load(source)
            if not a.accepted:
                return None
            self.analyzer.triage(a)
            self.analyzer.gradcam(a)
            return R.cam_image(a.enhanced, a.cam, choice or R.FUSED) if a.cam else None
        except Exception as exc:
            log.error("Grad-CAM view failed (%s).", type(exc).__name__)
            return None

    def options(self, always: bool, lime_samples: float, explain: bool, lime: bool = True) -> AnalysisOptions:
        n = max(8, int(lime_samples or self.lime_samples))
        return AnalysisOptions(detect="always" if always else "auto", gradcam=True, lime=lime,
                               explain_normal=bool(always or explain), lime_samples=n)

    def run(self, data: bytes | Analysis, opts: AnalysisOptions, *, progress: Any = None, new_state: bool = False,
            final_only: bool = False, token: Any = None) -> Iterator[dict[str, Any]]:
        """Stream the analysis of ``data`` (an upload's bytes, or a cached analysis): one update per finished
        stage (with ``final_only``: only the LIME stage, or nothing). Never raises: unreadable files and failures
        become the error panel; LIME stopped by ``token`` (the study was replaced or closed) ends quietly."""

        def on_lime(done: int, total: int) -> None:
            if progress is not None:
                progress((done, total), desc="LIME explanation", unit="samples")

        workdir = Path(tempfile.mkdtemp(prefix="spinexr-"))
        first = True
        try:
            try:
                for stage, a in self.analyzer.stages(data, options=opts, progress=on_lime, token=token):
                    if final_only and stage not in ("lime", "checks"):
                        continue
                    out = self.view(stage, a, opts, workdir, with_image=first and not final_only)
                    if first and new_state:
                        out["state"] = self.recent.put(a.key, data) if a.accepted else None
                    first = False
                    yield out
            except TaskCancelledError:
                return  # the page already shows another study (or none): nothing to update
            except InputError as exc:
                out = self.failed("The file could not be read", exc.user_message)
                if new_state:
                    out["state"] = None
                yield out
            except SchedulerError as exc:  # busy or shutting down: say so, the page stays usable
                out = self.failed("The server is busy", exc.user_message)
                if new_state:
                    out["state"] = None
                yield out
            except Exception as exc:  # never an exception to gradio; log the type only (no names, no content)
                log.error("Analysis failed (%s).", type(exc).__name__)
                out = self.failed("Analysis failed", GENERIC_ERROR)
                if new_state:
                    out["state"] = None
                yield out
        finally:
            # Runs after gradio has post-processed (copied into its cache) the last update.
            shutil.rmtree(workdir, ignore_errors=True)

    # --- API handlers ---------------------------------------------------------------------------------
    def error_finding(self, message: str, verdict: str = "unreadable") -> dict[str, Any]:
        man = self.analyzer.bundle.manifest
        return Finding.failure(message, BundleInfo(man.name, man.version, man.trained), man.triage.gate,
                               self.info["runtime"], verdict).to_dict()

    def _api(self, path: str | None, opts: AnalysisOptions) -> tuple[dict[str, Any], Analysis | None]:
        if not path:
            return self.error_finding(NO_FILE), None
        try:
            data = self.take_upload(path)
            a = self.analyzer.analyze(data, options=opts)
            return a.finding().to_dict(), a
        except InputError as exc:
            return self.error_finding(exc.user_message), None
        except SchedulerError as exc:
            return self.error_finding(exc.user_message, "error"), None
        except Exception as exc:
            log.error("API analysis failed (%s).", type(exc).__name__)
            return self.error_finding(GENERIC_ERROR, "error"), None

    def api_analyze(self, path: str | None) -> dict[str, Any]:
        """Triage, then (for abnormal studies, per the bundle's policy) detection and Grad-CAM; no LIME."""
        finding, _ = self._api(path, AnalysisOptions(detect="auto", gradcam=True, lime=False))
        if finding.get("explanations"):  # a LIME result cached by an earlier full run is not part of this answer
            finding["explanations"]["lime"] = None
            checks = finding["explanations"].get("checks")
            if checks:  # nor are the checks that need LIME (the per-lesion Grad-CAM ratios stay)
                checks.update(gradcam=None, lime=None, lime_stability=None)
        return finding

    def api_explain(self, path: str | None, lime_samples: float | None
                    ) -> tuple[dict[str, Any], np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """Everything for any accepted study: detection, Grad-CAM and LIME (``lime_samples`` perturbations)."""
        n = max(8, int(lime_samples or self.lime_samples))
        opts = AnalysisOptions(detect="always", gradcam=True, lime=True, explain_normal=True, lime_samples=n)
        finding, a = self._api(path, opts)
        if a is None or not a.accepted or a.triage is None:
            return finding, None, None, None
        boxes = R.lesion_image(a.enhanced, a.lesions or [], a.study.shape)
        cam = R.cam_image(a.enhanced, a.cam) if a.cam else None
        lime = R.lime_image(a.enhanced, a.lime) if a.lime else None
        return finding, boxes, cam, lime

