"""Result actions for DICOM: download the SR + Secondary Capture objects as a zip, send them to the PACS.

The objects carry the source's patient/study identity (that is what files them into the right study); the
page shows only counts and a status, never identifiers. The zip is written to a per-request temporary folder
that is removed once gradio has taken its copy to serve the download. "Send to PACS" is done once per image
and bundle: the PACS loop's processed-instance log (``PacsConfig.state_path``) remembers what was stored, so a
second click (or a study the loop already handled) says "stored" instead of sending again.
"""
from __future__ import annotations

import html
import logging
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from spine_ui.config import PacsConfig
from spine_ui.core.pipeline import AnalysisOptions
from spine_ui.errors import InputError, PacsError

log = logging.getLogger(__name__)
ZIP_NAME = "spinexr-dicom.zip"
STORED_NOTE = "Stored in the PACS: this result (SR + Secondary Capture) is already in the study."


def _status(text: str, ok: bool) -> str:
    cls = "sx-ok" if ok else "sx-error"
    return f'<div class="{cls}" role="status">{html.escape(text)}</div>'


class DicomActions:
    """Handlers behind "Download DICOM (SR + SC)" and "Send to PACS"; ``ui`` is the page's ``SpineUI``."""

    def __init__(self, ui: Any, pacs: PacsConfig | None = None) -> None:
        self.ui = ui
        self.pacs = pacs if pacs is not None else PacsConfig.from_env()
        self._processed = None

    @property
    def pacs_enabled(self) -> bool:
        return bool(self.pacs.url)

    def outputs(self, key: str | None):
        """The DICOM objects of the study the page shows (re-analysed from the held upload when needed)."""
        from spine_ui.services.dicom_out import outputs_for

        data = self.ui.recent.get(key) if key else None
        if data is None:
            raise InputError("No analysed study is held for this page any more: upload it again.")
        a = self.ui.analyzer.cached(key)
        if a is None or a.triage is None:
            a = self.ui.analyzer.analyze(data, options=AnalysisOptions())
        if not a.accepted or a.triage is None:
            raise InputError("This image was rejected, so there is no result to export.")
        return outputs_for(a, data)

    def on_download(self, key: str | None) -> Iterator[tuple[Any, str]]:
        workdir = Path(tempfile.mkdtemp(prefix="spinexr-dicom-"))
        try:
            try:
                out = self.outputs(key)
            except InputError as exc:
                yield gr.update(value=None, visible=False), _status(exc.user_message, False)
                return
            except Exception as exc:  # noqa: BLE001 - never a traceback to the page; the type only in the log
                log.error("DICOM export failed (%s).", type(exc).__name__)
                yield gr.update(value=None, visible=False), _status("The DICOM export failed.", False)
                return
            path = workdir / ZIP_NAME
            with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
                for name, ds in out.datasets():
                    part = workdir / name
                    ds.save_as(part, enforce_file_format=True)
                    zf.write(part, name)
                    part.unlink()
            n = len(out.datasets())
            yield (gr.update(value=str(path), visible=True),
                   _status(f"DICOM ready: 1 structured report + {n - 1} image(s).", True))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    @property
    def processed(self):
        """The PACS loop's processed-instance log (``PacsConfig.state_path``), opened on first use."""
        if self._processed is None:
            from spine_ui.services.pacs import SqliteProcessedLog

            self._processed = SqliteProcessedLog(self.pacs.state_path)
        return self._processed

    def _source_uid(self, key: str | None) -> str | None:
        from spine_ui.services.pacs.worklist import source_uid

        data = self.ui.recent.get(key) if key else None
        return source_uid(data, key) if data is not None else None

    def stored_html(self, key: str | None) -> str:
        """Whether this result is already in the PACS (sent from the page or by the PACS loop); '' without one."""
        if not self.pacs_enabled or not key:
            return ""
        from spine_ui.services.pacs.loop import bundle_id
        from spine_ui.services.pacs.worklist import was_stored

        uid = self._source_uid(key)
        if uid is None:
            return ""
        if was_stored(self.processed, uid, bundle_id(self.ui.analyzer)):
            return _status(STORED_NOTE, True)
        return '<div class="sx-hint" role="status">Not sent to the PACS yet.</div>'

    def on_send(self, key: str | None) -> str:
        """STOW-RS the SR + SC into the study, once: a result the log says is stored is not sent again."""
        if not self.pacs_enabled:
            return _status("No PACS is configured (SPINE_DICOMWEB_URL).", False)
        from spine_ui.services.pacs import PacsClient
        from spine_ui.services.pacs.loop import bundle_id
        from spine_ui.services.pacs.worklist import send_once

        try:
            uid = self._source_uid(key)
            if uid is None:
                raise InputError("No analysed study is held for this page any more: upload it again.")
            sent = send_once(PacsClient(self.pacs), self.processed, uid, bundle_id(self.ui.analyzer),
                             lambda: self.outputs(key))
        except (InputError, PacsError) as exc:
            return _status(f"Not stored: {exc.user_message}", False)
        except Exception as exc:  # noqa: BLE001
            log.error("Sending to the PACS failed (%s).", type(exc).__name__)
            return _status("Not stored: sending to the PACS failed.", False)
        if sent.already:
            return _status(f"{STORED_NOTE} Not sent again.", True)
        return _status(f"Stored in the PACS: {sent.objects} objects (SR + Secondary Capture) in the study.", True)
