"""The one check every route (and the CLI) applies to a text before judging it.

A statement made only of NUL, zero-width or combining characters passes ``str.strip()`` yet
says nothing: the head would still return a verdict, and the audit log would keep it. Text is
therefore judged only when something visible is left after Unicode NFKC normalisation and
removing control (Cc), format (Cf: zero-width spaces and joiners, the BOM, bidi marks),
combining (Mn, Me) and whitespace characters. The text itself is judged and logged unchanged.
"""

from __future__ import annotations

import unicodedata

__all__ = ["require_text", "visible_text"]

_INVISIBLE = frozenset({"Cc", "Cf", "Mn", "Me", "Zs", "Zl", "Zp"})


def visible_text(text: str) -> str:
    """``text`` after NFKC without control, format, combining and whitespace characters."""
    norm = unicodedata.normalize("NFKC", text)
    return "".join(
        ch for ch in norm if not ch.isspace() and unicodedata.category(ch) not in _INVISIBLE
    )


def require_text(text: str, what: str, *, allow_empty: bool = False) -> str:
    """``text`` unchanged, or ``ValueError`` naming ``what`` when it is blank or not Unicode.

    ``allow_empty`` lets ``""`` through (an absent context), never a text that only looks empty.
    """
    surrogate = next((ch for ch in text if unicodedata.category(ch) == "Cs"), None)
    if surrogate is not None:
        raise ValueError(
            f"{what} is not valid Unicode: it holds the lone surrogate U+{ord(surrogate):04X}"
        )
    if allow_empty and text == "":
        return text
    if not visible_text(text):
        hint = ' (send "" for none)' if allow_empty else ""
        raise ValueError(
            f"{what} must not be blank: nothing is left after Unicode normalisation and removing "
            f"whitespace, control, zero-width and combining characters{hint}"
        )
    return text
