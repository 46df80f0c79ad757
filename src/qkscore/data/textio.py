"""Reading text files the user hands over, with a diagnosis when they are not UTF-8.

A data file saved as UTF-16 (Windows editors and PowerShell's ``>`` do this) decodes as
cp1252 into text full of NUL characters, and the JSON parser then complains about the first
character. :func:`read_text_file` recognises that case (a UTF-16/UTF-32 byte-order mark, or the
NUL bytes of UTF-16 text without one) and says it is an encoding problem instead.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from pathlib import Path

from qkscore.data.items import DataError

__all__ = ["read_text_file", "sniff_encoding"]

# UTF-32 before UTF-16: the UTF-32-LE mark starts with the UTF-16-LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32, little-endian with a byte-order mark"),
    (codecs.BOM_UTF32_BE, "UTF-32, big-endian with a byte-order mark"),
    (codecs.BOM_UTF16_LE, "UTF-16, little-endian with a byte-order mark"),
    (codecs.BOM_UTF16_BE, "UTF-16, big-endian with a byte-order mark"),
)
_SAMPLE = 4096


def sniff_encoding(raw: bytes) -> str | None:
    """A description of a non-UTF-8 encoding that ``raw`` plainly has, or None.

    Only sure signs count: a UTF-16/32 byte-order mark, or NUL bytes (never in UTF-8 or cp1252
    text), on every other byte for UTF-16 text in a Latin script.
    """
    for bom, name in _BOMS:
        if raw.startswith(bom):
            return name
    sample = raw[:_SAMPLE]
    if b"\0" not in sample:
        return None
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    half = max(len(sample) // 2, 1)
    if odd >= 0.3 * half and even <= 0.05 * half:
        return "UTF-16, little-endian without a byte-order mark"
    if even >= 0.3 * half and odd <= 0.05 * half:
        return "UTF-16, big-endian without a byte-order mark"
    return "binary data: it holds NUL bytes"


def read_text_file(path: str | Path, fallbacks: Sequence[str] = ()) -> tuple[str, str]:
    """``(text, encoding)`` of a UTF-8 file (a UTF-8 byte-order mark is dropped), else of the
    first of ``fallbacks`` that decodes it.

    A file that is UTF-16, UTF-32 or binary, or that no encoding decodes, raises a
    :class:`DataError` naming the file (and the line of the first bad byte) and the fix.
    ``OSError`` (missing, unreadable file) passes through.
    """
    path = Path(path)
    raw = path.read_bytes()
    found = sniff_encoding(raw)
    if found is not None:
        raise DataError(
            f"not UTF-8 (it looks like {found}); re-save the file as UTF-8", file=str(path)
        )
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as err:
        first = err
    for encoding in fallbacks:
        try:
            return raw.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    line = raw[: first.start].count(b"\n") + 1
    tried = ", ".join(("UTF-8", *fallbacks))
    raise DataError(
        f"not UTF-8 (byte 0x{raw[first.start]:02x} does not decode as {tried}); "
        "re-save the file as UTF-8",
        file=str(path),
        line=line,
    )
