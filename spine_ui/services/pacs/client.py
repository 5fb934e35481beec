"""DICOMweb client (dicomweb-client) with auth, TLS verification, timeouts and retries with backoff.

Every call that fails for a transient reason (connection refused/reset, timeout, HTTP 5xx, 429) is retried
``retries`` times with exponential backoff; then :class:`~spine_ui.errors.PacsUnavailableError` is raised.
Log lines name the operation and the failure type only - never URLs with query filters, UIDs or identity.
"""
from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from spine_ui.config import PacsConfig
from spine_ui.errors import PacsStoreError, PacsUnavailableError

log = logging.getLogger("spine_ui.pacs")
T = TypeVar("T")
_TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class StudyRef:
    """A study as QIDO-RS lists it. ``study_date`` / ``accession`` are only shown when configured on."""

    study_uid: str
    study_date: str = ""
    accession: str = ""
    modalities: tuple[str, ...] = ()


@dataclass(frozen=True)
class InstanceRef:
    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str = ""


def _value(item: dict, tag: str) -> str:
    vals = (item.get(tag) or {}).get("Value") or []
    return str(vals[0]) if vals else ""


def _values(item: dict, tag: str) -> tuple[str, ...]:
    return tuple(str(v) for v in ((item.get(tag) or {}).get("Value") or []))


def make_session(cfg: PacsConfig) -> requests.Session:
    """A requests session with basic or bearer auth and TLS verification (on unless configured off)."""
    session = requests.Session()
    if cfg.token:
        session.headers["Authorization"] = f"Bearer {cfg.token}"
    elif cfg.user:
        session.auth = (cfg.user, cfg.password or "")
    session.verify = cfg.ca_bundle or cfg.verify_tls
    return session


class PacsClient:
    """QIDO/WADO/STOW-RS against one DICOMweb root, with retries. ``sleep`` is injectable for tests."""

    def __init__(self, cfg: PacsConfig, url: str | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.cfg = cfg
        self.url = (url or cfg.url or "").rstrip("/")
        if not self.url:
            raise ValueError("no DICOMweb URL configured (SPINE_DICOMWEB_URL or --dicomweb)")
        self._sleep = sleep
        self._client = DICOMwebClient(self.url, session=make_session(cfg), timeout=cfg.timeout_s)
        self._client.set_http_retry_params(retry=False)  # our own retry loop logs and backs off

    # --- retry ------------------------------------------------------------------------------------------
    def call(self, op: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with retries on transient failures; raise :class:`PacsUnavailableError` at the end."""
        attempts = max(1, self.cfg.retries + 1)
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except requests.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else 0
                if status not in _TRANSIENT_HTTP:
                    raise PacsUnavailableError(f"The PACS refused {op} (HTTP {status}).") from exc
                why = f"HTTP {status}"
            except (requests.ConnectionError, requests.Timeout) as exc:
                why = type(exc).__name__
            if attempt == attempts:
                log.warning("PACS %s failed after %d attempts (%s); giving up for now", op, attempts, why)
                raise PacsUnavailableError(f"The PACS is not reachable for {op} ({why}) after {attempts} "
                                           "attempts; nothing was stored.")
            delay = min(self.cfg.backoff_s * 2 ** (attempt - 1), 60.0)
            log.warning("PACS %s failed (%s), attempt %d of %d; retrying in %.1f s", op, why, attempt, attempts,
                        delay)
            self._sleep(delay)
        raise AssertionError("unreachable")

    # --- QIDO-RS ----------------------------------------------------------------------------------------
    def studies(self, since: str | None = None, limit: int | None = None) -> list[StudyRef]:
        """Studies (optionally with StudyDate >= ``since``, YYYYMMDD), newest first as the PACS returns them."""
        filters: dict[str, Any] = {"StudyDate": f"{since}-"} if since else {}
        fields = ["StudyDate", "AccessionNumber", "ModalitiesInStudy"]
        items = self.call("study query (QIDO-RS)", lambda: self._client.search_for_studies(
            search_filters=filters, fields=fields, limit=limit))
        out = [StudyRef(_value(i, "0020000D"), _value(i, "00080020"), _value(i, "00080050"), _values(i, "00080061"))
               for i in items]
        return sorted(out, key=lambda s: s.study_date, reverse=True)

    def series(self, study_uid: str) -> list[dict]:
        return self.call("series query (QIDO-RS)", lambda: self._client.search_for_series(
            study_instance_uid=study_uid, fields=["Modality", "SeriesDescription", "SeriesNumber"]))

    def instances(self, study_uid: str, series_uid: str, modality: str = "") -> list[InstanceRef]:
        items = self.call("instance query (QIDO-RS)", lambda: self._client.search_for_instances(
            study_instance_uid=study_uid, series_instance_uid=series_uid))
        return [InstanceRef(study_uid, series_uid, _value(i, "00080018"), modality) for i in items]

    # --- WADO-RS / STOW-RS ------------------------------------------------------------------------------
    def retrieve(self, ref: InstanceRef) -> bytes:
        """The instance as DICOM Part-10 bytes."""
        ds = self.call("retrieve (WADO-RS)", lambda: self._client.retrieve_instance(
            ref.study_uid, ref.series_uid, ref.sop_uid))
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    def store(self, datasets: Sequence[Dataset]) -> int:
        """STOW-RS the objects; raise :class:`PacsStoreError` when the PACS reports any failed instance."""
        resp = self.call("store (STOW-RS)", lambda: self._client.store_instances(list(datasets)))
        failed = resp.get("FailedSOPSequence") if resp is not None else None
        if failed:
            raise PacsStoreError(f"The PACS refused {len(failed)} of {len(datasets)} objects (STOW-RS).")
        return len(datasets)

    def count_instances(self, study_uid: str) -> int:
        """Instances in a study (QIDO-RS), e.g. to see nothing was stored twice."""
        return len(self.call("instance query (QIDO-RS)",
                             lambda: self._client.search_for_instances(study_instance_uid=study_uid)))
