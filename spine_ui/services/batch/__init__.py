"""Triage worklist: many studies at once, sorted by risk, reviewed case by case.

Pure Python over :class:`spine_ui.core.pipeline.Analyzer` (no gradio): the CLI (``analyze DIR --csv``) and the web
app's worklist tab share it.

* :func:`expand_inputs` turns files, folders and ``.zip`` archives into ``(name, source)`` items; archive
  members are read lazily, in memory, never extracted to disk, behind zip-bomb limits (:class:`ArchiveLimits`).
* :func:`analyze_batch` analyses the items one by one and yields one :class:`WorklistRow` per study; an
  unreadable file becomes a row with its message and never stops the batch.
* :func:`sort_rows` puts the most suspicious first; :func:`to_csv` / :func:`to_json` export the rows (with the
  reviewer's marks) and :func:`read_reviews` reads either export back.

A row names its study by the file name only (the basename, never a folder path) and carries no patient
identifiers from the file's content (no DICOM tags, no dates).
"""
from spine_ui.services.batch.engine import analyze_batch, analyze_each
from spine_ui.services.batch.export import read_reviews, to_csv, to_json
from spine_ui.services.batch.intake import (ARCHIVE_SUFFIXES, IMAGE_SUFFIXES, ArchiveLimits, Item, Source,
                                            expand_archive, expand_inputs, expand_upload, is_hidden, looks_like_zip,
                                            read_source, wanted_member)
from spine_ui.services.batch.rows import (COLUMNS, GENERIC_FAILURE, REVIEWS, VERDICTS, WorklistRow, clean_comment,
                                          clean_review, row_from_finding, safe_name, sort_key, sort_rows,
                                          summary_counts, with_review)

__all__ = ["ARCHIVE_SUFFIXES", "COLUMNS", "GENERIC_FAILURE", "IMAGE_SUFFIXES", "REVIEWS", "VERDICTS",
           "ArchiveLimits", "Item", "Source", "WorklistRow", "analyze_batch", "analyze_each", "clean_comment", "clean_review",
           "expand_archive", "expand_inputs", "expand_upload", "is_hidden", "looks_like_zip", "read_reviews",
           "read_source", "row_from_finding", "safe_name", "sort_key", "sort_rows", "summary_counts", "to_csv",
           "to_json", "wanted_member", "with_review"]
