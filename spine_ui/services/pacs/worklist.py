"""PACS studies for the UI worklist: recent wanted instances (QIDO-RS) as batch items read lazily (WADO-RS), labelled
without patient identity; a result sent back once (STOW-RS), remembered in the :class:`ProcessedLog`.

Row labels (the decision): the batch engine names a row by its item name, and that name reaches the table, the
exports and (with ``SPINE_STORE_NAMES``) the review database. A PACS row is therefore named only from what the
reading room may see:

* the accession number, only with ``PacsConfig.show_accession`` (``SPINE_PACS_SHOW_ACCESSION=1``);
* the study date as YYYY-MM-DD, only with ``PacsConfig.show_study_date`` (``SPINE_PACS_SHOW_STUDY_DATE=1``);
* without an accession shown: ``PACS study <n> · ref <h>``: ``n`` is the study's place in this fill (newest
  first) and ``h`` the first 6 hex digits of SHA-256 over the Study Instance UID, so one study gets the same
  ref in every fill (a reviewer can recognise it) while the UID itself is never shown or stored.

A study with several wanted images adds `` · image <k>``. Names, patient IDs and birth dates never reach a label.
"""
from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Callable

from spine_ui.config import PacsConfig
from spine_ui.errors import InputError, PacsError
from spine_ui.services.batch import Item
from spine_ui.services.pacs.client import InstanceRef, PacsClient, StudyRef
from spine_ui.services.pacs.loop import wanted_instances
from spine_ui.services.pacs.state import ProcessedLog

STORED = "stored"


@dataclass(frozen=True)
class PacsEntry:
    """One image to analyse from the PACS and the identity-free label its worklist row gets."""

    label: str
    instance: InstanceRef


@dataclass(frozen=True)
class SendOutcome:
    """``already``: the log says this result was stored before (nothing was sent); ``objects``: sent now."""

    already: bool
    objects: int = 0


def since_days(days: float, today: dt.date | None = None) -> str:
    """The QIDO ``StudyDate`` lower bound (YYYYMMDD) ``days`` days before ``today`` (0: today only)."""
    start = (today or dt.date.today()) - dt.timedelta(days=max(0, int(days)))
    return start.strftime("%Y%m%d")


def study_ref(study_uid: str) -> str:
    """A short, stable, non-reversible reference for a study (6 hex digits of SHA-256 of its UID)."""
    return hashlib.sha256(study_uid.encode("utf-8")).hexdigest()[:6]


def study_label(study: StudyRef, number: int, cfg: PacsConfig, image: int | None = None) -> str:
    """The row label of ``study`` (see the module docstring for what may be shown)."""
    parts = []
    accession = study.accession.replace("/", "-").replace("\\", "-").strip() if cfg.show_accession else ""
    if accession:
        parts.append(accession)
    date = study.study_date if cfg.show_study_date else ""
    if len(date) == 8 and date.isdigit():
        parts.append(f"{date[:4]}-{date[4:6]}-{date[6:]}")
    if not accession:
        parts.append(f"PACS study {number} · ref {study_ref(study.study_uid)}")
    if image is not None:
        parts.append(f"image {image}")
    return " · ".join(parts)


def recent_entries(client: PacsClient, cfg: PacsConfig, *, since: str | None, max_studies: int,
                   max_images: int) -> list[PacsEntry]:
    """The newest ``max_studies`` studies since ``since`` (YYYYMMDD) with wanted images (the loop's filter:
    no SR/KO/PR or our own output series, ``cfg.modalities`` when set), at most ``max_images`` images in all.

    All studies since the date are listed (UIDs, dates, accession and modalities only), sorted newest first,
    then cut: a QIDO ``limit`` would return the PACS's first matches, not the newest. Raises ``PacsError``."""
    entries: list[PacsEntry] = []
    number = 0
    for study in client.studies(since=since):
        if number >= max_studies or len(entries) >= max_images:
            break
        if cfg.modalities and study.modalities and not set(study.modalities) & set(cfg.modalities):
            continue
        refs = list(wanted_instances(client, study.study_uid, cfg.modalities))
        if not refs:
            continue
        number += 1
        for k, ref in enumerate(refs, 1):
            entries.append(PacsEntry(study_label(study, number, cfg, k if len(refs) > 1 else None), ref))
    return entries[:max_images]


class _Retrieve:
    """Reads one instance (WADO-RS) when the batch reaches it; a PACS failure becomes that row's reason."""

    def __init__(self, client: PacsClient, ref: InstanceRef) -> None:
        self.client, self.ref = client, ref

    def __call__(self) -> bytes:
        try:
            return self.client.retrieve(self.ref)
        except PacsError as exc:
            raise InputError(f"Not retrieved from the PACS: {exc.user_message}") from exc


def batch_items(client: PacsClient, entries: list[PacsEntry]) -> list[Item]:
    """``(label, reader)`` items for the batch engine, exactly like archive members of an upload."""
    return [(e.label, _Retrieve(client, e.instance)) for e in entries]


def source_uid(data: bytes, key: str | None = None) -> str:
    """The analysed image's SOP Instance UID as the PACS knows it (the ProcessedLog's key); for a file
    without DICOM identity (PNG/JPEG/TIFF) its content hash."""
    from spine_ui.services.dicom_out.source import read_source

    ds = read_source(data)
    uid = str(ds.get("SOPInstanceUID", "") or "") if ds is not None else ""
    return uid or f"sha256:{key or hashlib.sha256(data).hexdigest()}"


def was_stored(processed: ProcessedLog, uid: str, bundle: str) -> bool:
    return processed.status(uid, bundle) == STORED


def send_once(client: PacsClient, processed: ProcessedLog, uid: str, bundle: str,
              build: Callable[[], object]) -> SendOutcome:
    """STOW-RS the SR + SC of one analysed image unless the log says they were stored with this bundle
    (by the UI or the PACS loop); mark it only after the PACS accepted every object. ``build()`` returns the
    :class:`~spine_ui.services.dicom_out.DicomOutputs` (built only when needed). Raises ``PacsError``."""
    if was_stored(processed, uid, bundle):
        return SendOutcome(already=True)
    out = build()
    n = client.store([ds for _name, ds in out.datasets()])
    processed.mark(uid, bundle, STORED, out.study_uid)
    return SendOutcome(already=False, objects=n)


__all__ = ["PacsEntry", "STORED", "SendOutcome", "batch_items", "recent_entries", "send_once", "since_days",
           "source_uid", "study_label", "study_ref", "was_stored"]
