"""The worklist from the PACS (only when ``SPINE_DICOMWEB_URL`` is set): "Fill from PACS" lists the recent
spine studies (QIDO-RS), reads each image (WADO-RS) into the same streaming batch as an upload, and each opened
result can be sent back ("Send to PACS", once) with a line saying whether it is stored in the PACS.

Rows are labelled by :func:`spine_ui.services.pacs.worklist.study_label`: accession and/or study date only when
configured on, otherwise "PACS study <n> · ref <6 hex>"; patient identity never reaches the page, the rows,
the review database or the logs (the retrieved bytes are held in memory like an upload's).
"""
from __future__ import annotations

import logging
from typing import Any, Iterator

from spine_ui.errors import PacsError
from spine_ui.services.pacs.worklist import batch_items, recent_entries, since_days
from spine_ui.ui.worklist_views import status_note

log = logging.getLogger(__name__)

DEFAULT_DAYS = 7
MAX_DAYS = 3650
PACS_LIMIT_REASON = ("Not analysed: a worklist holds at most {n} studies (this server's cache size). Fill again "
                     "with fewer days to see the rest.")
TITLE = "PACS"


def intro_html(cfg: Any) -> str:
    shown = [what for what, on in (("accession number", cfg.show_accession), ("study date", cfg.show_study_date)) if on]
    label = (" and ".join(shown) + " (as configured)") if shown else 'a neutral label ("PACS study 2 · ref 3fa9c1")'
    return ('<div class="sx-hint">Fill the worklist with the spine radiographs stored in the PACS in the last days '
            f"(newest first). Rows show {label}; no patient names, IDs or birth dates. Open a result to send its "
            "report (SR + images) back into the study.</div>")


class WorklistPacs:
    """PACS handlers over a :class:`~spine_ui.ui.worklist.WorklistUI` and the page's ``DicomActions``."""

    def __init__(self, wl: Any, dicom: Any, client_factory: Any = None) -> None:
        from spine_ui.services.pacs import PacsClient

        self.wl = wl
        self.dicom = dicom
        self.cfg = dicom.pacs
        self.client_factory = client_factory or PacsClient

    def on_fill(self, days: Any, always: bool, progress: Any = None, user: str = "local",
                wl_id: str | None = None) -> Iterator[dict[str, Any]]:
        """A new worklist of the studies of the last ``days`` days (stream and stop as an upload does)."""
        try:
            days = min(max(int(float(days)), 0), MAX_DAYS)
        except (TypeError, ValueError):
            days = DEFAULT_DAYS
        limit = self.wl.max_studies
        try:
            client = self.client_factory(self.cfg)
            entries = recent_entries(client, self.cfg, since=since_days(days), max_studies=limit,
                                     max_images=limit + 1)
        except PacsError as exc:
            yield {"wl_progress": status_note(f"The PACS could not be searched: {exc.user_message}", error=True)}
            return
        log.info("PACS worklist: %d image(s) from the last %d day(s).", len(entries), days)
        if not entries:
            yield {"wl_progress": status_note(f"No spine studies in the PACS in the last {days} day(s).")}
            return
        items = self.wl.intake.cap(batch_items(client, entries), PACS_LIMIT_REASON)
        yield from self.wl.intake.fill(items, always, progress, user, None, TITLE)

    def case_view(self, key: str | None) -> dict[str, Any]:
        """The open case's PACS line: stored already, or not sent yet ('' for no accepted study)."""
        try:
            return {"wl_pacs_status": self.dicom.stored_html(key)}
        except Exception as exc:  # noqa: BLE001 - the state file unreadable: never block opening a case
            log.error("PACS state unavailable (%s).", type(exc).__name__)
            return {"wl_pacs_status": ""}

    def on_send(self, key: str | None) -> str:
        """'Send to PACS' for the open case: the single-study action (stored once, status line)."""
        return self.dicom.on_send(key)


__all__ = ["DEFAULT_DAYS", "WorklistPacs", "intro_html"]
