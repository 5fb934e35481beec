"""PACS integration over DICOMweb: QIDO-RS/WADO-RS in, SR + Secondary Capture back with STOW-RS.

``PacsClient`` (client.py) talks to the archive with retries; ``run_once`` / ``run_forever`` (loop.py) is the
pull-analyse-store loop; ``ProcessedLog`` (state.py) remembers what was done; worklist.py lists recent studies
as identity-free batch items for the web app's worklist and sends a result back once.
"""
from spine_ui.services.pacs.client import InstanceRef, PacsClient, StudyRef
from spine_ui.services.pacs.loop import RunSummary, StoredResult, run_forever, run_once
from spine_ui.services.pacs.state import ProcessedLog, SqliteProcessedLog

__all__ = ["InstanceRef", "PacsClient", "ProcessedLog", "RunSummary", "SqliteProcessedLog", "StoredResult",
           "StudyRef", "run_forever", "run_once"]
