"""The page's components: the result panel (used twice: single study and worklist case), the two tabs and
the hidden API components. Returns dicts of components by name; ``app`` wires their events."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import gradio as gr

from spine_ui.ui import render as R
from spine_ui.ui import viewer as V
from spine_ui.ui import worklist as WL
from spine_ui.ui.examples import example_labels

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "assets"
EXAMPLES_DIR = ASSETS / "examples"
CSS_PATH = ASSETS / "style.css"
ACCEPTED_TYPES = [".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"]
MAX_FILE_SIZE = "50mb"
TITLE = "SpineXR Triage"
STATE_TTL_S = 1800  # seconds a browser session keeps its study key and worklist id

def theme() -> gr.themes.Base:
    system = [gr.themes.Font("system-ui"), gr.themes.Font("-apple-system"), gr.themes.Font("Segoe UI"),
              gr.themes.Font("Roboto"), gr.themes.Font("Helvetica Neue"), "Arial", "sans-serif"]
    mono = [gr.themes.Font("ui-monospace"), gr.themes.Font("SFMono-Regular"), gr.themes.Font("Menlo"),
            "Consolas", "monospace"]
    return gr.themes.Base(primary_hue="blue", secondary_hue="slate", neutral_hue="slate", radius_size="sm",
                          font=system, font_mono=mono)


def result_head(c: dict[str, Any], eid: Callable[[str], str], placeholder: str) -> None:
    """Error panel, triage panel, 'explain anyway' + JSON report buttons, finding accordion."""
    c["error"] = gr.HTML("", visible=False, elem_id=eid("error"), js_on_load=None)
    c["triage"] = gr.HTML(placeholder, elem_id=eid("triage"), js_on_load=None)
    with gr.Row():
        c["explain_btn"] = gr.Button("Explain anyway (Grad-CAM + LIME)", visible=False, variant="primary",
                                     elem_id=eid("explain"), scale=0, min_width=330)
        c["report"] = gr.DownloadButton("Download JSON report", visible=False, size="md", elem_id=eid("report"),
                                        scale=0, min_width=220)
        c["pdf"] = gr.DownloadButton("Download PDF report", visible=False, size="md", elem_id=eid("pdf"),
                                     scale=0, min_width=220)
    with gr.Accordion("Finding (JSON, no patient identifiers)", open=False, visible=False) as c["details_acc"]:
        c["details"] = gr.JSON(label="Finding", show_label=False)


def dicom_actions(c: dict[str, Any], eid: Callable[[str], str], pacs_enabled: bool) -> None:
    """'Download DICOM (SR + SC)' and, with a PACS configured, 'Send to PACS', with their status line."""
    with gr.Row():
        c["dicom_btn"] = gr.Button("Download DICOM (SR + SC)", size="md", elem_id=eid("dicom"), scale=0,
                                   min_width=240)
        c["pacs_btn"] = gr.Button("Send to PACS", size="md", elem_id=eid("pacs"), scale=0, min_width=180,
                                  visible=pacs_enabled)
        c["dicom_file"] = gr.File(label="DICOM SR + Secondary Capture (zip)", visible=False, elem_id=eid("dicom-file"))
    c["dicom_status"] = gr.HTML("", elem_id=eid("dicom-status"), js_on_load=None)


def result_images(c: dict[str, Any], eid: Callable[[str], str], cam_choices: list[tuple[str, str]]) -> None:
    """The image viewer (the study always, with its overlays), then the separate pictures: lesion boxes +
    legend + table, Grad-CAM and LIME side by side."""
    c["viewer"] = V.component(eid("viewer"))
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



def single_tab(c: dict[str, Any], ui: Any, examples: list[Path], cam_choices: list[tuple[str, str]]) -> None:
    """The single-study tab: upload, options, examples (``c["upload"]``, ``c["always"]``, ``c["samples"]``) and
    the result panel; ``c`` receives the components by name."""
    with gr.Tab("Single study", id="single", elem_id="sx-tab-single"):
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=300):
                c["upload"] = upload = gr.File(label="Radiograph (DICOM, PNG, JPEG, TIFF, BMP; max 50 MB)",
                                 file_types=ACCEPTED_TYPES, type="filepath", height=150,
                                 elem_id="sx-upload")
                gr.HTML('<div class="sx-hint">Files larger than 50 MB are refused. DICOM and 16-bit images '
                        'are decoded on the server; the upload is deleted as soon as it has been read and '
                        'no patient identifiers are shown or reported.</div>', js_on_load=None)
                c["always"] = gr.Checkbox(label="Always run detector and explanations", value=False,
                                     info="Also for studies below the gate (normal).", elem_id="sx-always")
                c["samples"] = gr.Slider(8, max(1000, ui.lime_samples), value=ui.lime_samples, step=4,
                                    label="LIME samples", info="More samples: steadier map, slower.",
                                    elem_id="sx-lime-samples")
                if examples:
                    ex = gr.Examples(examples=[[str(p)] for p in examples], inputs=[upload],
                                     example_labels=example_labels(examples),
                                     label="Synthetic examples (phantoms)", examples_per_page=5)
                    # gradio copies examples into its cache once and hands out that copy on every click:
                    # keep the copies out of both the upload clean-up and gradio's delete_cache sweep.
                    upload.keep_in_cache.update(example_cache_paths(ex))
            with gr.Column(scale=8, min_width=360):
                result_head(c, lambda n: f"sx-{n}", R.placeholder_html())
                dicom_actions(c, lambda n: f"sx-{n}", ui.dicom.pacs_enabled)
        result_images(c, lambda n: f"sx-{n}", cam_choices)


def worklist_tab(w: dict[str, Any], ui: Any, cam_choices: list[tuple[str, str]]) -> None:
    """The worklist tab: many files or a .zip, the sorted table, the open case with review marks, and its own
    result panel; ``w`` receives the components by name."""
    with gr.Tab("Worklist", id="worklist", elem_id="sx-tab-worklist"):
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=300):
                w["wl_files"] = gr.File(label="Radiographs or a .zip (several files; max 50 MB each)",
                                        file_count="multiple", file_types=ACCEPTED_TYPES + [".zip"],
                                        type="filepath", height=150, elem_id="sx-wl-upload")
                gr.HTML(WL.intro_html(), js_on_load=None)
                if ui.dicom.pacs_enabled:
                    pacs_fill(w, ui.dicom.pacs)
                w["always"] = gr.Checkbox(label="Detector and Grad-CAM for every study", value=False,
                                          info="Also for studies below the gate (normal).",
                                          elem_id="sx-wl-always")
                w["samples"] = gr.Slider(8, max(1000, ui.lime_samples), value=ui.lime_samples, step=4,
                                         label="LIME samples (when a study is opened)",
                                         elem_id="sx-wl-lime-samples")
                w["wl_stop"] = gr.Button("Stop after the current study", visible=False, size="sm",
                                         variant="stop", elem_id="sx-wl-stop")
                with gr.Group(elem_id="sx-wl-saved-box"):
                    w["wl_saved_list"] = gr.Dropdown(choices=[], value=None, label="Your saved worklists",
                                                     info="Kept in the review database; reopen one after a restart.",
                                                     elem_id="sx-wl-saved-list")
                    with gr.Row():
                        w["wl_reopen"] = gr.Button("Reopen", size="sm", elem_id="sx-wl-reopen")
                        w["wl_refresh"] = gr.Button("Refresh list", size="sm", elem_id="sx-wl-refresh")
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
                result_head(w, lambda n: f"sx-wl-{n}", WL.placeholder_html())
                if ui.dicom.pacs_enabled:
                    w["wl_pacs_send"] = gr.Button("Send to PACS", size="md", elem_id="sx-wl-pacs-send", scale=0,
                                                  min_width=180)
                    w["wl_pacs_status"] = gr.HTML("", elem_id="sx-wl-pacs-status", js_on_load=None)
        result_images(w, lambda n: f"sx-wl-{n}", cam_choices)
        w["state"] = gr.State(None, time_to_live=STATE_TTL_S)  # the open study's content hash
        w["wl_id"] = gr.State(None, time_to_live=STATE_TTL_S)
        w["wl_pos"] = gr.State(None, time_to_live=STATE_TTL_S)  # the open study's '#' (upload position)


def pacs_fill(w: dict[str, Any], cfg: Any) -> None:
    """'Fill from PACS' (a PACS is configured): how many days back, the button, what the rows will show."""
    from spine_ui.ui import worklist_pacs as WP

    with gr.Group(elem_id="sx-wl-pacs-box"):
        with gr.Row(equal_height=True):
            w["wl_pacs_days"] = gr.Number(value=WP.DEFAULT_DAYS, precision=0, minimum=0, maximum=WP.MAX_DAYS,
                                          label="Studies from the last N days", elem_id="sx-wl-pacs-days",
                                          scale=2, min_width=160)
            w["wl_pacs_fill"] = gr.Button("Fill from PACS", variant="primary", elem_id="sx-wl-pacs-fill", scale=1,
                                          min_width=140)
        gr.HTML(WP.intro_html(cfg), js_on_load=None)


def api_components(ui: Any) -> dict[str, Any]:
    """Hidden components behind the named API endpoints."""
    return {"file": gr.File(visible=False),
            "files": gr.File(visible=False, file_count="multiple"),
            "worklist_id": gr.Textbox(visible=False), "study": gr.Textbox(visible=False),
            "review": gr.Textbox(visible=False), "comment": gr.Textbox(visible=False),
            "since": gr.Textbox(visible=False), "result": gr.JSON(visible=False),
            "samples": gr.Number(value=ui.lime_samples, precision=0, visible=False),
            "json": gr.JSON(visible=False),
            "boxes": gr.Image(visible=False, format="png", type="numpy"),
            "cam": gr.Image(visible=False, format="png", type="numpy"),
            "lime": gr.Image(visible=False, format="png", type="numpy")}


def header(info: dict[str, Any]) -> None:
    """Untrained banner, title, status strip (bundle, runtime) and the research-use notice."""
    gr.HTML(R.banner_html(info), elem_id="sx-banner-wrap", visible=not info["trained"], js_on_load=None)
    gr.HTML('<div class="sx-title"><h1>SpineXR Triage</h1><p>Spine radiograph triage: DERNet ensemble '
            '(DenseNet-121, EfficientNetV2-S, ResNet-50), YOLO11-L lesion boxes, Grad-CAM and LIME.</p></div>',
            js_on_load=None)
    gr.HTML(R.status_html(info), elem_id="sx-status", js_on_load=None)
    gr.HTML(R.disclaimer_html(), js_on_load=None)


def footer(source_url: str | None) -> None:
    gr.HTML(R.footer_html(source_url), js_on_load=None)


def example_cache_paths(ex: gr.Examples) -> set[str]:
    """The files gradio copied the examples to (its cache), read from the examples' processed values."""
    paths: set[str] = set()
    for example in ex.non_none_examples:
        for item in ex.non_none_processed_examples[example]:
            if isinstance(item, dict) and item.get("path"):
                paths.add(str(item["path"]))
    return paths
