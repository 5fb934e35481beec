"""Screenshots of the viewer at 1440 x 1000 for an AP and a lateral synthetic phantom (docs/viewer_*.png).

Starts ``app.py`` on loopback with the untrained bundle, uploads each phantom with "Always run detector and
explanations", turns the Grad-CAM overlay on, and saves the viewport (quantised PNG, < 400 KB).

    python benchmarks/viewer_screenshots.py
"""
from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import spine_ui  # noqa: E402,F401
from spine_ui.synth.dicom_writer import write_dicom  # noqa: E402
from spine_ui.synth.phantom import render_spine, to_stored  # noqa: E402


def phantom(path: Path, view: str, seed: int, lesions: list[str], height: int, width: int) -> Path:
    img, _ = render_spine(np.random.default_rng(seed), lesions, height=height, width=width, view=view)
    return write_dicom(path, to_stored(img, 12), bits_stored=12, modality="DX", body_part="LSPINE",
                       window=(2048, 4096), extra={"ViewPosition": "AP" if view == "AP" else "LL"})


def main() -> None:
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="shots-"))
    studies = {"ap": phantom(tmp / "ap.dcm", "AP", 11, ["Osteophytes", "Surgical implant"], 1536, 1024),
               "lateral": phantom(tmp / "lat.dcm", "lateral", 23, ["Vertebral collapse", "Osteophytes"], 3045, 1280)}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), SPINE_LIME_SAMPLES="16",
               GRADIO_TEMP_DIR=str(tmp / "gradio"))
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(360):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
            for name, path in studies.items():
                pg = b.new_page(viewport={"width": 1440, "height": 1000})
                pg.set_default_timeout(240_000)
                pg.goto(url)
                pg.get_by_label("Always run detector and explanations").check()
                pg.locator("#sx-upload input[type=file]").set_input_files(str(path))
                pg.wait_for_function("document.querySelector('#sx-viewer .sxv').dataset.ready === '1'")
                pg.wait_for_function("!document.querySelector('#sx-viewer .sxv-cam').disabled")
                viewer = pg.locator("#sx-viewer")
                viewer.get_by_role("checkbox", name="Grad-CAM", exact=True).check()
                viewer.get_by_role("slider", name="Grad-CAM opacity").evaluate(
                    "(e) => { e.value = '30'; e.dispatchEvent(new Event('input', {bubbles: true})); }")
                viewer.scroll_into_view_if_needed()
                pg.evaluate("() => document.querySelector('#sx-viewer').scrollIntoView({block: 'start'})")
                pg.wait_for_timeout(800)
                png = pg.screenshot()
                im = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128, dither=Image.Dither.NONE)
                out = ROOT / "docs" / f"viewer_{name}.png"
                out.parent.mkdir(exist_ok=True)
                im.save(out, optimize=True)
                print(out, out.stat().st_size // 1024, "KB")
                pg.close()
            b.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
