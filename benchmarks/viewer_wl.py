"""Window/level for the viewer: server-side render to PNG per adjustment vs a one-time uint16 transfer with the
lookup pass in the browser. Prints both on a 1280 x 3045 12-bit lateral phantom (the size of a real lumbar
lateral), plus the browser's own time per window/level step (headless Chromium, when installed).

    python benchmarks/viewer_wl.py
"""
from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import spine_ui  # noqa: E402,F401
from spine_ui.config import ViewerConfig  # noqa: E402
from spine_ui.core.decode import decode_bytes  # noqa: E402
from spine_ui.core.display import apply_window, client_payload, make_display  # noqa: E402
from spine_ui.synth.dicom_writer import write_dicom  # noqa: E402
from spine_ui.synth.phantom import render_spine, to_stored  # noqa: E402


def best(fn, n: int = 7) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return min(times)


def main() -> None:
    img, _ = render_spine(np.random.default_rng(3), ["Osteophytes"], height=3045, width=1280, view="lateral")
    stored = to_stored(np.clip(img + np.random.default_rng(4).normal(0, 0.01, img.shape), 0, 1), 12)
    buf = io.BytesIO()
    path = Path("/tmp/viewer_wl_bench.dcm")
    write_dicom(path, stored, bits_stored=12, transfer_syntax="explicit")
    study = decode_bytes(path.read_bytes())
    out: dict = {"study": f"{stored.shape[1]} x {stored.shape[0]}, 12-bit"}
    full = make_display(study, ViewerConfig(max_side=4096))
    copy = make_display(study, ViewerConfig())
    out["make_display_ms"] = round(best(lambda: make_display(study), 3), 1)
    for name, disp in (("server_full_res", full), ("server_2048_copy", copy)):
        c, w = disp.presets[0].center, disp.presets[0].width
        png = cv2.imencode(".png", apply_window(disp, c, w))[1]
        out[name] = {"window_ms": round(best(lambda: apply_window(disp, c, w)), 1),
                     "window_plus_png_ms": round(best(lambda: cv2.imencode(".png", apply_window(disp, c, w))), 1),
                     "png_bytes_per_step": int(png.size), "size": list(disp.shape)}
    payload = client_payload(copy)
    out["client_once"] = {"payload_ms": round(best(lambda: client_payload(copy), 3), 1),
                          "payload_bytes": len(payload["data"]), "size": list(copy.shape),
                          "raw_uint16_bytes": copy.nbytes}
    out["client_step_ms"] = browser_step_ms(payload)
    print(json.dumps(out, indent=2))


def browser_step_ms(payload: dict) -> float | None:
    """Median time of one window/level step of viewer.js in headless Chromium (None without Chromium)."""
    if not Path("/usr/bin/chromium").exists():
        return None
    from playwright.sync_api import sync_playwright

    from spine_ui.ui.viewer import CSS, JS, TEMPLATE

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        pg = b.new_page(viewport={"width": 1440, "height": 1000})
        pg.set_content(f"<style>#h {{ {CSS} }}</style><div id='h'>{TEMPLATE}</div>")
        pg.evaluate("([js, v]) => new Function('element', 'props', 'watch', js)(document.getElementById('h'),"
                    " {value: v}, null)", [JS, {"key": "b", "image": payload, "lesions": [], "cams": []}])
        pg.wait_for_function("document.querySelector('.sxv').dataset.ready === '1'")
        ms = pg.evaluate("""async () => { const v = document.getElementById('h').sxViewer; const t = [];
            for (let i = 0; i < 15; i++) { const t0 = performance.now(); v.setWindow(1000 + 100 * i, 2000, false);
              await new Promise(r => requestAnimationFrame(() => r())); t.push(performance.now() - t0); }
            t.sort((a, b) => a - b); return t[7]; }""")
        b.close()
    return round(ms, 1)


if __name__ == "__main__":
    main()
