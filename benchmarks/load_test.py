"""Load test on loopback: start the app (``python app.py``) on a free 127.0.0.1 port, run N concurrent
gradio_client users against the named ``/analyze`` endpoint for a fixed number of requests, then stop it.

    .venv/bin/python benchmarks/load_test.py --users 20 --requests 200
    .venv/bin/python benchmarks/load_test.py --users 4 --requests 24 --bundle small   # quick look

Every good request sends a synthetic spine DICOM (JPEG 2000, 12-bit, VinDr-like) made unique per request (a
new SOP Instance UID), so the app's content-hash cache never answers it; every ``--bad-every``-th request
sends an unreadable file (text named .png, truncated DICOM, PNG header claiming 100000 x 100000 pixels, empty
file), which must come back as an error finding. Recorded: failed requests (exceptions, HTTP errors, time-outs,
wrong answers), latency p50/p95/max, throughput, and the server's RSS over time (psutil, the server process and
its children) as each request completes, with a growth check: RSS after the first ``--window`` requests
against RSS at the end (each the median of 10 completions around that point) must not grow by more than
``--max-growth-mb``; the slope after the first window is reported too.

Bounded: the run stops taking new requests after ``--timeout`` seconds and every request waits at most until
then. It prints a summary and writes JSON (``--json``, default benchmarks/results/load_test.json); exit 0 when
there were no failures, no time-out and RSS did not grow by more than ``--max-growth-mb``. Nothing but
127.0.0.1 is contacted; the app uses its own temporary gradio cache, removed afterwards.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import spine_ui  # noqa: E402,F401  (offline environment first)

BAD_KINDS = ("text_png", "truncated_dicom", "huge_png", "empty")
UID_BASE = 10**38  # UIDs 2.25.<39 digits, no leading zero>: the same length for every request


@dataclass
class Result:
    index: int
    kind: str  # "good" or one of BAD_KINDS
    ok: bool
    latency_s: float
    done_at_s: float
    rss_mb: float
    error: str = ""


@dataclass
class Inputs:
    folder: Path
    good_template: bytes
    template_uid: bytes
    bad: dict[str, Path] = field(default_factory=dict)

    def good_file(self, index: int) -> Path:
        """A copy of the template DICOM with a unique SOP Instance UID (same length, so nothing shifts)."""
        uid = f"2.25.{UID_BASE + index + 1}".encode()
        path = self.folder / f"study-{index:06d}.dcm"
        path.write_bytes(self.good_template.replace(self.template_uid, uid))
        return path


def make_inputs(folder: Path, height: int) -> Inputs:
    import struct
    import zlib

    from spine_ui.synth.dicom_writer import write_dicom
    from spine_ui.synth.phantom import render_spine, to_stored

    folder.mkdir(parents=True, exist_ok=True)
    img, _ = render_spine(np.random.default_rng(7), ["Osteophytes", "Surgical implant"], height=height)
    template_uid = f"2.25.{UID_BASE}"
    path = write_dicom(folder / "template.dcm", to_stored(img, 12, monochrome1=True), bits_stored=12,
                       photometric="MONOCHROME1", transfer_syntax="jpeg2000", modality="DX", body_part="LSPINE",
                       extra={"SOPInstanceUID": template_uid})
    data = path.read_bytes()
    assert data.count(template_uid.encode()) >= 1
    inputs = Inputs(folder, data, template_uid.encode())

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    bad = {
        "text_png": b"This is a text file with a .png name, not an image.\n" * 20,
        "truncated_dicom": data[: len(data) // 2],
        "huge_png": b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0))
                    + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""),
        "empty": b"",
    }
    names = {"text_png": "scan.png", "truncated_dicom": "cut.dcm", "huge_png": "huge.png", "empty": "empty.dcm"}
    for kind, payload in bad.items():
        p = folder / names[kind]
        p.write_bytes(payload)
        inputs.bad[kind] = p
    return inputs


# ---- server ---------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, work: Path, env_extra: dict[str, str], startup_timeout: float
                 ) -> tuple[subprocess.Popen, Path]:
    log_path = work / "server.log"
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_TEMP_DIR": str(work / "gradio"), "PYTHONUNBUFFERED": "1", **env_extra}
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + startup_timeout
    url = f"http://127.0.0.1:{port}/"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited during start-up (code {proc.returncode}):\n{tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc, log_path
        except OSError:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"the app did not answer within {startup_timeout:.0f} s:\n{tail(log_path)}")


def stop_server(proc: subprocess.Popen) -> None:
    """Stop the app we started (by its own pid): SIGINT (gradio closes cleanly), then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)


def tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class RssMonitor(threading.Thread):
    """Samples the RSS of the server process (and its children) every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self.t0 = time.monotonic()
        self._stop_event = threading.Event()

    def rss_mb(self) -> float:
        import psutil

        try:
            total = self.proc.memory_info().rss
            for child in self.proc.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
            return total / 2**20
        except psutil.Error:
            return float("nan")

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append((round(time.monotonic() - self.t0, 2), round(self.rss_mb(), 1)))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


# ---- users ----------------------------------------------------------------------------------------------

def check_answer(kind: str, result: object) -> str:
    """'' when the endpoint's answer is what this request should get, else what is wrong with it."""
    if not isinstance(result, dict):
        return f"not a finding: {type(result).__name__}"
    if kind == "good":
        if result.get("error") or result.get("verdict") not in ("normal", "abnormal", "rejected"):
            return f"good study not analysed: {result.get('reason')!r}"
        if result.get("accepted") and not 0.0 <= float(result.get("probability", -1)) <= 1.0:
            return "probability out of range"
        return ""
    if result.get("error") is not True or result.get("accepted") is not False or not result.get("reason"):
        return f"bad file ({kind}) not answered with an error finding: {result.get('reason')!r}"
    return ""


def run_users(url: str, inputs: Inputs, users: int, requests: int, bad_every: int, deadline: float,
              monitor: RssMonitor) -> tuple[list[Result], bool]:
    from gradio_client import Client, handle_file

    lock = threading.Lock()
    counter = iter(range(requests))
    results: list[Result] = []
    timed_out = threading.Event()
    t0 = time.monotonic()

    def user(uid: int) -> None:
        try:
            client = Client(url, verbose=False)
        except Exception as exc:  # counted: every request this user would have made fails
            with lock:
                results.append(Result(-1, "connect", False, 0.0, time.monotonic() - t0, monitor.rss_mb(),
                                       f"client: {type(exc).__name__}: {exc}"[:300]))
            return
        while True:
            with lock:
                index = next(counter, None)
            if index is None or timed_out.is_set():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out.set()
                return
            bad = bad_every > 0 and index % bad_every == bad_every - 1
            kind = BAD_KINDS[(index // bad_every) % len(BAD_KINDS)] if bad else "good"
            path = inputs.bad[kind] if bad else inputs.good_file(index)
            start = time.monotonic()
            error = ""
            try:
                job = client.submit(handle_file(str(path)), api_name="/analyze")
                answer = job.result(timeout=remaining)
                error = check_answer(kind, answer)
            except TimeoutError:
                error = "timed out"
                timed_out.set()
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:300]
            finally:
                if not bad:
                    path.unlink(missing_ok=True)
            done = time.monotonic()
            with lock:
                results.append(Result(index, kind, not error, round(done - start, 3), round(done - t0, 2),
                                      round(monitor.rss_mb(), 1), error))

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.monotonic() + 30))
    return results, timed_out.is_set() or any(t.is_alive() for t in threads)


def warm_up(url: str, inputs: Inputs, n: int) -> list[float]:
    """A few sequential good requests (first inference at each input size allocates the runtimes' arenas), so
    the baseline and the first window are measured on a warm server. Their latencies are returned, not counted."""
    from gradio_client import Client, handle_file

    if n <= 0:
        return []
    client = Client(url, verbose=False)
    times = []
    for i in range(n):
        path = inputs.good_file(10**9 + i)
        t = time.monotonic()
        answer = client.predict(handle_file(str(path)), api_name="/analyze")
        times.append(round(time.monotonic() - t, 3))
        path.unlink(missing_ok=True)
        if check_answer("good", answer):
            raise RuntimeError(f"warm-up request failed: {check_answer('good', answer)}")
    return times


# ---- report ---------------------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def latency_stats(values: list[float]) -> dict:
    return {"n": len(values), "p50_s": pct(values, 50), "p95_s": pct(values, 95),
            "max_s": round(max(values), 3) if values else None,
            "mean_s": round(statistics.fmean(values), 3) if values else None}


def summarise(results: list[Result], monitor: RssMonitor, baseline_mb: float, wall_s: float, window: int,
              max_growth_mb: float, args: argparse.Namespace, timed_out: bool) -> dict:
    done = sorted((r for r in results if r.index >= 0), key=lambda r: r.done_at_s)
    failures = [r for r in results if not r.ok]
    w = max(1, min(window, len(done) // 2))
    rss_at = [r.rss_mb for r in done]  # server RSS sampled as each request completed

    def around(i: int, k: int = 5) -> float | None:  # median over a few completions: one in flight adds noise
        part = rss_at[max(0, i - k):i + k]
        return round(statistics.median(part), 1) if part else None

    after_first = around(w - 1)
    end = round(statistics.median(rss_at[-10:]), 1) if rss_at else None
    tail_rss = rss_at[w - 1:]
    slope = (round(float(np.polyfit(np.arange(len(tail_rss)), tail_rss, 1)[0]) * 100, 1)
             if len(tail_rss) >= 20 else None)
    growth = round(end - after_first, 1) if rss_at else None
    rss = {
        "baseline_mb": round(baseline_mb, 1),  # after the warm-up requests, before the load
        "after_first_window_mb": after_first,  # after the first `window` requests (median of 10 around it)
        "end_mb": end,  # after the last request (median of the last 10 completions)
        "growth_mb": growth,
        "growth_ok": growth is not None and growth <= max_growth_mb,
        "slope_mb_per_100_requests": slope,  # least squares over the completions after the first window
        "first_window_median_mb": round(statistics.median(rss_at[:w]), 1) if rss_at else None,
        "last_window_median_mb": round(statistics.median(rss_at[-w:]), 1) if rss_at else None,
        "peak_mb": round(max(s[1] for s in monitor.samples), 1) if monitor.samples else None,
        "window": w,
    }
    step = max(1, len(monitor.samples) // 600)
    return {
        "config": {"users": args.users, "requests": args.requests, "bad_every": args.bad_every,
                   "timeout_s": args.timeout, "bundle": args.bundle or "untrained (default)",
                   "image_height": args.height, "window": window, "max_growth_mb": max_growth_mb,
                   "cache_studies": args.cache_studies or "app default", "warmup": args.warmup},
        "completed": len(done),
        "failed": len(failures),
        "timed_out": timed_out,
        "failures": [asdict(r) for r in failures[:25]],
        "wall_s": round(wall_s, 1),
        "throughput_rps": round(len(done) / wall_s, 3) if wall_s > 0 else None,
        "latency": {"all": latency_stats([r.latency_s for r in done]),
                    "good": latency_stats([r.latency_s for r in done if r.kind == "good"]),
                    "bad": latency_stats([r.latency_s for r in done if r.kind != "good"])},
        "rss": rss,
        "rss_series": monitor.samples[::step],
        "rss_per_completion": [(r.done_at_s, r.rss_mb) for r in done],
        "passed": not failures and not timed_out and rss["growth_ok"] and len(done) == args.requests,
    }


def print_summary(s: dict) -> None:
    c, lat, rss = s["config"], s["latency"], s["rss"]
    print(f"load test: {c['users']} users, {s['completed']}/{c['requests']} requests in {s['wall_s']} s "
          f"({s['throughput_rps']} req/s), bundle {c['bundle']}")
    print(f"  failed requests: {s['failed']}" + ("  (TIMED OUT)" if s["timed_out"] else ""))
    for f in s["failures"][:5]:
        print(f"    #{f['index']} {f['kind']}: {f['error']}")
    for name in ("all", "good", "bad"):
        v = lat[name]
        print(f"  latency {name:<4} n={v['n']:<4} p50 {v['p50_s']} s  p95 {v['p95_s']} s  max {v['max_s']} s")
    print(f"  server RSS: baseline {rss['baseline_mb']} MB, after the first {rss['window']} requests "
          f"{rss['after_first_window_mb']} MB, at the end {rss['end_mb']} MB, peak {rss['peak_mb']} MB; growth "
          f"{rss['growth_mb']} MB ({rss['slope_mb_per_100_requests']} MB per 100 requests after the first "
          f"{rss['window']}) -> {'ok' if rss['growth_ok'] else 'GROWING'}")
    print("PASS" if s["passed"] else "FAIL")


def run(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="spinexr-load-"))
    env_extra: dict[str, str] = {}
    if args.models_dir:
        env_extra["SPINE_MODELS_DIR"] = str(Path(args.models_dir).resolve())
    if args.bundle:
        env_extra["SPINE_BUNDLE"] = args.bundle
    if args.cache_studies:
        env_extra["SPINE_CACHE_STUDIES"] = str(args.cache_studies)
    proc = None
    try:
        inputs = make_inputs(work / "inputs", args.height)
        port = args.port or free_port()
        t_start = time.monotonic()
        proc, log_path = start_server(port, work, env_extra, args.startup_timeout)
        if not args.quiet:
            print(f"app up on 127.0.0.1:{port} after {time.monotonic() - t_start:.1f} s (pid {proc.pid})")
        warm = warm_up(f"http://127.0.0.1:{port}/", inputs, args.warmup)
        monitor = RssMonitor(proc.pid)
        baseline = monitor.rss_mb()
        monitor.start()
        t0 = time.monotonic()
        results, timed_out = run_users(f"http://127.0.0.1:{port}/", inputs, args.users, args.requests,
                                       args.bad_every, t0 + args.timeout, monitor)
        wall = time.monotonic() - t0
        monitor.stop()
        summary = summarise(results, monitor, baseline, wall, args.window, args.max_growth_mb, args, timed_out)
        summary["warmup_s"] = warm
        summary["server_alive"] = proc.poll() is None
        summary["passed"] = summary["passed"] and summary["server_alive"]
        if not summary["passed"]:
            summary["server_log_tail"] = tail(log_path)
        return summary
    finally:
        if proc is not None:
            stop_server(proc)
        shutil.rmtree(work, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=20, help="concurrent gradio_client users (threads)")
    p.add_argument("--requests", type=int, default=200, help="total requests, shared by the users")
    p.add_argument("--bad-every", type=int, default=10, help="every n-th request sends a bad file (0: none)")
    p.add_argument("--timeout", type=float, default=1800.0, help="stop after this many seconds of load")
    p.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for the app to start")
    p.add_argument("--window", type=int, default=50, help="RSS after this many requests is the growth baseline")
    p.add_argument("--max-growth-mb", type=float, default=150.0, help="allowed RSS growth after the first window")
    p.add_argument("--height", type=int, default=1024, help="synthetic radiograph height in pixels")
    p.add_argument("--bundle", help="bundle name under $SPINE_MODELS_DIR (default: the app's, models/untrained)")
    p.add_argument("--models-dir", help="folder holding bundles (sets SPINE_MODELS_DIR for the app)")
    p.add_argument("--cache-studies", type=int, default=8,
                   help="studies the app keeps in memory (SPINE_CACHE_STUDIES; 0: the app's default). The cache "
                        "is bounded by design; a small one fills early so the RSS check sees leaks, not the cache")
    p.add_argument("--warmup", type=int, default=3, help="sequential good requests before the measured load")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "load_test.json")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summary = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    print_summary(summary)
    print(f"  JSON: {args.json}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
