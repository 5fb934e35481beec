"""Gradio front end: a thin layer over :class:`spine_ui.core.pipeline.Analyzer` (no model logic here).

The bundle is loaded once at start-up. Each upload is read into memory and gradio's temporary copy is deleted
straight away; results stream stage by stage (triage first, then boxes + Grad-CAM, LIME last). Rejected and
unreadable files end in an error panel with a plain-language reason, never in an exception.

A second tab, the worklist (``ui/worklist.py``), takes many files or a .zip at once, lists them by probability
(most suspicious first) as they are analysed, and opens each in a second copy of the same result panel (built by
``_result_head`` / ``_result_images``, filled by the same ``SpineUI`` views), with review marks and CSV / JSON
downloads.

Named API endpoints (``gradio_client``): ``/analyze`` (file -> finding dict: triage, detection, Grad-CAM, no
LIME) and ``/explain`` (file, LIME samples -> finding dict plus box, Grad-CAM and LIME images).
"""
from __future__ import annotations

import hashlib
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

from spine_ui._env import limit_malloc_arenas
from spine_ui.config import RuntimeConfig
from spine_ui.errors import BundleError, InputError
from spine_ui.lru import LRU
from spine_ui.core.pipeline import Analysis, AnalysisOptions, Analyzer
from spine_ui.core.finding import BundleInfo, Finding
from spine_ui.ui import render as R
from spine_ui.ui import worklist as WL
from spine_ui.ui.examples import ensure_examples, example_labels
from spine_ui.ui.worklist import WorklistUI

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "assets"
EXAMPLES_DIR = ASSETS / "examples"
CSS_PATH = ASSETS / "style.css"
ACCEPTED_TYPES = [".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff"]
MAX_FILE_SIZE = "50mb"
TITLE = "SpineXR Triage"
GENERIC_ERROR = ("The analysis failed unexpectedly. Nothing was stored; please try again or use another file.")
NO_FILE = "No file was provided."
REPORT_NAME = "spinexr-finding.json"
STATE_TTL_S = 1800
#: Studies kept analysed in memory by the app's Analyzer (and the upload LRU): the largest worklist.
DEFAULT_CACHE_STUDIES = 64
#: Upper bound on the bytes of uploads held in memory (the LRU drops the oldest beyond it).
RECENT_MAX_BYTES = 1024 ** 3
GONE = "This study is no longer held in memory (the server keeps only the most recent ones). Upload it again."
#: Zero-byte temp files gradio's File.preprocess leaves in its cache root are swept once this old.
ORPHAN_AGE_S = 120.0

#: The UI outputs, by name; generators yield ``{name: value}`` and a wrapper maps names to components.
OUTPUTS = ("state", "error", "triage", "explain_btn", "report", "details_acc", "details", "detect_group", "boxes",
           "legend", "table", "explain_group", "cam_choice", "cam", "lime", "explain_note")


#: "Leave the page as it is" (gradio needs at least one key in a dict of updates).
NOTHING: dict[str, Any] = {"explain_note": gr.skip()}


def default_lime_samples(analyzer: Analyzer) -> int:
    env = os.environ.get("SPINE_LIME_SAMPLES", "").strip()
    try:
        n = int(env) if env else int(analyzer.bundle.manifest.explain.lime_samples)
    except ValueError:
        n = int(analyzer.bundle.manifest.explain.lime_samples)
    return max(8, min(n, 2000))


class RecentStudies:
    """The uploads of the last few studies, in memory only, keyed by content hash (bounded LRU).

    The page keeps only the key in its session state, so follow-up actions (explain anyway, LIME, another
    Grad-CAM map) find the study without the server keeping one copy per browser session."""

    def __init__(self, size: int, max_bytes: int | None = None) -> None:
        self._items: LRU[str, bytes] = LRU(size, max_bytes, len)

    def put(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        self._items.put(key, data)
        return key

    def get(self, key: str | None) -> bytes | None:
        return self._items.get(key or None)


class SpineUI:
    """The handlers behind the page and the API; plain Python, callable without a server (tests)."""

    def __init__(self, analyzer: Analyzer, lime_samples: int | None = None) -> None:
        self.analyzer = analyzer
        self.recent = RecentStudies(analyzer.cache_size, RECENT_MAX_BYTES)
        self.info = analyzer.bundle.info()
        self.lime_samples = lime_samples or default_lime_samples(analyzer)
        self.cache_dir: Path = Path(gr.utils.get_upload_folder())
        self.keep: Callable[[], set[str]] = set  # files gradio must keep (a component's own value): never deleted

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

    def on_explain(self, key: str | None, always: bool, lime_samples: float,
                   progress: Any = None) -> Iterator[dict[str, Any]]:
        data = self.recent.get(key)
        if not data:
            yield self.failed("No study loaded", GONE if key else "Upload a radiograph first.")
            return
        yield from self.run(data, self.options(always, lime_samples, explain=True, lime=False), progress=progress)

    def on_lime(self, key: str | None, always: bool, lime_samples: float, explain: bool = False,
                progress: Any = None) -> Iterator[dict[str, Any]]:
        """LIME for the loaded study when it is explained (abnormal, 'always' or 'explain anyway'); one update
        at the end (``NOTHING`` when there is nothing to do)."""
        data = self.recent.get(key)
        if not data:
            yield dict(NOTHING)
            return
        produced = False
        for out in self.run(data, self.options(always, lime_samples, explain=explain, lime=True), progress=progress,
                            final_only=True):
            produced = True
            yield out  # inside run(): its report file still exists while gradio copies it
        if not produced:
            yield dict(NOTHING)

    def on_cam_choice(self, choice: str, key: str | None) -> np.ndarray | None:
        data = self.recent.get(key)
        if not data:
            return None
        try:
            a = self.analyzer.load(data)
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

    def run(self, data: bytes, opts: AnalysisOptions, *, progress: Any = None, new_state: bool = False,
            final_only: bool = False) -> Iterator[dict[str, Any]]:
        """Stream the analysis of ``data``: one update per finished stage (with ``final_only``: only the LIME
        stage, or nothing). Never raises: unreadable files and failures become the error panel."""

        def on_lime(done: int, total: int) -> None:
            if progress is not None:
                progress((done, total), desc="LIME explanation", unit="samples")

        workdir = Path(tempfile.mkdtemp(prefix="spinexr-"))
        first = True
        try:
            try:
                for stage, a in self.analyzer.stages(data, options=opts, progress=on_lime):
                    if final_only and stage != "lime":
                        continue
                    out = self.view(stage, a, opts, workdir)
                    if first and new_state:
                        out["state"] = self.recent.put(data) if a.accepted else None
                    first = False
                    yield out
            except InputError as exc:
                out = self.failed("The file could not be read", exc.user_message)
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
                "lime": None, "explain_note": ""}

    def failed(self, title: str, message: str, layers=()) -> dict[str, Any]:
        out = self.cleared()
        del out["state"]
        out["error"] = gr.update(value=R.error_html(title, message, layers), visible=True)
        out["triage"] = ""
        return out

    def view(self, stage: str, a: Analysis, opts: AnalysisOptions, workdir: Path) -> dict[str, Any]:
        finding = a.finding().to_dict()
        if not a.accepted:
            return self.failed("Input rejected - not analysed", a.gate.reason or "The image was rejected.",
                               finding["gate_layers"])
        if stage == "gate":
            out = self.cleared()
            del out["state"]
            out["triage"] = R.working_html("Input accepted. Running the triage ensemble...")
            return out
        out: dict[str, Any] = {
            "error": gr.update(value="", visible=False),
            "triage": R.triage_html(finding),
            "details": gr.update(value=finding),
            "details_acc": gr.update(visible=True),
            "report": gr.update(value=str(self.write_report(finding, workdir)), visible=True),
        }
        explaining = a.abnormal or opts.explain_normal
        out["explain_btn"] = gr.update(visible=not a.abnormal and a.cam is None and stage != "lime")
        if stage == "triage":
            if explaining:
                out["explain_group"] = gr.update(visible=False)
                out["detect_group"] = gr.update(visible=False)
                out["triage"] += R.working_html("Detecting lesions and computing Grad-CAM...")
            else:
                out["explain_btn"] = gr.update(visible=True)
            return out
        if stage == "lime":  # only the LIME panel and its note change; the user's Grad-CAM choice stays
            if a.lime is not None:
                out.update(explain_group=gr.update(visible=True), lime=R.lime_image(a.enhanced, a.lime),
                           explain_note=R.explain_note_html(finding, lime_pending=False))
            return out
        if a.lesions is not None:
            out.update(detect_group=gr.update(visible=True),
                       boxes=R.lesion_image(a.enhanced, a.lesions, a.study.shape),
                       legend=R.legend_html(a.lesions), table=gr.update(value=R.lesion_rows(a.lesions)))
        if a.cam is not None:
            out.update(explain_group=gr.update(visible=True),
                       cam_choice=gr.update(choices=R.cam_choices(a.cam.per_model), value=R.FUSED),
                       cam=R.cam_image(a.enhanced, a.cam), lime=None,
                       explain_note=R.explain_note_html(finding, lime_pending=explaining))
        return out

    @staticmethod
    def write_report(finding: dict[str, Any], workdir: Path) -> Path:
        """The downloadable finding (no identifiers, no original file name) in the per-request folder."""
        path = workdir / REPORT_NAME
        path.write_text(json.dumps(finding, indent=2, sort_keys=False))
        return path

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
        except Exception as exc:
            log.error("API analysis failed (%s).", type(exc).__name__)
            return self.error_finding(GENERIC_ERROR, "error"), None

    def api_analyze(self, path: str | None) -> dict[str, Any]:
        """Triage, then (for abnormal studies, per the bundle's policy) detection and Grad-CAM; no LIME."""
        finding, _ = self._api(path, AnalysisOptions(detect="auto", gradcam=True, lime=False))
        if finding.get("explanations"):  # a LIME result cached by an earlier full run is not part of this answer
            finding["explanations"]["lime"] = None
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


def _example_cache_paths(ex: gr.Examples) -> set[str]:
    paths: set[str] = set()
    try:
        for example in ex.non_none_examples:
            for item in ex._get_processed_example(example):
                if isinstance(item, dict) and item.get("path"):
                    paths.add(str(item["path"]))
    except Exception as exc:  # gradio internals; without them examples still work once per copy
        log.warning("Could not list cached example files (%s).", type(exc).__name__)
    return paths


def _theme() -> gr.themes.Base:
    system = [gr.themes.Font("system-ui"), gr.themes.Font("-apple-system"), gr.themes.Font("Segoe UI"),
              gr.themes.Font("Roboto"), gr.themes.Font("Helvetica Neue"), "Arial", "sans-serif"]
    mono = [gr.themes.Font("ui-monospace"), gr.themes.Font("SFMono-Regular"), gr.themes.Font("Menlo"),
            "Consolas", "monospace"]
    return gr.themes.Base(primary_hue="blue", secondary_hue="slate", neutral_hue="slate", radius_size="sm",
                          font=system, font_mono=mono)


def launch_kwargs(**overrides: Any) -> dict[str, Any]:
    """Arguments for ``Blocks.launch`` (gradio 6: theme and CSS go here). Host/port come from
    GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (gradio's defaults: 127.0.0.1:7860)."""
    kw: dict[str, Any] = dict(max_file_size=MAX_FILE_SIZE, theme=_theme(), show_error=False,
                              footer_links=["api"], run_history=False, enable_monitoring=False,
                              pwa=False, mcp_server=False)
    if CSS_PATH.is_file():
        kw["css_paths"] = [CSS_PATH]
    kw.update(overrides)
    return kw


def cache_studies() -> int:
    """How many studies the app keeps analysed in memory (Analyzer cache and upload LRU); also the largest
    worklist. ``SPINE_CACHE_STUDIES`` overrides the default."""
    env = os.environ.get("SPINE_CACHE_STUDIES", "").strip()
    try:
        n = int(env) if env else DEFAULT_CACHE_STUDIES
    except ValueError:
        n = DEFAULT_CACHE_STUDIES
    return max(1, min(n, 1000))


def _result_head(c: dict[str, Any], eid: Callable[[str], str], placeholder: str) -> None:
    """Error panel, triage panel, 'explain anyway' + JSON report buttons, finding accordion."""
    c["error"] = gr.HTML("", visible=False, elem_id=eid("error"), js_on_load=None)
    c["triage"] = gr.HTML(placeholder, elem_id=eid("triage"), js_on_load=None)
    with gr.Row():
        c["explain_btn"] = gr.Button("Explain anyway (Grad-CAM + LIME)", visible=False, variant="primary",
                                     elem_id=eid("explain"), scale=0, min_width=330)
        c["report"] = gr.DownloadButton("Download JSON report", visible=False, size="md", elem_id=eid("report"),
                                        scale=0, min_width=220)
    with gr.Accordion("Finding (JSON, no patient identifiers)", open=False, visible=False) as c["details_acc"]:
        c["details"] = gr.JSON(label="Finding", show_label=False)


def _result_images(c: dict[str, Any], eid: Callable[[str], str], cam_choices: list[tuple[str, str]]) -> None:
    """Lesion boxes + legend + table, then Grad-CAM and LIME side by side."""
    with gr.Column(visible=False, elem_id=eid("detect")) as c["detect_group"]:
        gr.HTML('<h3 class="sx-h">Lesion detection (YOLO11-L)</h3>', js_on_load=None)
        with gr.Row(equal_height=False):
            c["boxes"] = gr.Image(label="Detected lesions", type="numpy", interactive=False, height=460,
                                  buttons=["download", "fullscreen"], scale=3, elem_id=eid("boxes"))
            with gr.Column(scale=2, min_width=280):
                c["legend"] = gr.HTML("", elem_id=eid("legend"), js_on_load=None)
                c["table"] = gr.Dataframe(headers=R.TABLE_HEADERS, datatype=["str", "number", "str"],
                                          interactive=False, label="Lesions", wrap=True, max_height=320,
                                          elem_id=eid("table"))

    with gr.Column(visible=False, elem_id=eid("explain-panels")) as c["explain_group"]:
        gr.HTML('<h3 class="sx-h">Explanations</h3>', js_on_load=None)
        with gr.Row(equal_height=False):
            with gr.Column(min_width=300):
                c["cam"] = gr.Image(label="Grad-CAM", type="numpy", interactive=False, height=460,
                                    buttons=["download", "fullscreen"], elem_id=eid("cam"))
                c["cam_choice"] = gr.Radio(cam_choices, value=R.FUSED, label="Grad-CAM map", show_label=False,
                                           container=False, elem_id=eid("cam-choice"))
            with gr.Column(min_width=300):
                c["lime"] = gr.Image(label="LIME", type="numpy", interactive=False, height=460,
                                     buttons=["download", "fullscreen"], elem_id=eid("lime"))
                c["explain_note"] = gr.HTML("", elem_id=eid("explain-note"), js_on_load=None)


def build_app(analyzer: Analyzer | None = None, *, examples_dir: Path | None = EXAMPLES_DIR,
              lime_samples: int | None = None, cache_size: int | None = None) -> gr.Blocks:
    """The Blocks app. Without ``analyzer`` the default bundle is loaded (and warmed up) once, here, with an
    Analyzer cache of ``cache_size`` studies (default :func:`cache_studies`), which also bounds a worklist so
    that reopening any of its studies never recomputes it. A given ``analyzer`` keeps its own cache size."""
    if analyzer is None:
        from spine_ui.bundle.resolve import load_default

        bundle = load_default()
        bundle.warm_up()
        analyzer = Analyzer(bundle, cache_size=cache_size or cache_studies())
    ui = SpineUI(analyzer, lime_samples)
    wl = WorklistUI(ui)
    info = ui.info
    examples = ensure_examples(examples_dir) if examples_dir is not None else []
    c: dict[str, Any] = {}  # the single-study view
    w: dict[str, Any] = {}  # the worklist tab: its controls ("wl_*") and its own result panel (OUTPUTS names)
    cam_choices = R.cam_choices(ui.analyzer.bundle.manifest.weights)

    with gr.Blocks(title=TITLE, delete_cache=(300, 1800), analytics_enabled=False) as demo:
        ui.cache_dir = Path(demo.GRADIO_CACHE)
        gr.HTML(R.banner_html(info), elem_id="sx-banner-wrap", visible=not info["trained"], js_on_load=None)
        gr.HTML('<div class="sx-title"><h1>SpineXR Triage</h1><p>Spine radiograph triage: DERNet ensemble '
                '(DenseNet-121, EfficientNetV2-S, ResNet-50), YOLO11-L lesion boxes, Grad-CAM and LIME.</p></div>',
                js_on_load=None)
        gr.HTML(R.status_html(info), elem_id="sx-status", js_on_load=None)
        gr.HTML(R.disclaimer_html(), js_on_load=None)

        with gr.Tabs(elem_id="sx-tabs"):
            with gr.Tab("Single study", id="single", elem_id="sx-tab-single"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=4, min_width=300):
                        upload = gr.File(label="Radiograph (DICOM, PNG, JPEG, TIFF; max 50 MB)",
                                         file_types=ACCEPTED_TYPES, type="filepath", height=150,
                                         elem_id="sx-upload")
                        gr.HTML('<div class="sx-hint">Files larger than 50 MB are refused. DICOM and 16-bit images '
                                'are decoded on the server; the upload is deleted as soon as it has been read and '
                                'no patient identifiers are shown or reported.</div>', js_on_load=None)
                        always = gr.Checkbox(label="Always run detector and explanations", value=False,
                                             info="Also for studies below the gate (normal).", elem_id="sx-always")
                        samples = gr.Slider(8, max(1000, ui.lime_samples), value=ui.lime_samples, step=4,
                                            label="LIME samples", info="More samples: steadier map, slower.",
                                            elem_id="sx-lime-samples")
                        if examples:
                            ex = gr.Examples(examples=[[str(p)] for p in examples], inputs=[upload],
                                             example_labels=example_labels(examples),
                                             label="Synthetic examples (phantoms)", examples_per_page=5)
                            # gradio copies examples into its cache once and hands out that copy on every click:
                            # keep the copies out of both the upload clean-up and gradio's delete_cache sweep.
                            upload.keep_in_cache.update(_example_cache_paths(ex))
                    with gr.Column(scale=8, min_width=360):
                        _result_head(c, lambda n: f"sx-{n}", R.placeholder_html())
                _result_images(c, lambda n: f"sx-{n}", cam_choices)

            with gr.Tab("Worklist", id="worklist", elem_id="sx-tab-worklist"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=4, min_width=300):
                        w["wl_files"] = gr.File(label="Radiographs or a .zip (several files; max 50 MB each)",
                                                file_count="multiple", file_types=ACCEPTED_TYPES + [".zip"],
                                                type="filepath", height=150, elem_id="sx-wl-upload")
                        gr.HTML(WL.intro_html(), js_on_load=None)
                        w["always"] = gr.Checkbox(label="Detector and Grad-CAM for every study", value=False,
                                                  info="Also for studies below the gate (normal).",
                                                  elem_id="sx-wl-always")
                        w["samples"] = gr.Slider(8, max(1000, ui.lime_samples), value=ui.lime_samples, step=4,
                                                 label="LIME samples (when a study is opened)",
                                                 elem_id="sx-wl-lime-samples")
                        w["wl_stop"] = gr.Button("Stop after the current study", visible=False, size="sm",
                                                 variant="stop", elem_id="sx-wl-stop")
                    with gr.Column(scale=8, min_width=360):
                        w["wl_status"] = gr.HTML(WL.summary_html([], 0, False), elem_id="sx-wl-status",
                                                 js_on_load=None)
                        w["wl_progress"] = gr.HTML("", elem_id="sx-wl-progress", js_on_load=None)
                        w["wl_table"] = gr.Dataframe(headers=WL.TABLE_HEADERS, datatype=WL.TABLE_TYPES, value=[],
                                                     interactive=False, label="Worklist (most suspicious first)",
                                                     wrap=True, max_height=420, elem_id="sx-wl-table",
                                                     column_widths=["5%", "18%", "11%", "14%", "10%", "22%", "20%"])
                        with gr.Row():
                            w["wl_csv"] = gr.DownloadButton("Download worklist CSV", visible=False, size="md",
                                                            elem_id="sx-wl-csv", scale=0, min_width=220)
                            w["wl_json"] = gr.DownloadButton("Download worklist JSON", visible=False, size="md",
                                                             elem_id="sx-wl-json", scale=0, min_width=220)
                with gr.Group(elem_id="sx-wl-case"):
                    with gr.Row(equal_height=True):
                        w["wl_prev"] = gr.Button("< Previous", interactive=False, size="sm", scale=0, min_width=120,
                                                 elem_id="sx-wl-prev")
                        w["wl_nav"] = gr.HTML(WL.nav_html(None, 0, None), elem_id="sx-wl-nav", js_on_load=None)
                        w["wl_next"] = gr.Button("Next >", size="sm", scale=0, min_width=120, elem_id="sx-wl-next")
                    with gr.Row(equal_height=True):
                        w["wl_review"] = gr.Radio(WL.REVIEW_CHOICES, value=None, label="Your review",
                                                  elem_id="sx-wl-review", scale=2, min_width=260)
                        w["wl_comment"] = gr.Textbox(label="Comment", lines=1, max_lines=4, max_length=2000,
                                                     placeholder="Free text (no patient identifiers, please)",
                                                     elem_id="sx-wl-comment", scale=4)
                        w["wl_save"] = gr.Button("Save review", variant="primary", scale=0, min_width=140,
                                                 elem_id="sx-wl-save")
                    w["wl_saved"] = gr.HTML("", elem_id="sx-wl-saved", js_on_load=None)
                with gr.Row(equal_height=False):
                    with gr.Column(min_width=360):
                        _result_head(w, lambda n: f"sx-wl-{n}", WL.placeholder_html())
                _result_images(w, lambda n: f"sx-wl-{n}", cam_choices)
                w["state"] = gr.State(None, time_to_live=STATE_TTL_S)  # the open study's content hash
                w["wl_id"] = gr.State(None, time_to_live=STATE_TTL_S)
                w["wl_pos"] = gr.State(None, time_to_live=STATE_TTL_S)  # the open study's '#' (upload position)

        gr.HTML(R.footer_html(os.environ.get("SPINE_SOURCE_URL")), js_on_load=None)
        c["state"] = gr.State(None, time_to_live=STATE_TTL_S)

        # API-only components (hidden).
        api_file = gr.File(visible=False)
        api_samples = gr.Number(value=ui.lime_samples, precision=0, visible=False)
        api_json = gr.JSON(visible=False)
        api_boxes = gr.Image(visible=False, format="png", type="numpy")
        api_cam = gr.Image(visible=False, format="png", type="numpy")
        api_lime = gr.Image(visible=False, format="png", type="numpy")

        outputs = [c[name] for name in OUTPUTS]
        wl_outputs = [w[name] for name in OUTPUTS + WL.WL_OUTPUTS]

        def to_components(updates: Iterator[dict[str, Any]], comps: dict[str, Any] = c) -> Iterator[dict[Any, Any]]:
            for out in updates:
                yield {comps[k]: v for k, v in out.items()}

        def ui_upload(path, always_v, samples_v, progress=gr.Progress()):
            yield from to_components(ui.on_upload(path, always_v, samples_v, progress))

        common = dict(api_visibility="private", concurrency_id="analysis")

        def wire_followups(p: dict[str, Any], always_c, samples_c, case: tuple = ()) -> list[Any]:
            """'Explain anyway' (then LIME) and the Grad-CAM map choice of one result panel. ``case``: the
            worklist id and open-study states; then updates for a study the page no longer shows are dropped."""
            p_outputs = [p[name] for name in OUTPUTS]
            if case:
                def ui_explain(key, always_v, samples_v, wl_id, pos, progress=gr.Progress()):
                    yield from to_components(wl.guard(wl_id, pos, ui.on_explain(key, always_v, samples_v,
                                                                                 progress)), p)

                def ui_lime_explain(key, always_v, samples_v, wl_id, pos, progress=gr.Progress()):
                    yield from to_components(wl.guard(wl_id, pos, ui.on_lime(key, always_v, samples_v, True,
                                                                             progress)), p)
            else:
                def ui_explain(key, always_v, samples_v, progress=gr.Progress()):
                    yield from to_components(ui.on_explain(key, always_v, samples_v, progress), p)

                def ui_lime_explain(key, always_v, samples_v, progress=gr.Progress()):
                    yield from to_components(ui.on_lime(key, always_v, samples_v, True, progress), p)

            inputs = [p["state"], always_c, samples_c, *case]
            run_explain = p["explain_btn"].click(ui_explain, inputs, p_outputs, show_progress_on=[p["triage"]],
                                                 **common)
            lime_explain = run_explain.then(ui_lime_explain, inputs, p_outputs, show_progress_on=[p["lime"]],
                                            **common)
            p["cam_choice"].input(ui.on_cam_choice, [p["cam_choice"], p["state"]], [p["cam"]],
                                  api_visibility="private", concurrency_id="view", concurrency_limit=2,
                                  show_progress="minimal")
            return [run_explain, lime_explain]

        def ui_lime(key, always_v, samples_v, progress=gr.Progress()):
            yield from to_components(ui.on_lime(key, always_v, samples_v, False, progress))

        # --- single study
        lime_inputs = [c["state"], always, samples]
        run_upload = upload.change(ui_upload, [upload, always, samples], outputs, show_progress_on=[c["triage"]],
                                   **common)
        lime_upload = run_upload.then(ui_lime, lime_inputs, outputs, show_progress_on=[c["lime"]], **common)
        upload.clear(None, None, None, cancels=[run_upload, lime_upload, *wire_followups(c, always, samples)],
                     api_visibility="private")

        # --- worklist
        def wl_upload(paths, always_v, progress=gr.Progress()):
            yield from to_components(wl.on_upload(paths, always_v, progress), w)

        def wl_stop(wl_id):
            return {w[k]: v for k, v in wl.on_stop(wl_id).items()}

        def wl_replace(wl_id):
            return {w[k]: v for k, v in wl.on_replace(wl_id).items()}

        def wl_lime(key, always_v, samples_v, wl_id, pos, progress=gr.Progress()):
            yield from to_components(wl.guard(wl_id, pos, ui.on_lime(key, always_v, samples_v, False, progress)), w)

        def wl_select(wl_id, always_v, samples_v, evt: gr.SelectData, progress=gr.Progress()):
            number = (evt.row_value or [None])[0] if evt is not None else None
            yield from to_components(wl.on_select(wl_id, number, always_v, samples_v, progress), w)

        def wl_prev(wl_id, pos, always_v, samples_v, progress=gr.Progress()):
            yield from to_components(wl.on_step(wl_id, pos, -1, always_v, samples_v, progress), w)

        def wl_next(wl_id, pos, always_v, samples_v, progress=gr.Progress()):
            yield from to_components(wl.on_step(wl_id, pos, +1, always_v, samples_v, progress), w)

        def wl_review(wl_id, pos, review, comment):
            yield from to_components(wl.on_review(wl_id, pos, review, comment), w)

        private = dict(api_visibility="private")
        wl_lime_inputs = [w["state"], w["always"], w["samples"], w["wl_id"], w["wl_pos"]]
        followups = wire_followups(w, w["always"], w["samples"], (w["wl_id"], w["wl_pos"]))
        # A new upload asks the session's running worklist (if any) to stop, then starts the new one.
        w["wl_files"].upload(wl_replace, [w["wl_id"]], [w["wl_progress"]], queue=False, **private).then(
            wl_upload, [w["wl_files"], w["always"]], wl_outputs, show_progress_on=[w["wl_progress"]],
            concurrency_id="worklist", concurrency_limit=1, **private)
        w["wl_stop"].click(wl_stop, [w["wl_id"]], [w["wl_progress"]], queue=False, **private)
        view = dict(concurrency_id="view", concurrency_limit=2, **private)
        case_inputs = [w["wl_id"], w["wl_pos"], w["always"], w["samples"]]
        opened = [
            w["wl_table"].select(wl_select, [w["wl_id"], w["always"], w["samples"]], wl_outputs,
                                 show_progress_on=[w["triage"]], **view),
            w["wl_prev"].click(wl_prev, case_inputs, wl_outputs, show_progress_on=[w["triage"]], **view),
            w["wl_next"].click(wl_next, case_inputs, wl_outputs, show_progress_on=[w["triage"]], **view),
        ]
        lime_runs = [ev.then(wl_lime, wl_lime_inputs, [w[name] for name in OUTPUTS],
                             show_progress_on=[w["lime"]], **common) for ev in opened]
        # Opening another study (or a new upload) drops the explanations still running for the previous one.
        gr.on([w["wl_table"].select, w["wl_prev"].click, w["wl_next"].click, w["wl_files"].upload], None, None,
              None, cancels=lime_runs + followups, **private)
        w["wl_save"].click(wl_review, [w["wl_id"], w["wl_pos"], w["wl_review"], w["wl_comment"]], wl_outputs,
                           show_progress="minimal", **view)

        gr.Button(visible=False).click(ui.api_analyze, [api_file], [api_json], api_name="analyze",
                                       concurrency_id="analysis")
        gr.Button(visible=False).click(ui.api_explain, [api_file, api_samples],
                                       [api_json, api_boxes, api_cam, api_lime], api_name="explain",
                                       concurrency_id="analysis")

    ui.keep = lambda: set(upload.keep_in_cache)
    demo.queue(default_concurrency_limit=1, max_size=64)  # >= 20 concurrent users waiting (load test), bounded
    demo.spine = ui  # type: ignore[attr-defined]  (tests call the handlers directly)
    demo.spine_worklist = wl  # type: ignore[attr-defined]
    demo.spine_components = c  # type: ignore[attr-defined]
    demo.spine_worklist_components = w  # type: ignore[attr-defined]
    return demo


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own start-up probes
    limit_malloc_arenas(RuntimeConfig.from_env().malloc_arenas)  # before the worker threads exist
    try:
        demo = build_app()
    except BundleError as exc:  # missing / tampered bundle: a clear line, not a traceback
        log.error("Cannot start: %s", exc.user_message)
        raise SystemExit(1) from None
    demo.launch(**launch_kwargs())


__all__ = ["RecentStudies", "SpineUI", "build_app", "cache_studies", "launch_kwargs", "main"]
