"""The text drawn in a PDF written with core fonts (fpdf2): inflate each content stream, collect its strings.

Enough to check a report's words without a PDF library (no pypdf or poppler needed)."""
from __future__ import annotations

import re
import zlib

_STREAM = re.compile(rb"stream\r?\n(.*?)\r?\nendstream", re.S)
_STRING = re.compile(rb"\((?:\\.|[^\\)])*\)")
_ESC = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"(": b"(", b")": b")", b"\\": b"\\"}


def _unescape(raw: bytes) -> bytes:
    return re.sub(rb"\\(.)", lambda m: _ESC.get(m.group(1), m.group(1)), raw[1:-1])


def pdf_text(data: bytes) -> str:
    """All literal strings of the content streams, in order, joined by spaces (Latin-1)."""
    parts: list[str] = []
    for m in _STREAM.finditer(data):
        body = m.group(1)
        try:
            body = zlib.decompress(body)
        except zlib.error:
            pass
        if b"BT" not in body:
            continue
        parts.extend(_unescape(s).decode("latin-1") for s in _STRING.findall(body))
    return " ".join(parts)
