"""A real Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) on 127.0.0.1 with its own storage, for tests."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import requests

from uihelpers import free_port

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_missing() -> str | None:
    """Why Orthanc tests cannot run here, or None."""
    if shutil.which("Orthanc") is None:
        return "Orthanc is not installed (Debian package orthanc)"
    if not DICOMWEB_PLUGIN.exists():
        return "Orthanc's DICOMweb plugin is not installed (Debian package orthanc-dicomweb)"
    return None


class OrthancServer:
    """Start/stop an Orthanc whose storage and index live in ``folder`` (kept across restarts)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.http_port = free_port()
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "spine-test", "HttpPort": self.http_port, "DicomPort": free_port(),
            "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
            "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpTimeout": 10,
        }))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self, timeout: float = 30.0) -> None:
        log = open(self.folder / "orthanc.log", "ab")
        self.proc = subprocess.Popen(["Orthanc", str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.folder)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}: see {self.folder / 'orthanc.log'}")
            try:
                if requests.get(f"{self.url}/system", timeout=1).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("Orthanc did not answer /system in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def upload(self, path: Path) -> str:
        """Store a file through Orthanc's REST API; returns the study's DICOM UID."""
        r = requests.post(f"{self.url}/instances", data=path.read_bytes(), timeout=30)
        r.raise_for_status()
        study = requests.get(f"{self.url}/studies/{r.json()['ParentStudy']}", timeout=10).json()
        return study["MainDicomTags"]["StudyInstanceUID"]

    def series_of(self, study_uid: str) -> list[dict]:
        r = requests.get(f"{self.dicomweb}/studies/{study_uid}/series", timeout=10)
        r.raise_for_status()
        return r.json() if r.content else []

    def instance_count(self) -> int:
        return int(requests.get(f"{self.url}/statistics", timeout=10).json()["CountInstances"])


def serve_orthanc(folder: Path):
    """A module fixture's body: skip without Orthanc, else start one in ``folder``, yield it, stop it."""
    import pytest

    why = orthanc_missing()
    if why:
        pytest.skip(why)
    server = OrthancServer(folder)
    server.start()
    yield server
    server.stop()
