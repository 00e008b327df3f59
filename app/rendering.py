"""Text renderings of message content: HTML to plain text, a subject line."""

from __future__ import annotations

import lxml.html
from inscriptis import get_text
from lxml.etree import ParserError

SUBJECT_LENGTH = 255
# inscriptis lays text out well (lists, paragraphs) but costs about 5 µs a byte;
# beyond this size the text is extracted by lxml alone, in C, without layout.
LAYOUT_LIMIT = 64 * 1024
_BLOCKS = ("p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "table")


def html_to_text(html: str) -> str:
    """Render HTML as readable plain text (lists, paragraphs, entities)."""
    if not html.strip():
        return ""
    if len(html) > LAYOUT_LIMIT:
        try:
            document = lxml.html.document_fromstring(html)
        except ParserError:
            return ""
        for block in document.iter(*_BLOCKS):
            block.tail = "\n" + (block.tail or "")  # a line break after each block
        text = document.text_content()
    else:
        text = get_text(html)
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).strip()


def subject_line(text: str) -> str:
    """The first non-empty line of a text, cut to the length Desk allows for a subject."""
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line[:SUBJECT_LENGTH]
    return ""
