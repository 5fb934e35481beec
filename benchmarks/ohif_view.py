"""What OHIF shows for our SR + SC (issue 14): a manual tool, not part of the pytest run.

Starts Orthanc with its DICOMweb plugin on a free loopback port (``tests/orthanchelpers.py``, temp storage),
stores two synthetic spine studies carrying a synthetic identity, runs ``python -m spine_ui pacs run --once``
so the SR and SC series are filed into them, then serves OHIF's prebuilt viewer (``npm pack @ohif/app``,
``package/dist``) from a loopback HTTP server that also proxies ``/dicom-web/`` to Orthanc (same origin, with
our own ``app-config.js`` in place of the dist's), and drives Debian's Chromium with Playwright: screenshots
of the study list, the Secondary Capture series and the SR series (``docs/ohif_*.png``). Only 127.0.0.1 is
contacted: every other request is aborted and counted.

    npm pack @ohif/app@3.13.2 && tar xzf ohif-app-3.13.2.tgz          # -> package/dist (not committed)
    python benchmarks/ohif_view.py --ohif-dist package/dist [--bundle DIR] [--serve-only]
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import mimetypes
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import spine_ui  # noqa: E402,F401  (offline environment first)
from orthanchelpers import OrthancServer, orthanc_missing  # noqa: E402
from uihelpers import free_port  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]
SR_SERIES = "SpineXR Triage AI report"
SC_SERIES = "SpineXR Triage AI images"
# Synthetic people only: OHIF's study list shows these, and so do the screenshots.
STUDIES = [
    {"view": "AP", "seed": 11, "lesions": ["Osteophytes", "Surgical implant"], "size": (1024, 768),
     "syntax": "explicit", "modality": "DX", "body_part": "LSPINE",
     "extra": {"PatientName": "SYNTHETIC^SPINE A", "PatientID": "SYN-0001", "PatientBirthDate": "19600101",
               "StudyDate": "20250310", "StudyTime": "083000", "AccessionNumber": "SYN-ACC-1",
               "StudyDescription": "Synthetic lumbar spine AP", "SeriesDescription": "L-spine AP (phantom)"}},
    {"view": "lateral", "seed": 23, "lesions": ["Vertebral collapse", "Osteophytes"], "size": (1024, 640),
     "syntax": "jpeg2000", "modality": None, "body_part": None,
     "extra": {"PatientName": "SYNTHETIC^SPINE B", "PatientID": "SYN-0002", "PatientBirthDate": "19700101",
               "StudyDate": "20250311", "StudyTime": "091500", "AccessionNumber": "SYN-ACC-2",
               "StudyDescription": "Synthetic spine lateral (VinDr-like, no Modality)",
               "SeriesDescription": "Lateral (phantom)"}},
]
IDENTITY = [v for s in STUDIES for k, v in s["extra"].items() if k.startswith(("Patient", "Accession"))]
HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
       "transfer-encoding", "upgrade", "content-length"}
TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json",
         ".css": "text/css", ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml", ".woff2": "font/woff2"}


def redact(text: str) -> str:
    for value in IDENTITY:
        text = text.replace(value, "<id>").replace(value.replace("^", " "), "<id>")
    return text


def app_config() -> str:
    """OHIF's ``window.config`` with one DICOMweb data source at this origin's ``/dicom-web`` (WADO-RS
    rendering, bulk data URIs; includefield on, else Orthanc's QIDO answers carry no StudyDescription)."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb", "sourceName": "orthanc",
        "configuration": {
            "friendlyName": "Test Orthanc (loopback)", "name": "orthanc",
            "wadoUriRoot": "@ROOT@", "qidoRoot": "@ROOT@", "wadoRoot": "@ROOT@",
            "qidoSupportsIncludeField": True, "supportsReject": False, "imageRendering": "wadors",
            "thumbnailRendering": "wadors", "enableStudyLazyLoad": True, "supportsFuzzyMatching": False,
            "supportsWildcard": True, "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            "omitQuotationForMultipartRequest": True}}
    config = {"routerBasename": "/", "extensions": [], "modes": [], "customizationService": {},
              "showStudyList": True, "maxNumberOfWebWorkers": 2, "showWarningMessageForCrossOrigin": False,
              "showCPUFallbackMessage": True, "showLoadingIndicator": True, "strictZSpacingForVolumeViewport": True,
              "investigationalUseDialog": {"option": "never"}, "showErrorDetails": "always",
              "defaultDataSourceName": "orthanc", "dataSources": [source]}
    text = json.dumps(config, indent=2).replace('"@ROOT@"', "window.location.origin + '/dicom-web'")
    return f"/* written by benchmarks/ohif_view.py */\nwindow.config = {text};\n"


class Site(ThreadingHTTPServer):
    """OHIF's dist (SPA: unknown paths give index.html), our ``app-config.js``, ``/dicom-web/`` -> Orthanc."""

    daemon_threads = True

    def __init__(self, dist: Path, config: Path, upstream_port: int) -> None:
        self.dist, self.config, self.upstream_port = dist.resolve(), config, upstream_port
        super().__init__(("127.0.0.1", free_port()), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Site

    def log_message(self, *args) -> None:  # quiet: paths carry UIDs, nothing useful for the report
        pass

    def do_GET(self) -> None:
        self._route()

    def do_HEAD(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def _route(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith("/dicom-web/") or path == "/dicom-web":
            return self._proxy()
        if self.command == "POST":
            return self._reply(405, b"", "text/plain")
        if path == "/app-config.js":
            return self._reply(200, self.server.config.read_bytes(), TYPES[".js"])
        target = (self.server.dist / path.lstrip("/")).resolve()
        if not target.is_relative_to(self.server.dist) or not target.is_file():
            target = self.server.dist / "index.html"
        kind = TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        self._reply(200, target.read_bytes(), kind)

    def _reply(self, status: int, body: bytes, kind: str, headers: list[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")  # SharedArrayBuffer for cornerstone3D
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _proxy(self) -> None:
        """Forward to Orthanc with the Host header kept, so its bulk data URIs point back at this origin."""
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        conn = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=120)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as exc:
            return self._reply(502, str(exc).encode(), "text/plain")
        finally:
            conn.close()
        kept = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP | {"content-type"}]
        self._reply(resp.status, data, resp.getheader("Content-Type", "application/octet-stream"), kept)


def store_studies(orthanc: OrthancServer, folder: Path) -> tuple[list[str], dict[str, list]]:
    """Write the synthetic studies, store them in Orthanc, delete the files; returns the study UIDs and the
    phantoms' ground-truth lesion boxes by SOP Instance UID."""
    import pydicom

    from spine_ui.synth.dicom_writer import write_dicom
    from spine_ui.synth.phantom import render_spine, to_stored

    uids, truth = [], {}
    for i, s in enumerate(STUDIES):
        height, width = s["size"]
        img, boxes = render_spine(np.random.default_rng(s["seed"]), s["lesions"], height=height, width=width,
                                  view=s["view"])
        mono1 = s["modality"] is None  # the VinDr-like one: MONOCHROME1, JPEG 2000, no Modality/BodyPart
        path = write_dicom(folder / f"study{i}.dcm", to_stored(img, 12, monochrome1=mono1), bits_stored=12,
                           photometric="MONOCHROME1" if mono1 else "MONOCHROME2", transfer_syntax=s["syntax"],
                           modality=s["modality"], body_part=s["body_part"], window=(2048, 4096),
                           extra={**s["extra"], "ViewPosition": "AP" if s["view"] == "AP" else "LL"})
        truth[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = boxes
        uids.append(orthanc.upload(path))
        path.unlink()
    return uids, truth


class TruthBoxes:
    """An Analyzer whose detector output is replaced by the phantom's ground-truth boxes (confidence 1.0): the
    untrained bundle's detector finds nothing, and an SR without planar ROIs shows OHIF nothing to draw."""

    def __init__(self, analyzer, truth: dict[str, list]) -> None:
        self._analyzer, self._truth = analyzer, truth

    def __getattr__(self, name: str):
        return getattr(self._analyzer, name)

    def analyze(self, data: bytes, *args, **kwargs):
        import dataclasses

        import pydicom

        from spine_ui.config import LESION_CLASSES, display_name
        from spine_ui.core.detect import Lesion

        a = self._analyzer.analyze(data, *args, **kwargs)
        uid = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
        lesions = tuple(Lesion(lab, display_name(lab), LESION_CLASSES.index(lab), 1.0, box)
                        for lab, box in self._truth.get(uid, []))
        return dataclasses.replace(a, detection=dataclasses.replace(a.detection, lesions=lesions))


def run_loop(orthanc: OrthancServer, folder: Path, bundle: str | None, truth: dict[str, list] | None) -> str:
    """One PACS pass (detector always, no TTA); returns its summary line. Without ``truth``: the CLI,
    ``pacs run --once``; with it: ``services.pacs.run_once`` in-process with :class:`TruthBoxes`."""
    if truth is not None:
        from spine_ui.cli.analyze import bundle_from_args
        from spine_ui.config import PacsConfig
        from spine_ui.core.pipeline import AnalysisOptions, Analyzer
        from spine_ui.services.pacs import PacsClient, SqliteProcessedLog, run_once

        analyzer = TruthBoxes(Analyzer(bundle_from_args(argparse.Namespace(bundle=bundle, runtime=None))), truth)
        log = SqliteProcessedLog(folder / "pacs_state.sqlite")
        try:
            summary = run_once(PacsClient(PacsConfig(), orthanc.dicomweb), analyzer, log,
                               options=AnalysisOptions(detect="always", gradcam=True, tta=False))
        finally:
            log.close()
        if summary.error:
            raise SystemExit(f"PACS pass failed: {summary.error}")
        return summary.line()
    cmd = [sys.executable, "-m", "spine_ui", "pacs", "run", "--dicomweb", orthanc.dicomweb, "--once",
           "--detect", "always", "--no-tta", "--state", str(folder / "pacs_state.sqlite")]
    if bundle:
        cmd += ["--bundle", bundle]
    env = {**os.environ, "SPINE_DATA_DIR": str(folder / "data")}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"pacs run failed ({proc.returncode}):\n{redact(proc.stderr)[-3000:]}")
    lines = [ln for ln in proc.stderr.splitlines() if "studies," in ln]
    return redact(lines[-1] if lines else proc.stderr.strip()[-300:])


def describe(orthanc: OrthancServer, study_uid: str) -> list[str]:
    """One line per series (number, modality, description, instances) and the SR's ROI count."""
    from spine_ui.config import PacsConfig
    from spine_ui.services.dicom_out import read_lesions
    from spine_ui.services.pacs import PacsClient

    out = []
    client = PacsClient(PacsConfig(retries=1, timeout_s=30), orthanc.dicomweb)
    for s in sorted(orthanc.series_of(study_uid), key=lambda s: int(s.get("00200011", {}).get("Value", [0])[0])):
        val = lambda tag: (s.get(tag, {}).get("Value") or ["-"])[0]  # noqa: E731
        line = f"series {val('00200011')} {val('00080060')} '{val('0008103E')}' {val('00201209')} instance(s)"
        if val("00080060") == "SR":
            sr = client._client.retrieve_series(study_uid, val("0020000E"))[0]
            rois = read_lesions(sr)
            line += f"; {len(rois)} planar ROI(s): " + ", ".join(f"{r.label} {r.confidence:.2f}" for r in rois)
        out.append(line)
    return out


def save_png(png: bytes, path: Path, limit_kb: int = 300) -> int:
    """Quantised PNG (fewer colours until it fits ``limit_kb``); returns its size in KB."""
    img = Image.open(io.BytesIO(png)).convert("RGB")
    for colors in (128, 64, 32):
        img.quantize(colors=colors, dither=Image.Dither.NONE).save(path, optimize=True)
        if path.stat().st_size <= limit_kb * 1024:
            break
    return path.stat().st_size // 1024


def shoot(args, site: Site, study_uids: list[str], blocked: list[str], notes: list[str]) -> None:
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def gate(route) -> None:
        url = route.request.url
        if url.startswith(("data:", "blob:")) or urlsplit(url).hostname == "127.0.0.1":
            return route.continue_()
        blocked.append(urlsplit(url).hostname or url[:40])
        route.abort()

    def snap(page, name: str, what: str) -> None:
        page.wait_for_timeout(args.settle_ms)
        kb = save_png(page.screenshot(), out / name)
        notes.append(f"{name} ({kb} KB): {what}")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS + args.chromium_arg)
        ctx = browser.new_context(viewport={"width": args.width, "height": args.height}, service_workers="block")
        ctx.route("**/*", gate)
        page = ctx.new_page()
        page.set_default_timeout(args.timeout_s * 1000)
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        notes.append("WebGL: " + str(page.evaluate(WEBGL_PROBE)))

        try:
            page.goto(site.url + "/", wait_until="load")
            page.get_by_text("SPINE B").first.wait_for()  # rows show the synthetic names (no StudyDescription:
            page.get_by_text("SPINE A").first.click()  # see the README); the click opens the study's panel
            snap(page, "ohif_study_list.png", "study list, study A selected")

            page.goto(f"{site.url}/viewer?StudyInstanceUIDs={study_uids[0]}", wait_until="load")
            page.get_by_text(SC_SERIES).first.wait_for()
            page.locator("canvas").first.wait_for()
            _skip_tour(page)
            notes.append("thumbnails: " + " || ".join(t.replace("\n", " | ") for t in page.locator(
                "[data-cy^='study-browser-thumbnail']").all_inner_texts()))
            snap(page, "ohif_viewer_default.png", "viewer as opened (default hanging protocol)")
            _open_series(page, SC_SERIES)
            snap(page, "ohif_sc.png", "Secondary Capture series double-clicked into the viewport")
            _open_series(page, SR_SERIES)
            snap(page, "ohif_sr.png", "SR series double-clicked into the viewport")
            notes.append("visible text in the viewer: " + redact(" | ".join(
                t.strip() for t in page.locator("body").inner_text().splitlines() if t.strip())[:3000]))
        except Exception as exc:  # keep what the page showed: a screenshot and its text
            notes.append(f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            snap(page, "ohif_failed.png", "the page when the step failed")
            notes.append("visible text: " + redact(" | ".join(
                t.strip() for t in page.locator("body").inner_text().splitlines() if t.strip())[:3000]))
            raise
        finally:
            browser.close()
            notes.append(f"console: {len(console)} messages")
            notes.extend("  " + redact(c)[:500] for c in console[:120])


def _skip_tour(page) -> None:
    """OHIF 3.13 starts an 11-step onboarding tour over the viewport on first visit; skip it."""
    skip = page.get_by_text("Skip all")
    try:
        skip.first.wait_for(timeout=10_000)
    except Exception:  # noqa: BLE001  (no tour this time)
        return
    skip.first.click()


def _open_series(page, description: str) -> None:
    """Double-click the study browser thumbnail whose label contains ``description``."""
    thumb = page.locator("[data-cy^='study-browser-thumbnail']").filter(has_text=description).first
    thumb.wait_for()
    thumb.dblclick()


WEBGL_PROBE = """() => {
  const c = document.createElement('canvas');
  const gl = c.getContext('webgl2') || c.getContext('webgl');
  if (!gl) return 'no WebGL context';
  const ext = gl.getExtension('WEBGL_debug_renderer_info');
  return (gl instanceof WebGL2RenderingContext ? 'webgl2 ' : 'webgl1 ') +
         (ext ? gl.getParameter(ext.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER));
}"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ohif-dist", required=True, type=Path, help="OHIF's prebuilt dist (index.html, app-config.js)")
    ap.add_argument("--bundle", help="bundle name or folder for the PACS loop (default: the CLI's default)")
    ap.add_argument("--boxes", choices=("truth", "detector"), default="truth",
                    help="truth (default): the loop runs in-process with the phantoms' ground-truth boxes in "
                         "place of the detector's; detector: `pacs run --once` exactly as shipped")
    ap.add_argument("--out", default=str(ROOT / "docs"), help="screenshot folder (default docs/)")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--chromium-arg", action="append", default=[], help="extra Chromium flag (repeatable), "
                    "e.g. --chromium-arg=--use-angle=swiftshader")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=800)
    ap.add_argument("--settle-ms", type=int, default=4000, help="wait before each screenshot")
    ap.add_argument("--timeout-s", type=int, default=120)
    ap.add_argument("--serve-only", action="store_true", help="no browser: print the URL and serve until Ctrl-C")
    args = ap.parse_args(argv)
    if not (args.ohif_dist / "index.html").is_file():
        ap.error(f"{args.ohif_dist} has no index.html (unpack `npm pack @ohif/app` and pass package/dist)")
    if why := orthanc_missing():
        ap.error(why)

    tmp = Path(tempfile.mkdtemp(prefix="ohif-view-"))
    orthanc = OrthancServer(tmp)
    site = None
    try:
        orthanc.start()
        study_uids, truth = store_studies(orthanc, tmp)
        print("pacs run:", run_loop(orthanc, tmp, args.bundle, truth if args.boxes == "truth" else None))
        for i, uid in enumerate(study_uids):
            for line in describe(orthanc, uid):
                print(f"study {i + 1}: {line}")
        (tmp / "app-config.js").write_text(app_config())
        site = Site(args.ohif_dist, tmp / "app-config.js", orthanc.http_port)
        threading.Thread(target=site.serve_forever, daemon=True).start()
        if args.serve_only:
            print(f"OHIF: {site.url}/  (Ctrl-C stops)")
            threading.Event().wait()
        blocked: list[str] = []
        notes: list[str] = []
        try:
            shoot(args, site, study_uids, blocked, notes)
        finally:
            for note in notes:
                print(note)
            hosts = sorted(set(blocked))
            print(f"non-loopback requests blocked: {len(blocked)}" + (f" ({', '.join(hosts)})" if hosts else ""))
    except KeyboardInterrupt:
        pass
    finally:
        if site is not None:
            site.shutdown()
        orthanc.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
