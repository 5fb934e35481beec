"""Gradio front end: the page's wiring (events, queue, launch) over ``handlers.SpineUI`` and
``worklist.WorklistUI``; the components are laid out in ``layout``. Thin: nothing here computes a model output.

Named API endpoints (``gradio_client``): ``/analyze`` (file -> finding dict: triage, detection, Grad-CAM, no
LIME) and ``/explain`` (file, LIME samples -> finding dict plus box, Grad-CAM and LIME images).

Model work is ordered by the Analyzer's scheduler (``spine_ui.services.scheduler``): first answers before
anyone's LIME, one inference worker. gradio's concurrency limits for the analysis events are therefore high
(``SchedulerConfig.ui_concurrency``): gradio only holds the requests, the scheduler decides what runs.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from spine_ui._env import limit_malloc_arenas
from spine_ui.config import PacsConfig, RuntimeConfig, SchedulerConfig, StoreConfig, UIConfig
from spine_ui.core.pipeline import Analyzer
from spine_ui.errors import BundleError
from spine_ui.services.auth import Authenticator, ClientAddressMiddleware
from spine_ui.services.scheduler import Scheduler
from spine_ui.services.store.reviews import Reviews
from spine_ui.ui import layout as L
from spine_ui.ui import render as R
from spine_ui.ui.dicom_actions import DicomActions
from spine_ui.ui.examples import ensure_examples
from spine_ui.ui.handlers import OUTPUTS, SpineUI, default_lime_samples
from spine_ui.ui.saved import SavedWorklists, user_of
from spine_ui.ui.worklist import WorklistUI
from spine_ui.ui.worklist_pacs import WorklistPacs

log = logging.getLogger(__name__)


def launch_kwargs(**overrides: Any) -> dict[str, Any]:
    """Arguments for ``Blocks.launch`` (gradio 6: theme and CSS go here). Host/port come from
    GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (gradio's defaults: 127.0.0.1:7860)."""
    kw: dict[str, Any] = dict(max_file_size=L.MAX_FILE_SIZE, theme=L.theme(), show_error=False,
                              footer_links=["api"], run_history=False, enable_monitoring=False,
                              pwa=False, mcp_server=False)
    if L.CSS_PATH.is_file():
        kw["css_paths"] = [L.CSS_PATH]
    kw.update(overrides)
    return kw


def build_app(analyzer: Analyzer | None = None, *, examples_dir: Path | None = L.EXAMPLES_DIR,
              lime_samples: int | None = None, cache_size: int | None = None, reviews: Reviews | None = None,
              auth: Authenticator | None = None, pacs: PacsConfig | None = None) -> gr.Blocks:
    """The Blocks app. Without ``analyzer`` the default bundle is loaded (and warmed up) once, here, with an
    Analyzer cache of ``cache_size`` studies (default ``UIConfig.cache_studies``), which also bounds a worklist
    so that reopening any of its studies never recomputes it. A given ``analyzer`` keeps its own cache size.
    ``reviews``: the review database (default: ``StoreConfig.from_env()``, migrated here); ``auth``: the sign-in
    check whose users' roles apply (default: none, one local user); ``pacs``: the DICOMweb PACS (default:
    ``PacsConfig.from_env()``; without a URL the page shows nothing PACS-related)."""
    cfg = UIConfig.from_env()
    sched_cfg = SchedulerConfig.from_env()
    if analyzer is None:
        from spine_ui.bundle.resolve import load_default

        bundle = load_default()
        bundle.warm_up()
        analyzer = Analyzer(bundle, cache_size=cache_size or cfg.cache_studies)
    if analyzer.scheduler is None:  # the app always orders model work: first answers before explanations
        analyzer.scheduler = Scheduler(sched_cfg)
        analyzer.lime_batch = analyzer.lime_batch or sched_cfg.lime_batch or None
    ui = SpineUI(analyzer, lime_samples or default_lime_samples(analyzer, cfg), reviews,
                 role=auth.role if auth is not None else None)
    ui.dicom = DicomActions(ui, pacs)
    wl = WorklistUI(ui)
    if ui.dicom.pacs_enabled:
        wl.pacs = WorklistPacs(wl, ui.dicom)
    saved = SavedWorklists(wl)
    info = ui.info
    examples = ensure_examples(examples_dir) if examples_dir is not None else []
    c: dict[str, Any] = {}  # the single-study view
    w: dict[str, Any] = {}  # the worklist tab: its controls ("wl_*") and its own result panel (OUTPUTS names)
    cam_choices = R.cam_choices(ui.analyzer.bundle.manifest.weights)

    with gr.Blocks(title=L.TITLE, delete_cache=(300, 1800), analytics_enabled=False) as demo:
        ui.cache_dir = Path(demo.GRADIO_CACHE)
        L.header(info)
        whoami = gr.HTML(saved.whoami_html("local"), elem_id="sx-whoami", js_on_load=None)
        with gr.Tabs(elem_id="sx-tabs"):
            L.single_tab(c, ui, examples, cam_choices)
            L.worklist_tab(w, ui, cam_choices)
        L.footer(cfg.source_url)
        c["state"] = gr.State(None, time_to_live=L.STATE_TTL_S)
        api = L.api_components(ui)
        upload, always, samples = c["upload"], c["always"], c["samples"]
        api_file, api_samples, api_json = api["file"], api["samples"], api["json"]
        api_boxes, api_cam, api_lime = api["boxes"], api["cam"], api["lime"]

        outputs = [c[name] for name in OUTPUTS]
        wl_outputs = [w[name] for name in OUTPUTS + wl.output_names()]

        def to_components(updates: Iterator[dict[str, Any]], comps: dict[str, Any] = c) -> Iterator[dict[Any, Any]]:
            for out in updates:
                yield {comps[k]: v for k, v in out.items()}

        def ui_upload(path, always_v, samples_v, request: gr.Request, progress=gr.Progress()):
            yield from to_components(ui.on_upload(path, always_v, samples_v, progress, session(request),
                                                  user_of(request)))

        limit = sched_cfg.ui_concurrency
        common = dict(api_visibility="private", concurrency_id="analysis", concurrency_limit=limit)
        private_ = dict(api_visibility="private")

        def wire_followups(p: dict[str, Any], always_c, samples_c, case: tuple = ()) -> list[Any]:
            """'Explain anyway' (then LIME) and the Grad-CAM map choice of one result panel. ``case``: the
            worklist id and open-study states; then updates for a study the page no longer shows are dropped."""
            p_outputs = [p[name] for name in OUTPUTS]
            if case:
                def ui_explain(key, always_v, samples_v, wl_id, pos, request: gr.Request, progress=gr.Progress()):
                    yield from to_components(wl.guard(wl_id, pos, ui.on_explain(key, always_v, samples_v,
                                                                                 progress, user_of(request))), p)

                def ui_lime_explain(key, always_v, samples_v, wl_id, pos, request: gr.Request,
                                    progress=gr.Progress()):
                    yield from to_components(wl.guard(wl_id, pos, ui.on_lime(
                        key, always_v, samples_v, True, progress, session(request, "worklist"))), p)
            else:
                def ui_explain(key, always_v, samples_v, request: gr.Request, progress=gr.Progress()):
                    yield from to_components(ui.on_explain(key, always_v, samples_v, progress, user_of(request)), p)

                def ui_lime_explain(key, always_v, samples_v, request: gr.Request, progress=gr.Progress()):
                    yield from to_components(ui.on_lime(key, always_v, samples_v, True, progress,
                                                        session(request)), p)

            inputs = [p["state"], always_c, samples_c, *case]
            run_explain = p["explain_btn"].click(ui_explain, inputs, p_outputs, show_progress_on=[p["triage"]],
                                                 **common)
            lime_explain = run_explain.then(ui_lime_explain, inputs, p_outputs, show_progress_on=[p["lime"]],
                                            **common)
            p["cam_choice"].input(ui.on_cam_choice, [p["cam_choice"], p["state"]], [p["cam"]],
                                  api_visibility="private", concurrency_id="view", concurrency_limit=limit,
                                  show_progress="minimal")
            return [run_explain, lime_explain]

        def ui_lime(key, always_v, samples_v, request: gr.Request, progress=gr.Progress()):
            yield from to_components(ui.on_lime(key, always_v, samples_v, False, progress, session(request)))

        def ui_drop(key, request: gr.Request) -> None:  # the upload was cleared: stop that study's LIME
            ui.close_session(session(request), key)

        # --- single study
        lime_inputs = [c["state"], always, samples]
        run_upload = upload.change(ui_upload, [upload, always, samples], outputs, show_progress_on=[c["triage"]],
                                   **common)
        lime_upload = run_upload.then(ui_lime, lime_inputs, outputs, show_progress_on=[c["lime"]], **common)
        upload.clear(ui_drop, [c["state"]], None, cancels=[run_upload, lime_upload, *wire_followups(c, always, samples)],
                     api_visibility="private", queue=False)

        c["dicom_btn"].click(ui.dicom.on_download, [c["state"]], [c["dicom_file"], c["dicom_status"]],
                             concurrency_id="analysis", concurrency_limit=limit, **private_)
        c["pacs_btn"].click(ui.dicom.on_send, [c["state"]], [c["dicom_status"]], concurrency_id="analysis",
                            concurrency_limit=limit, **private_)
        upload.change(lambda: (gr.update(value=None, visible=False), ""), None,
                      [c["dicom_file"], c["dicom_status"]], queue=False, **private_)

        # --- worklist
        def wl_upload(paths, always_v, wl_id, request: gr.Request, progress=gr.Progress()):
            yield from to_components(wl.on_upload(paths, always_v, progress, user_of(request), wl_id), w)

        def wl_stop(wl_id):
            return {w[k]: v for k, v in wl.on_stop(wl_id).items()}

        def wl_replace(wl_id):
            return {w[k]: v for k, v in wl.on_replace(wl_id).items()}

        def wl_lime(key, always_v, samples_v, wl_id, pos, request: gr.Request, progress=gr.Progress()):
            yield from to_components(wl.guard(wl_id, pos, ui.on_lime(key, always_v, samples_v, False, progress,
                                                                     session(request, "worklist"))), w)

        def wl_select(wl_id, always_v, samples_v, evt: gr.SelectData, request: gr.Request, progress=gr.Progress()):
            number = (evt.row_value or [None])[0] if evt is not None else None
            yield from to_components(wl.on_select(wl_id, number, always_v, samples_v, progress, user_of(request)), w)

        def wl_prev(wl_id, pos, always_v, samples_v, request: gr.Request, progress=gr.Progress()):
            yield from to_components(wl.on_step(wl_id, pos, -1, always_v, samples_v, progress, user_of(request)), w)

        def wl_next(wl_id, pos, always_v, samples_v, request: gr.Request, progress=gr.Progress()):
            yield from to_components(wl.on_step(wl_id, pos, +1, always_v, samples_v, progress, user_of(request)), w)

        def wl_review(wl_id, pos, review, comment, request: gr.Request):
            yield from to_components(wl.on_review(wl_id, pos, review, comment, user_of(request)), w)

        def wl_reopen(saved_id, request: gr.Request):
            yield from to_components(saved.on_reopen(saved_id, user_of(request)), w)

        def page_load(request: gr.Request):
            out = saved.on_load(user_of(request))
            return {whoami: out["whoami"], w["wl_saved_list"]: out["wl_saved_list"]}

        private = dict(api_visibility="private")
        wl_lime_inputs = [w["state"], w["always"], w["samples"], w["wl_id"], w["wl_pos"]]
        followups = wire_followups(w, w["always"], w["samples"], (w["wl_id"], w["wl_pos"]))
        # A new upload asks the session's running worklist (if any) to stop, then starts the new one.
        w["wl_files"].upload(wl_replace, [w["wl_id"]], [w["wl_progress"]], queue=False, **private).then(
            wl_upload, [w["wl_files"], w["always"], w["wl_id"]], wl_outputs, show_progress_on=[w["wl_progress"]],
            concurrency_id="worklist", concurrency_limit=1, **private)
        w["wl_stop"].click(wl_stop, [w["wl_id"]], [w["wl_progress"]], queue=False, **private)
        view = dict(concurrency_id="view", concurrency_limit=limit, **private)
        case_inputs = [w["wl_id"], w["wl_pos"], w["always"], w["samples"]]
        opened = [
            w["wl_table"].select(wl_select, [w["wl_id"], w["always"], w["samples"]], wl_outputs,
                                 show_progress_on=[w["triage"]], **view),
            w["wl_prev"].click(wl_prev, case_inputs, wl_outputs, show_progress_on=[w["triage"]], **view),
            w["wl_next"].click(wl_next, case_inputs, wl_outputs, show_progress_on=[w["triage"]], **view),
        ]
        lime_runs = [ev.then(wl_lime, wl_lime_inputs, [w[name] for name in OUTPUTS],
                             show_progress_on=[w["lime"]], **common) for ev in opened]
        # Opening another study (or a new upload) drops the explanations still running for the previous one
        # (gradio's events here; the LIME itself stops when the next study's LIME replaces its session token).
        new_list = [w["wl_files"].upload]
        if wl.pacs is not None:  # 'Fill from PACS' starts a worklist like an upload; 'Send to PACS' per case
            def wl_pacs_fill(days, always_v, wl_id, request: gr.Request, progress=gr.Progress()):
                yield from to_components(wl.pacs.on_fill(days, always_v, progress, user_of(request), wl_id), w)

            w["wl_pacs_fill"].click(wl_replace, [w["wl_id"]], [w["wl_progress"]], queue=False, **private).then(
                wl_pacs_fill, [w["wl_pacs_days"], w["always"], w["wl_id"]], wl_outputs,
                show_progress_on=[w["wl_progress"]], concurrency_id="worklist", concurrency_limit=1, **private)
            w["wl_pacs_send"].click(wl.pacs.on_send, [w["state"]], [w["wl_pacs_status"]], concurrency_id="analysis",
                                    concurrency_limit=limit, **private)
            new_list.append(w["wl_pacs_fill"].click)
        gr.on([w["wl_table"].select, w["wl_prev"].click, w["wl_next"].click, *new_list], None, None,
              None, cancels=lime_runs + followups, **private)
        w["wl_save"].click(wl_review, [w["wl_id"], w["wl_pos"], w["wl_review"], w["wl_comment"]], wl_outputs,
                           show_progress="minimal", **view)

        w["wl_reopen"].click(wl_reopen, [w["wl_saved_list"]], wl_outputs, **view)
        gr.on([demo.load, w["wl_refresh"].click], page_load, None, [whoami, w["wl_saved_list"]], queue=False,
              **private)

        def api_worklist_add(files, worklist_id, request: gr.Request):
            return saved.api_add(files, worklist_id, user_of(request))

        def api_review_mark(worklist_id, study, review, comment, request: gr.Request):
            return saved.api_mark(worklist_id, study, review, comment, user_of(request))

        def api_worklist(worklist_id, request: gr.Request):
            return saved.api_read(worklist_id, user_of(request))

        def api_audit_export(since, request: gr.Request):
            return saved.api_audit(since, user_of(request))

        res = [api["result"]]
        gr.Button(visible=False).click(api_worklist_add, [api["files"], api["worklist_id"]], res,
                                       api_name="worklist_add", concurrency_id="worklist")
        gr.Button(visible=False).click(api_review_mark, [api["worklist_id"], api["study"], api["review"],
                                                         api["comment"]], res, api_name="review_mark",
                                       concurrency_id="view", concurrency_limit=limit)
        gr.Button(visible=False).click(api_worklist, [api["worklist_id"]], res, api_name="worklist",
                                       concurrency_id="view", concurrency_limit=limit)
        gr.Button(visible=False).click(api_audit_export, [api["since"]], res, api_name="audit_export",
                                       concurrency_id="view", concurrency_limit=limit)
        gr.Button(visible=False).click(ui.api_analyze, [api_file], [api_json], api_name="analyze",
                                       concurrency_id="analysis", concurrency_limit=limit)
        gr.Button(visible=False).click(ui.api_explain, [api_file, api_samples],
                                       [api_json, api_boxes, api_cam, api_lime], api_name="explain",
                                       concurrency_id="analysis", concurrency_limit=limit)

        def page_closed(request: gr.Request) -> None:  # the page closed or the client left: stop its LIME
            ui.close_session(session(request))
            ui.close_session(session(request, "worklist"))

        demo.unload(page_closed)

    ui.keep = lambda: set(upload.keep_in_cache)
    demo.queue(default_concurrency_limit=1, max_size=max(64, 2 * limit))  # bounded; >= 20 users (load test)
    demo.spine = ui  # type: ignore[attr-defined]  (tests call the handlers directly)
    demo.spine_worklist = wl  # type: ignore[attr-defined]
    demo.spine_saved = saved  # type: ignore[attr-defined]
    demo.spine_components = c  # type: ignore[attr-defined]
    demo.spine_worklist_components = w  # type: ignore[attr-defined]
    return demo


def session(request: gr.Request | None, tab: str = "single") -> str | None:
    """The key of one tab of one browser session (None for calls without a session)."""
    sid = getattr(request, "session_hash", None) if request is not None else None
    return f"{sid}/{tab}" if sid else None


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own start-up probes
    limit_malloc_arenas(RuntimeConfig.from_env().malloc_arenas)  # before the worker threads exist
    store_cfg = StoreConfig.from_env()
    reviews = Reviews(store_cfg)  # creates / migrates the database; a failure is shown in the page
    if reviews.error:
        log.error("Review database: %s", reviews.error)
    auth = Authenticator(store_cfg.users_file, reviews.audit) if store_cfg.users_file else None
    try:
        demo = build_app(reviews=reviews, auth=auth)
    except BundleError as exc:  # missing / tampered bundle: a clear line, not a traceback
        log.error("Cannot start: %s", exc.user_message)
        raise SystemExit(1) from None
    demo.launch(**launch_kwargs(**auth_kwargs(auth)))


def auth_kwargs(auth: Authenticator | None) -> dict[str, Any]:
    """Sign-in for ``launch``: gradio's login page checking the users file, client addresses for the rate
    limit. Nothing when sign-in is off."""
    if auth is None:
        return {}
    from starlette.middleware import Middleware

    return {"auth": auth, "auth_message": "SpineXR Triage - sign in (research use only, not a medical device)",
            "app_kwargs": {"middleware": [Middleware(ClientAddressMiddleware)]}}


__all__ = ["build_app", "launch_kwargs", "main"]
