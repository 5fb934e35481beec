"""Archive triage throughput: the in-process batch (baseline) vs the Ray engine with 1 and 2 local workers, on
the same folder in the same run, plus three ways of reading the files (in process, Ray tasks, Ray Data).

    python benchmarks/ray_batch.py                       # 24 synthetic 1024-px JPEG2000 DICOMs, full bundle
    python benchmarks/ray_batch.py --n 8 --bundle DIR    # smaller / another bundle

Each engine runs the CLI's default analysis (5-view TTA, YOLO11 on abnormal studies, Grad-CAM). Reported per
engine: start-up (cluster + actors opening the bundle; for the local engine opening the bundle), the time from
the first study submitted to the last row (``batch_s``), studies per second over that span and end to end,
and the per-study cost (``batch_s`` x cores used / studies). Every engine's sorted CSV must equal the
baseline's (the script exits 1 otherwise). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import spine_ui  # noqa: E402,F401  (offline environment first)
from spine_ui.config import ClusterConfig, RuntimeConfig  # noqa: E402
from spine_ui.core.pipeline import AnalysisOptions  # noqa: E402
from spine_ui.services.batch import expand_inputs, sort_rows, to_csv  # noqa: E402
from spine_ui.services.batch.engines import BatchJob, get_engine, in_input_order  # noqa: E402


def write_folder(folder: Path, n: int, height: int) -> Path:
    import numpy as np

    from spine_ui.synth.dicom_writer import write_dicom
    from spine_ui.synth.phantom import render_spine, to_stored

    folder.mkdir(parents=True, exist_ok=True)
    lesions = [(), ("Surgical implant",), ("Osteophytes", "Vertebral collapse")]
    for i in range(n):
        path = folder / f"IM{i:04d}.dcm"
        if not path.exists():
            img, _ = render_spine(np.random.default_rng(100 + i), list(lesions[i % 3]), height=height)
            write_dicom(path, to_stored(img, 12, monochrome1=True), bits_stored=12, photometric="MONOCHROME1",
                        transfer_syntax="jpeg2000", modality="DX")
    return folder


def timed_run(engine: str, items, job: BatchJob, batch=None) -> dict:
    """Wall time to the last row and to the first row (for Ray including its start-up)."""
    t0 = time.perf_counter()
    first = None
    results = []
    stream = batch.run(items, job) if batch is not None else get_engine(engine)(items, job)
    for r in stream:
        if first is None:
            first = time.perf_counter()
        results.append(r)
    total = time.perf_counter() - t0
    return {"results": results, "total_s": total, "first_s": (first or t0) - t0}


def ray_reads(paths: list[Path]) -> dict:
    """Reading the files: in one process (what each actor does), one 0-CPU Ray task per file, Ray Data."""
    import ray

    from spine_ui.services.batch.ray_engine import read_item

    t = time.perf_counter()
    sizes = [len(read_item(str(p))) for p in paths]
    plain = time.perf_counter() - t
    read = ray.remote(num_cpus=0)(read_item)
    t = time.perf_counter()
    assert [len(b) for b in ray.get([read.remote(str(p)) for p in paths])] == sizes
    tasks = time.perf_counter() - t
    t = time.perf_counter()
    ds = ray.data.read_binary_files([str(p) for p in paths], include_paths=True)
    assert sorted(len(r["bytes"]) for r in ds.iter_rows()) == sorted(sizes)
    data = time.perf_counter() - t
    return {"files": len(paths), "megabytes": round(sum(sizes) / 2 ** 20, 1), "in_process_s": round(plain, 3),
            "ray_tasks_s": round(tasks, 2), "ray_data_s": round(data, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "ray_batch")
    ap.add_argument("--bundle", type=Path, help="bundle folder (default: the untrained bundle under models/)")
    a = ap.parse_args()
    from spine_ui.bundle.resolve import locate

    bundle = a.bundle or locate(RuntimeConfig.from_env())
    folder = write_folder(a.work / f"dicom{a.height}", a.n, a.height)
    items = expand_inputs([folder])
    cores = os.cpu_count() or 1
    options = AnalysisOptions()  # what `analyze` runs by default
    out: dict = {"studies": len(items), "height": a.height, "cores": cores, "bundle": bundle.name, "runs": {}}

    t = time.perf_counter()
    from spine_ui.bundle.store import open_bundle
    from spine_ui.core.pipeline import Analyzer

    analyzer = Analyzer(open_bundle(bundle, "onnx", cores))
    analyzer.bundle.warm_up()
    startup = time.perf_counter() - t
    base = timed_run("local", items, BatchJob(bundle, "onnx", cores, options, analyzer=analyzer))
    reference = to_csv(sort_rows(in_input_order(base["results"])))
    runs = {"local (in process, %d threads)" % cores: (startup, base, cores)}

    from spine_ui.services.batch.ray_engine import RayBatch

    same = True
    for workers, per in ((1, cores), (cores, 1)):
        batch = RayBatch(ClusterConfig(workers=workers, cpus_per_worker=per))
        run = timed_run("ray", items, BatchJob(bundle, "onnx", per, options), batch)
        same &= to_csv(sort_rows(in_input_order(run["results"]))) == reference
        runs[f"ray, {workers} worker(s) x {per} CPU"] = (batch.startup_s, run, workers * per)
    for label, (start, run, used) in runs.items():
        batch_s = run["total_s"] - (start if label.startswith("ray") else 0.0)
        out["runs"][label] = {"startup_s": round(start, 2), "batch_s": round(batch_s, 2),
                              "first_row_s": round(run["first_s"], 2),
                              "studies_per_s": round(len(items) / batch_s, 3),
                              "studies_per_s_end_to_end": round(len(items) / (batch_s + start), 3),
                              "core_seconds_per_study": round(batch_s * used / len(items), 2)}
    from spine_ui.services.batch.ray_engine import start_local_cluster

    ray = start_local_cluster(cores)
    try:
        out["reads"] = ray_reads([Path(s) for _n, s in items])
    finally:
        ray.shutdown()
    stages: dict[str, list[float]] = {}
    for r in base["results"]:
        for k, v in (r.finding.timings_ms if r.finding is not None else {}).items():
            stages.setdefault(k, []).append(v)
    out["local_stage_ms_mean"] = {k: round(sum(v) / len(v), 1) for k, v in stages.items()}  # per stage that ran
    out["local_stage_runs"] = {k: len(v) for k, v in stages.items()}
    out["same_csv_as_local"] = same
    print(json.dumps(out, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
