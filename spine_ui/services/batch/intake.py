"""Batch intake: files, folders and ``.zip`` archives -> ``(name, source)`` items. Archive members are read
lazily, in memory, never extracted to disk, behind zip-bomb limits (:class:`ArchiveLimits`)."""
from __future__ import annotations

import io
import logging
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Union

from spine_ui.config import DecodeConfig
from spine_ui.errors import CorruptFileError, ImageTooLargeError, InputError
from spine_ui.services.batch.rows import safe_name

log = logging.getLogger(__name__)

#: the name, decides the decoder). Extension-less files are taken too: DICOM exports often have none.
IMAGE_SUFFIXES = frozenset({".dcm", ".dicom", ".dic", ".png", ".jpg", ".jpeg", ".tif", ".tiff"})
ARCHIVE_SUFFIXES = frozenset({".zip"})
#: Never studies: DICOM media directories and OS clutter (listed as skipped); hidden folders are not searched.
SKIP_NAMES = frozenset({"dicomdir", "thumbs.db", "desktop.ini"})
HIDDEN_DIRS = frozenset({"__macosx"})
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_SAFE_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # bounded decompression per read()


# --------------------------------------------------------------------------- inputs
#: Where a study's bytes come from: the bytes themselves, a file, a deferred reader (archive member) or the
#: reason it cannot be read at all (an archive refused as a whole, a member over the size limit).
Source = Union[bytes, bytearray, str, os.PathLike, Callable[[], bytes], InputError]
Item = tuple[str, Source]


@dataclass(frozen=True)
class ArchiveLimits:
    """Zip-bomb guards, checked from the archive's directory before any member is decompressed."""

    max_members: int = 500
    max_total_bytes: int = 2 * 1024 ** 3  # declared uncompressed size of all members together
    max_member_bytes: int = DecodeConfig().max_file_bytes


def is_hidden(rel: str | os.PathLike) -> bool:
    """A dot file or folder, or anything under ``__MACOSX`` (resource forks)."""
    parts = [p for p in os.fspath(rel).replace("\\", "/").split("/") if p]
    return any(p.startswith(".") or p.lower() in HIDDEN_DIRS for p in parts)


def wanted_member(rel: str) -> bool:
    """Inside a folder or an archive: radiograph-like names only (an image suffix, none, or a numeric one as in
    UID-named DICOM files), nothing hidden, no DICOMDIR."""
    if is_hidden(rel):
        return False
    path = PurePosixPath(rel.replace("\\", "/"))
    if path.name.lower() in SKIP_NAMES:
        return False
    suffix = path.suffix.lower()
    return suffix in IMAGE_SUFFIXES or suffix == "" or suffix.lstrip(".").isdigit()


def _natural(rel: str) -> tuple:
    """Case-insensitive order with numbers compared as numbers (IM2 before IM10)."""
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", rel)), rel


def looks_like_zip(name: str, head: bytes = b"") -> bool:
    if PurePosixPath(name.replace("\\", "/")).suffix.lower() in ARCHIVE_SUFFIXES:
        return True
    return head[:4] in _ZIP_MAGICS and head[128:132] != b"DICM"


def expand_inputs(paths: Iterable[str | os.PathLike], *, limits: ArchiveLimits = ArchiveLimits(),
                  skipped: list[str] | None = None) -> list[Item]:
    """Files, folders (recursive, sorted, hidden entries skipped) and ``.zip`` archives -> ``(name, source)``.

    Folders and archives contribute radiograph-like names only (image suffix or none); what they hold besides
    is listed in ``skipped``. A missing path or a refused archive becomes an item whose source is the
    :class:`InputError` to report."""
    items: list[Item] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for rel in _walk(p):
                f = p / rel
                if PurePosixPath(rel).suffix.lower() in ARCHIVE_SUFFIXES:
                    items.extend(expand_archive(f.name, f, limits, skipped))
                elif wanted_member(rel):
                    items.append((safe_name(f.name), f))
                elif skipped is not None:
                    skipped.append(rel)
        elif p.is_file():
            if looks_like_zip(p.name, _head(p)):
                items.extend(expand_archive(p.name, p, limits, skipped))
            else:
                items.append((safe_name(p.name), p))
        else:
            items.append((safe_name(p.name), InputError("The file could not be opened (it does not exist or is "
                                                        "not readable).")))
    return items


def expand_upload(name: str, data: bytes, *, limits: ArchiveLimits = ArchiveLimits(),
                  skipped: list[str] | None = None) -> list[Item]:
    """One uploaded file held in memory: an archive's members, or the file itself."""
    if looks_like_zip(name, data[:132]):
        return expand_archive(name, data, limits, skipped)
    return [(safe_name(name), data)]


def _walk(root: Path) -> list[str]:
    """Relative POSIX paths of the regular files under ``root``, sorted; hidden files and folders skipped."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if not is_hidden(d)]
        for fn in filenames:
            if is_hidden(fn):
                continue
            full = Path(dirpath) / fn
            if full.is_file():
                found.append(full.relative_to(root).as_posix())
    return sorted(found, key=_natural)


def _head(p: Path) -> bytes:
    try:
        with open(p, "rb") as fh:
            return fh.read(132)
    except OSError:
        return b""


def _unsafe_member(name: str) -> bool:
    n = name.replace("\\", "/")
    if n.startswith("/") or (len(n) > 1 and n[1] == ":"):  # absolute, or a Windows drive
        return True
    return ".." in n.split("/")


def _declared_entries(fh) -> int | None:
    """The entry count in the archive's end record, read before zipfile parses the central directory (so an
    archive declaring millions of members costs nothing). None when no end record is found."""
    fh.seek(0, io.SEEK_END)
    size = fh.tell()
    span = min(size, 22 + 0xFFFF)
    fh.seek(size - span)
    tail = fh.read(span)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return None
    return int.from_bytes(tail[at + 10:at + 12], "little")  # 0xFFFF: zip64, i.e. at least 65535 entries


def _open_archive(source: bytes | Path):
    return io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")


def expand_archive(name: str, source: bytes | Path, limits: ArchiveLimits = ArchiveLimits(),
                   skipped: list[str] | None = None) -> list[Item]:
    """The members of a zip archive as deferred readers. A malformed or unsafe archive is refused as a whole
    (one item carrying the reason): more than ``max_members`` entries, members declaring more than
    ``max_total_bytes`` together, absolute or ``..`` member names. A member over ``max_member_bytes``, an
    encrypted one, one compressed with anything but deflate, or an archive inside the archive, is reported
    (not read)."""
    label = safe_name(name)
    try:
        with _open_archive(source) as fh:
            declared = _declared_entries(fh)
            if declared is not None and declared > limits.max_members:
                return [(label, _too_many(limits))]
            fh.seek(0)
            with zipfile.ZipFile(fh) as zf:
                infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        log.info("Archive refused (%s).", type(exc).__name__)
        return [(label, CorruptFileError("The archive is damaged or not a zip file; it was not opened."))]
    if len(infos) > limits.max_members:
        return [(label, _too_many(limits))]
    if any(_unsafe_member(i.filename) for i in infos):
        return [(label, InputError("The archive contains unsafe member names (absolute paths or '..'); "
                                   "it was not opened."))]
    files = [i for i in infos if not i.is_dir()]
    if sum(i.file_size for i in files) > limits.max_total_bytes:
        return [(label, InputError(f"The archive would expand to more than {_size(limits.max_total_bytes)}; "
                                   "it was not opened (split it into smaller archives)."))]
    items: list[Item] = []
    for info in sorted(files, key=lambda i: _natural(i.filename)):
        rel = info.filename
        if is_hidden(rel):
            continue
        if not wanted_member(rel) and PurePosixPath(rel).suffix.lower() not in ARCHIVE_SUFFIXES:
            if skipped is not None:
                skipped.append(f"{label}:{rel}")
            continue
        member = safe_name(rel)
        if PurePosixPath(rel).suffix.lower() in ARCHIVE_SUFFIXES:
            items.append((member, InputError("Archives inside an archive are not opened; add its files directly.")))
        elif info.file_size > limits.max_member_bytes:
            items.append((member, ImageTooLargeError(f"The file is larger than the "
                                                     f"{_size(limits.max_member_bytes)} limit.")))
        elif info.flag_bits & 0x1:
            items.append((member, InputError("The archive member is encrypted; it was not opened.")))
        elif info.compress_type not in _SAFE_METHODS:
            items.append((member, InputError("The archive member uses an unsupported compression method (use "
                                             "plain zip / deflate).")))
        else:
            items.append((member, _MemberReader(source, rel, info.file_size, limits.max_member_bytes)))
    return items


def _too_many(limits: ArchiveLimits) -> InputError:
    return InputError(f"The archive holds more than {limits.max_members} files; it was not opened "
                      "(split it into smaller archives).")


def _size(n: int) -> str:
    for unit, div in (("GB", 1024 ** 3), ("MB", 1024 ** 2), ("kB", 1024)):
        if n >= div:
            return f"{n / div:g} {unit}"
    return f"{n} bytes"


class _MemberReader:
    """Reads one archive member into memory when the batch reaches it (decompressed size bounded)."""

    def __init__(self, source: bytes | Path, member: str, declared: int, limit: int) -> None:
        self.source, self.member, self.declared, self.limit = source, member, declared, limit

    def __call__(self) -> bytes:
        try:
            with _open_archive(self.source) as fh, zipfile.ZipFile(fh) as zf, zf.open(self.member) as m:
                data = m.read(min(self.declared, self.limit) + 1)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError,
                KeyError) as exc:
            log.info("Archive member unreadable (%s).", type(exc).__name__)
            raise CorruptFileError("The archive member is damaged and could not be extracted.") from exc
        if len(data) > self.limit:
            raise ImageTooLargeError(f"The file is larger than the {_size(self.limit)} limit.")
        return data


def read_source(source: Source, cfg: DecodeConfig = DecodeConfig()) -> bytes:
    """The bytes of one item (at most ``cfg.max_file_bytes + 1``: the decoder then refuses larger files)."""
    if isinstance(source, InputError):
        raise source
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if callable(source):
        return source()
    try:
        with open(source, "rb") as fh:
            return fh.read(cfg.max_file_bytes + 1)
    except OSError as exc:
        raise InputError("The file could not be opened (it does not exist or is not readable).") from exc
