"""The in-process batch engine: analyse items one by one, one row per study; a bad file never stops it."""
from __future__ import annotations

import hashlib
import logging
from typing import Callable, Iterable, Iterator, Sequence

from spine_ui.core.pipeline import Analysis, AnalysisOptions, Analyzer
from spine_ui.errors import BundleError, InputError
from spine_ui.services.batch.intake import Item, read_source
from spine_ui.services.batch.rows import GENERIC_FAILURE, WorklistRow, row_from_finding, safe_name

log = logging.getLogger(__name__)


def analyze_each(analyzer: Analyzer, files: Iterable[Item], options: AnalysisOptions = AnalysisOptions(),
                 progress: Callable[[int, int | None, WorklistRow], None] | None = None
                 ) -> Iterator[tuple[WorklistRow, Analysis | None]]:
    """Like :func:`analyze_batch`, also yielding each study's :class:`Analysis` (None when unreadable)."""
    total = len(files) if isinstance(files, Sequence) else None
    gate = analyzer.bundle.manifest.triage.gate
    for done, (name, source) in enumerate(files, 1):
        study = safe_name(name)
        data: bytes | None = None
        a: Analysis | None = None
        try:
            data = read_source(source, analyzer.decode_cfg)
            a = analyzer.analyze(data, options=options)
            row = row_from_finding(study, a.finding())
        except InputError as exc:
            row = WorklistRow(study, "unreadable", gate=gate, reason=exc.user_message, key=_key(data))
            a = None
        except BundleError:
            raise  # the model bundle itself is unusable: no later study would fare better
        except Exception as exc:  # one bad study never stops the batch; log the type only (no names, no content)
            log.error("Worklist analysis of one study failed (%s).", type(exc).__name__)
            row = WorklistRow(study, "unreadable", gate=gate, reason=GENERIC_FAILURE, key=_key(data))
            a = None
        if progress is not None:
            progress(done, total, row)
        yield row, a


def analyze_batch(analyzer: Analyzer, files: Iterable[Item], options: AnalysisOptions = AnalysisOptions(),
                  progress: Callable[[int, int | None, WorklistRow], None] | None = None
                  ) -> Iterator[WorklistRow]:
    """Analyse ``(name, bytes-or-path)`` items one at a time, yielding one row per study as it is done.

    An unreadable file (:class:`InputError`) becomes an ``unreadable`` row with its message; any other failure
    is logged by type and becomes a row with a generic message; either way the batch goes on. Studies already
    analysed (same content) come from the analyzer's cache. ``progress(done, total, row)`` is called after each
    study (``total`` is None when ``files`` has no length)."""
    for row, _a in analyze_each(analyzer, files, options, progress):
        yield row


def _key(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data else None
