"""Find the bundle to serve: ``models/<name>`` locally, else a hub download (if configured), else - for the
name ``untrained`` - create the untrained bundle so a fresh machine still runs."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from spine_ui._io import atomic_dir
from spine_ui.config import RuntimeConfig
from spine_ui.errors import BundleError, HubUnavailableError
from spine_ui.bundle.manifest import MANIFEST
from spine_ui.bundle.store import Bundle, open_bundle

log = logging.getLogger(__name__)


def ensure_untrained(path: Path, force: bool = False, **kwargs) -> Path:
    """Create the untrained bundle at ``path`` atomically (built in a sibling temp dir, then renamed), so no
    reader ever sees a half-written bundle. An existing bundle is kept unless ``force``."""
    from spine_ui.bundle.untrained import init_untrained

    path = Path(path)
    if (path / MANIFEST).is_file() and not force:
        return path
    try:
        with atomic_dir(path, replace=lambda p: force or not (p / MANIFEST).is_file()) as tmp:
            init_untrained(tmp, name=path.name, **kwargs)
    except OSError:  # another process won the race
        if not (path / MANIFEST).is_file():
            raise
    return path


def locate(cfg: RuntimeConfig, create_untrained: bool = True) -> Path:
    path = cfg.models_dir / cfg.bundle_name
    if (path / MANIFEST).is_file():
        return path
    repo = os.environ.get("SPINE_BUNDLE_REPO")
    if repo:
        try:
            from spine_ui.bundle.hub import download_bundle

            return download_bundle(repo, path)
        except HubUnavailableError as exc:
            log.warning("%s", exc)
    if cfg.bundle_name == "untrained" and create_untrained:
        log.warning("No model bundle found: creating the UNTRAINED bundle at %s (results carry no meaning).", path)
        return ensure_untrained(path)
    raise BundleError(f"No model bundle '{cfg.bundle_name}' in {cfg.models_dir}/ (run "
                      "`python -m spine_ui bundle init-untrained` or import/train one).")


def load_default(cfg: RuntimeConfig | None = None, create_untrained: bool = True) -> Bundle:
    """The bundle named by the environment (``SPINE_BUNDLE``, ``SPINE_MODELS_DIR``, ``SPINE_RUNTIME``)."""
    cfg = cfg or RuntimeConfig.from_env()
    return open_bundle(locate(cfg, create_untrained), cfg.runtime, cfg.threads)
