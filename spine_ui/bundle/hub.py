"""Optional download of a published bundle from a Hugging Face model repo (``SPINE_BUNDLE_REPO``).

Offline (``HF_HUB_OFFLINE=1``, the default here) it only looks in huggingface_hub's local cache and fails
fast with a clear message; the caller then uses what is local."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from spine_ui.errors import HubUnavailableError
from spine_ui.bundle.manifest import MANIFEST

log = logging.getLogger(__name__)
PATTERNS = ["manifest.json", "*.onnx", "*.pt", "*.npz", "*.yaml"]


def download_bundle(repo_id: str, dest: Path, revision: str | None = None, timeout_s: float = 20.0) -> Path:
    """Fetch ``repo_id`` into ``dest``; raises HubUnavailableError when it cannot (offline, unreachable)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(int(timeout_s)))
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(int(timeout_s)))
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        path = snapshot_download(repo_id=repo_id, revision=revision, local_dir=str(dest),
                                 allow_patterns=PATTERNS, local_files_only=offline)
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError) as exc:
        raise HubUnavailableError(
            f"Could not download model bundle '{repo_id}' ({'offline mode' if offline else type(exc).__name__}); "
            "using local bundles only.") from exc
    except Exception as exc:  # huggingface_hub raises many HTTP error types; all mean "not available"
        raise HubUnavailableError(f"Could not download model bundle '{repo_id}' ({type(exc).__name__}).") from exc
    if not (Path(path) / MANIFEST).is_file():
        raise HubUnavailableError(f"'{repo_id}' does not contain a SpineXR bundle (no manifest.json).")
    return Path(path)
