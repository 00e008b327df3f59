"""Message text as providers count it: UTF-16 code units (Telegram's 4096, Twilio's 1600), and
long replies split into parts that fit."""

from __future__ import annotations


def utf16_units(text: str) -> int:
    """The length of text in UTF-16 code units (a character outside the BMP counts two)."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def split_text(text: str, limit: int) -> list[str]:
    """Parts of at most `limit` UTF-16 code units, cut at a paragraph, else a line, else a space in the
    second half of a part, else at the limit (never inside a character); blank parts are dropped."""
    parts: list[str] = []
    rest = text
    while utf16_units(rest) > limit:
        head = rest[:_fitting(rest, limit)]
        cut, separator = _boundary(head)
        part, rest = head[:cut].rstrip(), rest[cut + len(separator):]
        if "\n" in separator:
            rest = rest.lstrip("\n")
        if part.strip():
            parts.append(part)
    if rest.strip():
        parts.append(rest)
    return parts


def _fitting(text: str, limit: int) -> int:
    """How many characters of text fit in `limit` UTF-16 code units (at least one)."""
    units = 0
    for index, ch in enumerate(text):
        units += 2 if ord(ch) > 0xFFFF else 1
        if units > limit:
            return max(index, 1)
    return len(text)


def _boundary(head: str) -> tuple[int, str]:
    """Where to cut a part that fills `head`, and the separator dropped there."""
    for separator in ("\n\n", "\n", " "):
        at = head.rfind(separator)
        if at >= len(head) // 2 and head[:at].strip():
            return at, separator
    return len(head), ""
