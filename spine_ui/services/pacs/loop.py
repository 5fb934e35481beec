"""The PACS loop: QIDO-RS studies -> series -> instances, WADO-RS retrieve, analyse, STOW-RS SR + SC back.

An instance is marked in the :class:`ProcessedLog` only after its SR and SC were stored (or after it was
skipped as non-spine/unreadable), so nothing is done twice and nothing is marked half-stored. Our own output
series (SR, and SC series written by SpineXR Triage) are never analysed. A PACS that is down or failing
ends the current pass with a clear log line (no identifiers); ``run_forever`` waits and tries again.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Iterator

from spine_ui.core.finding import Finding
from spine_ui.core.pipeline import AnalysisOptions, Analyzer
from spine_ui.errors import InputError, PacsError
from spine_ui.services.dicom_out import outputs_for
from spine_ui.services.pacs.client import InstanceRef, PacsClient, _value
from spine_ui.services.pacs.state import ProcessedLog

log = logging.getLogger("spine_ui.pacs")
NON_IMAGE_MODALITIES = {"SR", "KO", "PR", "SEG", "RTSTRUCT", "DOC"}
OUR_SERIES_PREFIX = "SpineXR Triage"


@dataclass(frozen=True)
class StoredResult:
    """One instance analysed and stored back (UIDs and the identity-free finding only)."""

    study_uid: str  # the study the outputs were filed into
    sop_uid: str  # the analysed source instance
    objects: int
    finding: Finding


@dataclass
class RunSummary:
    studies: int = 0
    instances: int = 0
    stored: int = 0
    skipped: int = 0
    unreadable: int = 0
    already: int = 0
    error: str | None = None  # set when the PACS failed and the pass stopped early
    results: list[StoredResult] = field(default_factory=list)

    def line(self) -> str:
        text = (f"PACS pass: {self.studies} studies, {self.instances} instances: {self.stored} stored, "
                f"{self.skipped} skipped (not spine radiographs), {self.unreadable} unreadable, "
                f"{self.already} already done")
        return text + (f"; stopped early: {self.error}" if self.error else "")


def bundle_id(analyzer: Analyzer) -> str:
    man = analyzer.bundle.manifest
    return f"{man.name}@{man.version}"


def _wanted_series(series: dict, modalities: tuple[str, ...]) -> tuple[bool, str]:
    modality = _value(series, "00080060").upper()
    description = _value(series, "0008103E")
    if modality in NON_IMAGE_MODALITIES or description.startswith(OUR_SERIES_PREFIX):
        return False, ""
    if modalities and modality and modality not in modalities:
        log.info("Skipped a %s series (not in the modality filter %s)", modality, ",".join(modalities))
        return False, modality
    return True, modality  # a series without Modality (VinDr-like) is left to the gate


def wanted_instances(client: PacsClient, study_uid: str, modalities: tuple[str, ...] = ()) -> Iterator[InstanceRef]:
    """The study's image instances worth analysing: not our own output series, not SR/KO/PR..., and in the
    modality filter when one is set (series without Modality are left to the radiograph gate)."""
    for series in client.series(study_uid):
        wanted, modality = _wanted_series(series, modalities)
        if wanted:
            yield from client.instances(study_uid, _value(series, "0020000E"), modality)


def process_instance(client: PacsClient, analyzer: Analyzer, processed: ProcessedLog, ref: InstanceRef,
                     options: AnalysisOptions, summary: RunSummary) -> None:
    """Retrieve, analyse, store, then mark one instance (PacsError propagates: the instance stays unmarked)."""
    bid = bundle_id(analyzer)
    data = client.retrieve(ref)
    try:
        a = analyzer.analyze(data, options=options)
    except InputError as exc:
        log.warning("Skipped an unreadable instance: %s", exc.user_message)
        processed.mark(ref.sop_uid, bid, f"unreadable: {exc.user_message}", ref.study_uid)
        summary.unreadable += 1
        return
    finding = a.finding()
    if not finding.accepted or finding.probability is None:
        log.info("Skipped an instance that is not a spine radiograph: %s", finding.reason)
        processed.mark(ref.sop_uid, bid, f"skipped: {finding.reason}", ref.study_uid)
        summary.skipped += 1
        return
    out = outputs_for(a, data)
    objects = [ds for _name, ds in out.datasets()]
    client.store(objects)
    processed.mark(ref.sop_uid, bid, "stored", out.study_uid)
    summary.stored += 1
    summary.results.append(StoredResult(out.study_uid, ref.sop_uid, len(objects), finding))
    log.info("Stored an SR and %d Secondary Capture image(s) (%s, P = %.3f)", len(out.sc), finding.verdict,
             finding.probability)


def run_once(client: PacsClient, analyzer: Analyzer, processed: ProcessedLog, *, since: str | None = None,
             modalities: tuple[str, ...] = (), options: AnalysisOptions = AnalysisOptions()) -> RunSummary:
    """One pass over the PACS. Never raises for PACS failures: the summary's ``error`` says what happened."""
    summary = RunSummary()
    bid = bundle_id(analyzer)
    try:
        for study in client.studies(since=since):
            summary.studies += 1
            for ref in wanted_instances(client, study.study_uid, modalities):
                summary.instances += 1
                if processed.seen(ref.sop_uid, bid):
                    summary.already += 1
                    continue
                process_instance(client, analyzer, processed, ref, options, summary)
    except PacsError as exc:
        summary.error = exc.user_message
        log.error("PACS pass stopped: %s", exc.user_message)
    log.info(summary.line())
    return summary


def run_forever(client: PacsClient, analyzer: Analyzer, processed: ProcessedLog, *, interval_s: float,
                stop: threading.Event | None = None, **kwargs) -> None:
    """``run_once`` every ``interval_s`` seconds until ``stop`` is set (PACS failures only delay the next pass)."""
    stop = stop or threading.Event()
    while not stop.is_set():
        run_once(client, analyzer, processed, **kwargs)
        stop.wait(interval_s)
