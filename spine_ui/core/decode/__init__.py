"""Decode an untrusted upload (DICOM, PNG, JPEG, TIFF) into a :class:`Study`.

The format is detected from the content, never from the file name. Every failure is an
:class:`~spine_ui.errors.InputError` subclass whose message names the problem without paths or patient data.
"""
from __future__ import annotations

import os

from spine_ui.config import DecodeConfig
from spine_ui.errors import CorruptFileError, ImageTooLargeError, InputError
from spine_ui.core.decode.dicom import decode_dicom
from spine_ui.core.decode.raster import decode_raster
from spine_ui.core.decode.sniff import check_file_size, sniff
from spine_ui.core.decode.study import Study, StudyMeta

__all__ = ["Study", "StudyMeta", "decode_bytes", "decode_file", "sniff"]

_DEFAULT = DecodeConfig()


def decode_file(path: str | os.PathLike, cfg: DecodeConfig = _DEFAULT) -> Study:
    """Decode the file at ``path``; its size is checked before it is read."""
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise InputError("The file could not be opened (it does not exist or is not readable).") from exc
    check_file_size(size, cfg)
    try:
        with open(path, "rb") as fh:
            data = fh.read(cfg.max_file_bytes + 1)
    except OSError as exc:
        raise InputError("The file could not be read.") from exc
    return decode_bytes(data, os.path.basename(os.fspath(path)), cfg)


def decode_bytes(data: bytes, filename: str = "", cfg: DecodeConfig = _DEFAULT) -> Study:
    """Decode uploaded bytes. ``filename`` is informational only: the content decides the format."""
    del filename  # never trusted, never echoed (it may contain patient names)
    check_file_size(len(data), cfg)
    kind = sniff(data)
    try:
        if kind == "dicom":
            return decode_dicom(data, cfg)
        return decode_raster(data, kind, cfg)
    except InputError:
        raise
    except MemoryError as exc:
        raise ImageTooLargeError("The image is too large to decode on this server.") from exc
    except Exception as exc:  # last line of defence: library errors never leak to the user
        raise CorruptFileError() from exc
    except BaseException as exc:  # a Rust decoder's panic (pyo3 PanicException) is not an Exception subclass
        if type(exc).__name__ != "PanicException":
            raise
        raise CorruptFileError() from exc
