"""Many users at once, measured in one run on this machine (each figure next to its baseline):

(a) user B's first answer (decode + gate + triage + boxes + Grad-CAM of a fresh study) alone, and while user
    A's LIME runs, with 0, 1 and 4 other users' first answers queued; in-process against the scheduler.
    Baseline: the previous serving model, one analysis slot for whole requests (gradio's
    ``concurrency_id="analysis"``, limit 1), where B waits for A's whole LIME.
(b) the whole review (first answer + LIME at the bundle's sample count) of one 1280 x 3045 12-bit JPEG 2000
    phantom DICOM, LIME fp32 (onnxruntime) vs bf16 (OpenVINO), and its decode with imagecodecs vs pydicom.
(c) the 20-user load test (``benchmarks/load_test.py``) against the app on 127.0.0.1: p50/p95 first-answer
    latency and failures; with ``--baseline-root DIR`` the same load test first runs against the app of
    another checkout (e.g. the main branch) as the baseline.

    .venv/bin/python benchmarks/concurrency.py                        # (a), (b), (c) with 100 requests
    .venv/bin/python benchmarks/concurrency.py --parts a,b --reps 3
    .venv/bin/python benchmarks/concurrency.py --parts c --load-requests 100 --baseline-root /work/main
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import spine_ui  # noqa: E402,F401  (offline environment first)
from spine_ui.core.pipeline import AnalysisOptions, Analyzer  # noqa: E402

FIRST = AnalysisOptions(detect="always", gradcam=True, explain_normal=True)  # the full first answer
UID_BASE = 10**38


class Studies:
    """Unique copies of one phantom DICOM (a new SOP Instance UID each, so no cache ever answers)."""

    def __init__(self, height: int, width: int) -> None:
        import cv2

        from spine_ui.synth.dicom_writer import write_dicom
        from spine_ui.synth.phantom import render_spine, to_stored

        img, _ = render_spine(np.random.default_rng(11), ["Osteophytes", "Surgical implant"], height=height)
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
        self.uid = f"2.25.{UID_BASE}"
        with tempfile.TemporaryDirectory() as d:
            path = write_dicom(Path(d) / "t.dcm", to_stored(img, 12, monochrome1=True), bits_stored=12,
                               photometric="MONOCHROME1", transfer_syntax="jpeg2000", modality="DX",
                               body_part="LSPINE", extra={"SOPInstanceUID": self.uid})
            self.template = path.read_bytes()
        self.shape = img.shape
        self._n = iter(range(1, 10**9))
        self._lock = threading.Lock()

    def new(self) -> bytes:
        with self._lock:
            i = next(self._n)
        return self.template.replace(self.uid.encode(), f"2.25.{UID_BASE + i}".encode())


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def med(values: list[float]) -> float:
    return float(statistics.median(values))


# ---- (a) ------------------------------------------------------------------------------------------------

def start_lime(analyzer: Analyzer, studies: Studies, token=None, slot: threading.Lock | None = None):
    """User A: first answer (untimed), then LIME at the bundle's sample count in a thread; returns once
    LIME has scored its first batches."""
    a = analyzer.analyze(studies.new(), options=FIRST)
    started = threading.Event()
    errors: list[BaseException] = []

    def run():
        def progress(done: int, total: int) -> None:
            if done >= 32:
                started.set()
        try:
            if slot is not None:
                with slot:
                    analyzer.lime(a, None, progress=progress, token=token)
            else:
                analyzer.lime(a, None, progress=progress, token=token)
        except Exception as exc:  # noqa: BLE001 - a cancelled run ends here
            errors.append(exc)
        finally:
            started.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    started.wait(300)
    return t


def part_a(bundle, studies: Studies, reps: int) -> dict:
    from spine_ui.config import SchedulerConfig
    from spine_ui.services.scheduler import CancelToken, Lane, Scheduler

    out: dict = {}
    # baseline: one slot for whole requests, no scheduler (the previous app)
    slot = threading.Lock()
    plain = Analyzer(bundle, cache_size=64)
    plain.analyze(studies.new(), options=FIRST)  # warm

    def slot_first() -> None:
        with slot:
            plain.analyze(studies.new(), options=FIRST)

    base_alone = [timed(slot_first) for _ in range(reps)]
    t = start_lime(plain, studies, slot=slot)
    base_behind = timed(slot_first)
    t.join()
    out["baseline_one_slot"] = {"alone_s": med(base_alone), "behind_lime_s": base_behind,
                                "ratio": base_behind / med(base_alone)}
    print(f"(a) baseline, one analysis slot: B alone {med(base_alone):.2f} s; behind A's LIME {base_behind:.2f} s "
          f"({base_behind / med(base_alone):.1f}x)", flush=True)

    with Scheduler(SchedulerConfig.from_env()) as sched:
        an = Analyzer(bundle, cache_size=64, scheduler=sched, lime_batch=SchedulerConfig.from_env().lime_batch)
        an.analyze(studies.new(), options=FIRST)  # warm
        alone = [timed(lambda: an.analyze(studies.new(), options=FIRST)) for _ in range(reps)]
        out["scheduler"] = {"alone_s": med(alone), "alone_all_s": alone}
        print(f"(a) scheduler: B alone {med(alone):.2f} s (runs {', '.join(f'{x:.2f}' for x in alone)})", flush=True)
        for queued in (0, 1, 4):
            lat = []
            for _ in range(reps if queued == 0 else 1):
                token = CancelToken()
                t = start_lime(an, studies, token)
                others = [threading.Thread(target=an.analyze, args=(studies.new(),), kwargs={"options": FIRST})
                          for _ in range(queued)]
                before = sched.submitted()[Lane.INTERACTIVE]
                for o in others:
                    o.start()
                deadline = time.monotonic() + 10  # until every other user's first task is in the queue
                while sched.submitted()[Lane.INTERACTIVE] < before + queued and time.monotonic() < deadline:
                    time.sleep(0.002)
                lat.append(timed(lambda: an.analyze(studies.new(), options=FIRST)))
                for o in others:
                    o.join()
                token.cancel("benchmark")  # A's LIME is not needed further
                t.join()
            key = f"behind_lime_{queued}_queued"
            out["scheduler"][key] = {"s": med(lat), "all_s": lat, "ratio": med(lat) / med(alone)}
            print(f"(a) scheduler: B while A's LIME runs, {queued} other users queued: {med(lat):.2f} s "
                  f"({med(lat) / med(alone):.2f}x alone; target <= 1.5x for 0 queued)", flush=True)
    return out


# ---- (b) ------------------------------------------------------------------------------------------------

def part_b(path: Path, studies: Studies, reps: int) -> dict:
    from spine_ui.bundle.store import open_bundle
    from spine_ui.core.decode import decode_bytes

    out: dict = {"image": f"{studies.shape[1]} x {studies.shape[0]}, 12-bit JPEG 2000, MONOCHROME1"}
    data = studies.new()
    dec = {}
    for label, env in (("pydicom (pylibjpeg-openjpeg)", "0"), ("imagecodecs (OpenJPEG, threads)", "")):
        os.environ["SPINE_J2K_THREADS"] = env
        decode_bytes(data)
        dec[label] = med([timed(lambda: decode_bytes(data)) for _ in range(reps)])
    os.environ.pop("SPINE_J2K_THREADS", None)
    out["decode_s"] = dec
    print("(b) decode: " + "; ".join(f"{k} {v * 1000:.0f} ms" for k, v in dec.items()), flush=True)
    for precision in ("fp32", "bf16"):
        bundle = open_bundle(path, "onnx", lime_precision=precision)
        bundle.warm_up()
        an = Analyzer(bundle, cache_size=4)
        an.analyze(studies.new(), options=AnalysisOptions(detect="always", explain_normal=True, lime=True,
                                                          lime_samples=16))  # warm LIME shapes
        whole, parts = [], []
        for _ in range(reps):
            t = time.perf_counter()
            a = an.analyze(studies.new(), options=AnalysisOptions(detect="always", explain_normal=True, lime=True))
            whole.append(time.perf_counter() - t)
            parts.append(dict(a.timings_ms))
        first = med([sum(v for k, v in p.items() if k != "lime") / 1000 for p in parts])
        lime = med([p["lime"] / 1000 for p in parts])
        out[precision] = {"whole_s": med(whole), "first_answer_s": first, "lime_s": lime,
                          "samples": a.lime.n_samples, "timings_ms": parts[-1]}
        print(f"(b) whole review, LIME {precision}: {med(whole):.2f} s (first answer {first:.2f} s + LIME "
              f"{a.lime.n_samples} samples {lime:.2f} s; target <= 15 s)", flush=True)
    return out


# ---- (c) ------------------------------------------------------------------------------------------------

def part_c(requests: int, users: int, baseline_root: Path | None, models_dir: Path | None) -> dict:
    out = {}
    runs = ([("baseline", baseline_root)] if baseline_root else []) + [("this branch", ROOT)]
    for label, root in runs:
        with tempfile.TemporaryDirectory() as d:
            js = Path(d) / "load.json"
            cmd = [sys.executable, str(root / "benchmarks" / "load_test.py"), "--users", str(users), "--requests",
                   str(requests), "--json", str(js), "--max-growth-mb", "100000"]
            if models_dir:
                cmd += ["--models-dir", str(models_dir)]
            env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
            proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
            if not js.exists():
                print(f"(c) {label}: load test did not finish:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
                continue
            s = json.loads(js.read_text())
        good = s["latency"]["good"]
        out[label] = {"completed": s["completed"], "failed": s["failed"], "p50_s": good["p50_s"],
                      "p95_s": good["p95_s"], "max_s": good["max_s"], "throughput_rps": s["throughput_rps"],
                      "peak_rss_mb": s["rss"]["peak_mb"]}
        print(f"(c) load test, {label}: {users} users, {s['completed']}/{requests} answered, {s['failed']} failed; "
              f"first answer p50 {good['p50_s']} s, p95 {good['p95_s']} s, max {good['max_s']} s; "
              f"{s['throughput_rps']} req/s; peak RSS {s['rss']['peak_mb']} MB", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="a,b,c")
    ap.add_argument("--reps", type=int, default=3, help="repeats of each (a) latency")
    ap.add_argument("--review-reps", type=int, default=2, help="repeats of each (b) whole review")
    ap.add_argument("--height", type=int, default=3045)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--load-requests", type=int, default=100)
    ap.add_argument("--load-users", type=int, default=20)
    ap.add_argument("--baseline-root", type=Path, help="another checkout whose app is the load-test baseline")
    ap.add_argument("--models-dir", type=Path, help="bundle folder for the load tests (SPINE_MODELS_DIR)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "concurrency.json")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))

    from spine_ui.bundle.resolve import locate
    from spine_ui.bundle.store import open_bundle
    from spine_ui.config import RuntimeConfig

    cfg = RuntimeConfig.from_env()
    path = locate(cfg)
    print(f"bundle {path.name}, {os.cpu_count()} cores", flush=True)
    out: dict = {}
    studies = Studies(args.height, args.width) if parts & {"a", "b"} else None
    if "a" in parts:
        bundle = open_bundle(path, cfg.runtime, cfg.threads, cfg.lime_precision)
        bundle.warm_up()
        out["a"] = part_a(bundle, studies, args.reps)
    if "b" in parts:
        out["b"] = part_b(path, studies, args.review_reps)
    if "c" in parts:
        out["c"] = part_c(args.load_requests, args.load_users, args.baseline_root, args.models_dir or cfg.models_dir)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
