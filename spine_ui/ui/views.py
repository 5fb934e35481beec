"""The page's outputs for one study (``StudyViews``, mixed into ``SpineUI``): an :class:`Analysis` after a
stage, or a finding known only from the database, as ``{output name: value}``; the per-request JSON and PDF."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr

from spine_ui.core.finding import Finding
from spine_ui.core.pipeline import Analysis, AnalysisOptions
from spine_ui.services.store.store import StoredFinding
from spine_ui.ui import render as R
from spine_ui.ui import viewer as V

REPORT_NAME = "spinexr-finding.json"
PDF_NAME = "spinexr-report.pdf"

#: The UI outputs, by name; generators yield ``{name: value}`` and a wrapper maps names to components.
OUTPUTS = ("state", "error", "triage", "explain_btn", "report", "details_acc", "details", "detect_group", "boxes",
           "legend", "table", "explain_group", "cam_choice", "cam", "lime", "explain_note", "viewer", "pdf")


#: "Leave the page as it is" (gradio needs at least one key in a dict of updates).
NOTHING: dict[str, Any] = {"explain_note": gr.skip()}


class StudyViews:
    """Views of one study; no state of their own."""

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
