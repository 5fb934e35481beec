"""The Ray batch engine on one private local cluster (127.0.0.1, 2 CPUs) for the whole module: the same
worklist as the in-process batch, and every row exactly once when a worker is killed mid-run.

Runs on the small 96 px bundle without TTA (fast). Skipped when the optional ``ray`` is not installed
(``pip install -r requirements-extra.txt``)."""
from __future__ import annotations

import os
import signal
import shutil
import time
from pathlib import Path

import pytest

from conftest import write_phantom_dicom

pytest.importorskip("ray", reason="ray is optional: pip install -r requirements-extra.txt")

from spine_ui.config import ClusterConfig  # noqa: E402
from spine_ui.core.pipeline import AnalysisOptions  # noqa: E402
from spine_ui.services.batch import expand_inputs, read_reviews, sort_rows, to_csv  # noqa: E402
from spine_ui.services.batch.engines import BatchJob, CsvStream, get_engine, in_input_order  # noqa: E402

FAST = AnalysisOptions(tta=False)


@pytest.fixture(scope="module")
def cluster():
    from spine_ui.services.batch.ray_engine import start_local_cluster

    ray = start_local_cluster(num_cpus=2, object_store_mb=128)
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Four phantom DICOMs (one in a zip), a colour photo (rejected), a text file and an empty file
    (unreadable)."""
    import zipfile

    import cv2
    from skimage import data

    d = tmp_path_factory.mktemp("archive")
    for i, lesions in enumerate([(), ("Surgical implant",), ("Osteophytes",)]):
        write_phantom_dicom(d / f"IM{i + 1}.dcm", lesions=lesions, seed=10 + i, height=256, modality="DX")
    src = write_phantom_dicom(d / "tmp.dcm", lesions=("Vertebral collapse",), seed=20, height=256)
    with zipfile.ZipFile(d / "more.zip", "w") as zf:
        zf.write(src, "IM10.dcm")
    src.unlink()
    cv2.imwrite(str(d / "holiday.png"), data.astronaut()[:, :, ::-1])
    (d / "scan.png").write_text("this is a text file, not an image\n")
    (d / "empty.dcm").write_bytes(b"")
    return d


def _job(bundle: Path, **cluster) -> BatchJob:
    return BatchJob(bundle=bundle, runtime="onnx", threads=1, options=FAST,
                    cluster=ClusterConfig(**{"workers": 2, **cluster}))


def test_ray_batch_gives_the_local_worklist(cluster, folder, small_bundle_dir, tmp_path):
    items = expand_inputs([folder])
    assert len(items) == 7
    local = to_csv(sort_rows(in_input_order(get_engine("local")(items, _job(small_bundle_dir)))))
    stream = CsvStream(tmp_path / "out" / "ray.csv")
    seen = []
    for result in get_engine("ray")(items, _job(small_bundle_dir)):
        stream.add(result)
        seen.append(result.index)
        assert stream.partial.read_bytes().count(b"\r\n") == len(seen) + 1  # streamed as it finishes
    rows = stream.finish()
    assert sorted(seen) == list(range(len(items)))
    assert not stream.partial.exists()
    assert (tmp_path / "out" / "ray.csv").read_bytes().decode() == local == to_csv(rows)
    by_study = {r.study: r for r in read_reviews(local)}
    assert by_study["holiday.png"].verdict == "rejected" and "colour" in by_study["holiday.png"].reason
    assert by_study["scan.png"].verdict == "unreadable" and "Unsupported file type" in by_study["scan.png"].reason
    assert by_study["empty.dcm"].verdict == "unreadable"
    assert sum(r.accepted for r in by_study.values()) == 4


def test_killed_worker_loses_no_study_and_repeats_none(cluster, folder, small_bundle_dir, tmp_path):
    from spine_ui.services.batch.ray_engine import RayBatch

    many = tmp_path / "many"
    many.mkdir()
    for i in range(12):
        shutil.copy(folder / f"IM{i % 3 + 1}.dcm", many / f"S{i:02d}.dcm")
    shutil.copy(folder / "scan.png", many / "scan.png")
    items = expand_inputs([many])
    batch = RayBatch(ClusterConfig(workers=2, inflight_per_worker=3))
    results, killed = [], None
    for result in batch.run(items, _job(small_bundle_dir)):
        results.append(result)
        if killed is None:  # a worker crashes with studies queued on it
            killed = batch.workers[1]["pid"]
            os.kill(killed, signal.SIGKILL)
        if len(results) == len(items):  # still running: Ray restarted the killed actor in a new process
            restarted = cluster.get(batch.actors[1].info.remote())["pid"]
    assert killed is not None and restarted != killed
    assert sorted(r.index for r in results) == list(range(len(items)))  # every study, none twice
    rows = {r.row.study: r.row for r in results}
    assert rows["scan.png"].verdict == "unreadable"
    assert all(rows[f"S{i:02d}.dcm"].accepted for i in range(12)), [r.reason for r in rows.values()]
    local = to_csv(sort_rows(in_input_order(get_engine("local")(items, _job(small_bundle_dir)))))
    assert to_csv(sort_rows(in_input_order(results))) == local


def test_missing_ray_is_a_clear_error(monkeypatch):
    import builtins

    from spine_ui.errors import EngineUnavailableError
    from spine_ui.services.batch import ray_engine

    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(EngineUnavailableError, match="requirements-extra.txt"):
        ray_engine.import_ray()


def test_cli_engine_ray_writes_the_same_worklist(folder, small_bundle_dir, tmp_path):
    """``analyze DIR --engine ray --csv`` in a subprocess (its own local cluster, 1 worker): the CSV the local
    engine gives, exit 2 for the unreadable files, and no network use beyond 127.0.0.1."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    items = expand_inputs([folder])
    local = to_csv(sort_rows(in_input_order(get_engine("local")(items, _job(small_bundle_dir)))))
    out = tmp_path / "ray.csv"
    net = tmp_path / "net.log"
    env = {**os.environ, "PYTHONPATH": f"{root / 'tests' / 'support'}{os.pathsep}{root}", "SPINE_NET_LOG": str(net),
           "SPINE_RAY_CPUS_PER_WORKER": "1", "SPINE_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "spine_ui", "analyze", str(folder), "--engine", "ray", "--workers",
                           "1", "--runtime", "onnx", "--no-tta", "--quiet", "--bundle", str(small_bundle_dir),
                           "--csv", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "2 of 7 files could not be read" in proc.stderr and "Traceback" not in proc.stderr
    assert out.read_bytes().decode() == local
    assert not (tmp_path / "ray.csv.partial").exists()
    # Every connection went to 127.0.0.1 except the cloud-metadata probes of Ray's own dashboard process (a
    # usage-statistics module that always loads and asks 169.254.169.254 / metadata.google.internal which
    # cloud it runs on, even with usage statistics off); the test's guard refused those.
    probes = ("'169.254.169.254'", "'metadata.google.internal'")
    attempts = net.read_text().splitlines() if net.exists() else []
    assert all(line.endswith(probes) for line in attempts), attempts
