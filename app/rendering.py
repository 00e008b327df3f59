"""Text renderings of message content: HTML to plain text, a subject line."""

from __future__ import annotations

from inscriptis import get_text

SUBJECT_LENGTH = 255


def html_to_text(html: str) -> str:
    """Render HTML as readable plain text (lists, paragraphs, entities)."""
    if not html.strip():
        return ""
    return "\n".join(line.rstrip() for line in get_text(html).strip("\n").splitlines()).strip()


def subject_line(text: str) -> str:
    """The first non-empty line of a text, cut to the length Desk allows for a subject."""
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line[:SUBJECT_LENGTH]
    return ""
