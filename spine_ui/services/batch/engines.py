"""Batch engines behind one interface: ``local`` (in process, one study after another) and ``ray`` (a Ray
cluster). An engine takes the expanded items and a :class:`BatchJob` and yields one :class:`BatchResult` per
item as it finishes (in any order; ``index`` is the item's position). :func:`in_input_order` restores the
input order that :func:`spine_ui.services.batch.sort_rows` keeps for ties, so every engine ends in the same
worklist. New engines are added with :func:`register_engine`, not by editing a switch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

from spine_ui.config import ClusterConfig
from spine_ui.core.finding import Finding
from spine_ui.core.pipeline import Analysis, AnalysisOptions, Analyzer
from spine_ui.services.batch import Item, WorklistRow, analyze_each, sort_rows, to_csv


@dataclass(frozen=True)
class BatchJob:
    """What to run: the bundle folder (every worker opens it itself), the runtime and the analysis options.

    ``analyzer`` lets the local engine reuse an open analyzer (the CLI's, the web app's); other engines
    ignore it. ``cluster`` configures the Ray engine (address, workers, restarts)."""

    bundle: Path
    runtime: str = "auto"
    threads: int = 0
    options: AnalysisOptions = AnalysisOptions()
    analyzer: Analyzer | None = None
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


@dataclass(frozen=True)
class BatchResult:
    """One finished item: its position in the input, its row, its finding (None when unreadable) and, from
    the local engine only, the full :class:`Analysis` (images for ``--out``)."""

    index: int
    row: WorklistRow
    finding: Finding | None = None
    analysis: Analysis | None = None


class BatchEngine(Protocol):
    def __call__(self, items: Sequence[Item], job: BatchJob) -> Iterator[BatchResult]:
        """Analyse every item exactly once; yield each result as it finishes."""


ENGINES: dict[str, BatchEngine] = {}


def register_engine(name: str) -> Callable[[BatchEngine], BatchEngine]:
    def wrap(fn: BatchEngine) -> BatchEngine:
        ENGINES[name] = fn
        return fn

    return wrap


def get_engine(name: str) -> BatchEngine:
    """The engine registered under ``name`` (``local`` or ``ray``)."""
    if name not in ENGINES:
        raise ValueError(f"unknown batch engine {name!r}; known: {', '.join(sorted(ENGINES))}")
    return ENGINES[name]


@register_engine("local")
def run_local(items: Sequence[Item], job: BatchJob) -> Iterator[BatchResult]:
    """Today's in-process batch (:func:`spine_ui.services.batch.analyze_each`), in input order."""
    analyzer = job.analyzer
    if analyzer is None:
        from spine_ui.bundle.store import open_bundle

        analyzer = Analyzer(open_bundle(job.bundle, job.runtime, job.threads))
    for index, (row, a) in enumerate(analyze_each(analyzer, items, job.options)):
        yield BatchResult(index, row, a.finding() if a is not None else None, a)


@register_engine("ray")
def run_ray(items: Sequence[Item], job: BatchJob) -> Iterator[BatchResult]:
    """Ray actors on a cluster (``spine_ui.services.batch.ray_engine``; needs the optional ``ray``)."""
    from spine_ui.services.batch.ray_engine import RayBatch

    yield from RayBatch(job.cluster).run(items, job)


def in_input_order(results: Iterable[BatchResult]) -> list[WorklistRow]:
    """The rows by input position (each index once), ready for ``sort_rows``."""
    by_index: dict[int, WorklistRow] = {}
    for r in results:
        by_index.setdefault(r.index, r.row)
    return [by_index[i] for i in sorted(by_index)]


class CsvStream:
    """Writes rows to ``OUT.csv.partial`` as they finish (an interrupted run keeps what was done), then the
    sorted worklist to ``OUT.csv`` (written to a temporary file and renamed) and removes the partial file."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.partial, "w", encoding="utf-8", newline="")
        self._fh.write(to_csv([]))
        self._fh.flush()
        self.results: list[BatchResult] = []

    def add(self, result: BatchResult) -> None:
        self.results.append(result)
        line = to_csv([result.row]).split("\r\n", 1)[1]  # the row without the header
        self._fh.write(line)
        self._fh.flush()

    def finish(self) -> list[WorklistRow]:
        """Write the sorted worklist; returns its rows."""
        self._fh.close()
        rows = sort_rows(in_input_order(self.results))
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(to_csv(rows), encoding="utf-8", newline="")
        os.replace(tmp, self.path)
        self.partial.unlink(missing_ok=True)
        return rows

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


__all__ = ["ENGINES", "BatchEngine", "BatchJob", "BatchResult", "CsvStream", "get_engine",
           "in_input_order", "register_engine", "run_local", "run_ray"]
