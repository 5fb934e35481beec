"""The handlers behind the page and the API (``SpineUI``): plain Python generators yielding
``{output name: value}``, callable without a server (tests). No model logic: they run the core's
:class:`~spine_ui.core.pipeline.Analyzer` and turn its typed :class:`~spine_ui.core.finding.Finding` into views.

Each upload is read into memory and gradio's temporary copy is deleted straight away; results stream stage by
stage (triage first, then boxes + Grad-CAM, LIME last). Rejected and unreadable files end in an error panel with
a plain-language reason, never in an exception. Follow-up actions (explain anyway, LIME, Grad-CAM map choice)
address the cached analysis by its key (the content hash).

Model work runs on the Analyzer's scheduler (when it has one, as the web app's does): first answers before
anyone's LIME. A browser session's LIME stops when the session uploads or opens another study, clears the upload
or goes away (``session`` below: gradio's session hash plus the tab).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr
import numpy as np

from spine_ui.config import StoreConfig, UIConfig
from spine_ui.core.finding import BundleInfo, Finding
from spine_ui.core.pipeline import Analysis, AnalysisOptions, Analyzer
from spine_ui.errors import InputError, SchedulerError, TaskCancelledError
from spine_ui.lru import LRU
from spine_ui.services.scheduler.sessions import SessionTokens
from spine_ui.services.reports.metrics import metric_lines
from spine_ui.services.store.reviews import Reviews
from spine_ui.services.store.store import StoredFinding
from spine_ui.ui import render as R
from spine_ui.ui import viewer as V

log = logging.getLogger(__name__)

GENERIC_ERROR = ("The analysis failed unexpectedly. Nothing was stored; please try again or use another file.")
NO_FILE = "No file was provided."
REPORT_NAME = "spinexr-finding.json"
PDF_NAME = "spinexr-report.pdf"
#: Upper bound on the bytes of uploads held in memory (the LRU drops the oldest beyond it).
RECENT_MAX_BYTES = 1024 ** 3
GONE = "This study is no longer held in memory (the server keeps only the most recent ones). Upload it again."
#: Zero-byte temp files gradio's File.preprocess leaves in its cache root are swept once this old.
ORPHAN_AGE_S = 120.0

#: The UI outputs, by name; generators yield ``{name: value}`` and a wrapper maps names to components.
OUTPUTS = ("state", "error", "triage", "explain_btn", "report", "details_acc", "details", "detect_group", "boxes",
           "legend", "table", "explain_group", "cam_choice", "cam", "lime", "explain_note", "viewer", "pdf")


#: "Leave the page as it is" (gradio needs at least one key in a dict of updates).
NOTHING: dict[str, Any] = {"explain_note": gr.skip()}


def default_lime_samples(analyzer: Analyzer, cfg: UIConfig | None = None) -> int:
    """``SPINE_LIME_SAMPLES`` when set, else the bundle's LIME sample count (8..2000)."""
    n = (cfg or UIConfig.from_env()).lime_samples
    return max(8, min(int(n if n is not None else analyzer.bundle.manifest.explain.lime_samples), 2000))


class RecentStudies:
    """The uploads of the last few studies, in memory only, keyed by content hash (bounded LRU).

    The page keeps only the key in its session state, so follow-up actions (explain anyway, LIME, another
    Grad-CAM map) find the study without the server keeping one copy per browser session."""

    def __init__(self, size: int, max_bytes: int | None = None) -> None:
        self._items: LRU[str, bytes] = LRU(size, max_bytes, len)

    def put(self, key: str, data: bytes) -> str:
        """Hold ``data`` under its analysis key (the content hash the Analyzer computed)."""
        self._items.put(key, data)
        return key

    def get(self, key: str | None) -> bytes | None:
        return self._items.get(key or None)


class SpineUI:
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

    # --- uploads --------------------------------------------------------------------------------------
    def take_upload(self, path: str | os.PathLike) -> bytes:
        """Read the uploaded file into memory, then delete gradio's temporary copy of it."""
        p = Path(path)
        try:
            with open(p, "rb") as fh:
                data = fh.read(self.analyzer.decode_cfg.max_file_bytes + 1)
        except OSError as exc:
            raise InputError("The uploaded file could not be read; please upload it again.") from exc
        finally:
            self.discard(p)
        return data

    def discard(self, p: Path) -> None:
        """Delete ``p`` if it is an upload in gradio's cache (not an example), plus its now-empty folder."""
        try:
            cache = self.cache_dir.resolve()
            rp = p.resolve()
            if str(p) in self.keep() or str(rp) in self.keep() or not rp.is_relative_to(cache) or rp == cache:
                return
            rp.unlink(missing_ok=True)
            if rp.parent != cache:
                try:
                    rp.parent.rmdir()
                except OSError:
                    pass
            self._sweep_orphans(cache)
        except OSError as exc:
            log.warning("Could not delete an uploaded temp file (%s).", type(exc).__name__)

    @staticmethod
    def _sweep_orphans(cache: Path) -> None:
        """gradio's ``File.preprocess`` creates an empty ``tmp*`` file in the cache root on every call and never
        removes it; delete those (empty and older than ORPHAN_AGE_S, so no in-flight upload is touched)."""
        now = time.time()
        try:
            with os.scandir(cache) as it:
                for entry in it:
                    if not entry.name.startswith("tmp") or not entry.is_file(follow_symlinks=False):
                        continue
                    st = entry.stat(follow_symlinks=False)
                    if st.st_size == 0 and now - st.st_mtime > ORPHAN_AGE_S:
                        try:
                            os.unlink(entry.path)
                        except OSError:
                            pass
        except OSError:
            pass

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

    # --- views ----------------------------------------------------------------------------------------
    def cleared(self) -> dict[str, Any]:
        return {"state": None, "error": gr.update(value="", visible=False), "triage": R.placeholder_html(),
                "explain_btn": gr.update(visible=False), "report": gr.update(value=None, visible=False),
                "details": gr.update(value=None), "details_acc": gr.update(visible=False),
                "detect_group": gr.update(visible=False), "boxes": None, "legend": "", "table": gr.update(value=[]),
                "explain_group": gr.update(visible=False), "cam_choice": gr.update(value=R.FUSED), "cam": None,
                "lime": None, "explain_note": "", "viewer": None, "pdf": gr.update(value=None, visible=False)}

    def stored_view(self, stored: StoredFinding) -> dict[str, Any]:
        """A study known only from the database (its pixels are gone): the stored finding, no images."""
        finding = stored.finding
        if not finding.accepted or finding.probability is None:
            return self.failed("Input rejected - not analysed (stored finding)",
                               finding.reason or "The image was rejected.", finding.gate_layers)
        out = self.cleared()
        del out["state"]
        when = f"{stored.saved_at:%Y-%m-%d %H:%M} UTC"
        out.update(triage=R.triage_html(finding) + R.working_html(
            f"Stored finding ({stored.bundle_name} {stored.bundle_version}, {when}). The server no longer holds "
            "this study's images: upload the file again to see boxes, Grad-CAM and LIME."),
            details=gr.update(value=finding.to_dict()), details_acc=gr.update(visible=True))
        return out

    def failed(self, title: str, message: str, layers=()) -> dict[str, Any]:
        out = self.cleared()
        del out["state"]
        out["error"] = gr.update(value=R.error_html(title, message, layers), visible=True)
        out["triage"] = ""
        return out

    def view(self, stage: str, a: Analysis, opts: AnalysisOptions, workdir: Path,
             with_image: bool = True) -> dict[str, Any]:
        finding = a.finding()
        if not a.accepted:
            out = self.failed("Input rejected - not analysed", finding.reason or "The image was rejected.",
                              finding.gate_layers)
            out["viewer"] = V.viewer_value(a, with_image=with_image,
                                           note=f"Rejected, not analysed: {finding.reason or 'see the reason above'}")
            return out
        if stage == "gate":
            out = self.cleared()
            del out["state"]
            out["triage"] = R.working_html("Input accepted. Running the triage ensemble...")
            out["viewer"] = V.viewer_value(a, with_image=with_image, note="Triage running...")
            return out
        out: dict[str, Any] = {
            "error": gr.update(value="", visible=False),
            "triage": R.triage_html(finding),
            "details": gr.update(value=finding.to_dict()),
            "details_acc": gr.update(visible=True),
            "report": gr.update(value=str(self.write_report(finding, workdir)), visible=True),
            "pdf": gr.update(value=str(self.write_pdf(a, workdir)), visible=True),
            "viewer": V.viewer_value(a, with_image=with_image, note=R.viewer_note(finding)),
        }
        explaining = a.abnormal or opts.explain_normal
        out["explain_btn"] = gr.update(visible=not a.abnormal and a.cam is None and stage not in ("lime", "checks"))
        if stage == "triage":
            if explaining:
                out["explain_group"] = gr.update(visible=False)
                out["detect_group"] = gr.update(visible=False)
                out["triage"] += R.working_html("Detecting lesions and computing Grad-CAM...")
            else:
                out["explain_btn"] = gr.update(visible=True)
            return out
        if stage in ("lime", "checks"):  # only the LIME panel and its note change; the Grad-CAM choice stays
            if a.lime is not None:
                out.update(explain_group=gr.update(visible=True), lime=R.lime_image(a.enhanced, a.lime),
                           explain_note=R.explain_note_html(finding, lime_pending=False,
                                                            checks_pending=stage == "lime" and opts.checks))
            return out
        if finding.detector_ran:
            out.update(detect_group=gr.update(visible=True),
                       boxes=R.lesion_image(a.enhanced, finding.lesions, a.study.shape),
                       legend=R.legend_html(finding.lesions), table=gr.update(value=R.lesion_rows(finding.lesions)))
        if a.cam is not None:
            out.update(explain_group=gr.update(visible=True),
                       cam_choice=gr.update(choices=R.cam_choices(a.cam.per_model), value=R.FUSED),
                       cam=R.cam_image(a.enhanced, a.cam), lime=None,
                       explain_note=R.explain_note_html(finding, lime_pending=explaining))
        return out

    @staticmethod
    def write_report(finding: Finding, workdir: Path) -> Path:
        """The downloadable finding (no identifiers, no original file name) in the per-request folder."""
        path = workdir / REPORT_NAME
        path.write_text(json.dumps(finding.to_dict(), indent=2, sort_keys=False))
        return path

    @staticmethod
    def write_pdf(a: Analysis, workdir: Path) -> Path:
        """The printable report (no identifiers, no file name) in the per-request folder."""
        from spine_ui.services.reports.pdf import write_pdf

        return write_pdf(a, workdir / PDF_NAME)

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

