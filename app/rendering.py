"""Renderings of message content: sanitised HTML, HTML to plain text, a subject line."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable

import lxml.html
import nh3
from lxml import etree

SUBJECT_LENGTH = 255

# --- Sanitising inbound HTML -------------------------------------------------------------------------------------

# ammonia's vetted allowlist (p, div, span, b, a, lists, headings, tables, img, hr, ...) plus tfoot.
_TAGS = nh3.ALLOWED_TAGS | {"tfoot"}
# Dropped with their content; every other tag outside _TAGS is dropped and its text kept.
_CLEAN_CONTENT_TAGS = {
    "script", "style", "iframe", "object", "embed", "applet", "noscript", "template",
    "title", "frame", "frameset", "noframes", "noembed",
}
_ATTRIBUTES = {tag: set(names) for tag, names in nh3.ALLOWED_ATTRIBUTES.items()}
_ATTRIBUTES["*"] = {"title", "lang", "dir"}
# data: is let through ammonia's scheme check so that data:image/* can stay in img src; _attribute_filter
# removes every other data: URL.
_URL_SCHEMES = nh3.ALLOWED_URL_SCHEMES | {"data"}
_URL_ATTRIBUTES = frozenset({"href", "src", "cite", "action", "formaction", "poster", "background", "longdesc"})
# What a browser ignores in a URL: tabs and newlines anywhere, C0 controls and spaces around it.
_URL_IGNORED = re.compile(r"[\t\n\r]")
_C0_AND_SPACE = "".join(chr(code) for code in range(0x21))


def _attribute_filter(tag: str, attribute: str, value: str) -> str | None:
    """Drop data: URLs, except data:image/* in img src (nh3 calls this for each kept attribute)."""
    if attribute in _URL_ATTRIBUTES:
        url = _URL_IGNORED.sub("", value).strip(_C0_AND_SPACE).lower()
        if url.startswith("data:") and not (tag == "img" and attribute == "src" and url.startswith("data:image/")):
            return None
    return value


_CLEANER = nh3.Cleaner(
    tags=_TAGS,
    clean_content_tags=_CLEAN_CONTENT_TAGS,
    attributes=_ATTRIBUTES,
    attribute_filter=_attribute_filter,
    strip_comments=True,
    link_rel="noopener noreferrer",
    url_schemes=_URL_SCHEMES,
)


def sanitize_html(html: str) -> str:
    """Allowlist-sanitise inbound HTML: no scripts, handlers or dangerous URLs; links get rel=noopener."""
    return _CLEANER.clean(html)


# --- HTML to plain text ------------------------------------------------------------------------------------------

# Elements separated from what is around them by a blank line (a single line break inside a list item).
_BLOCKS = frozenset({
    "p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "ul", "ol", "dl", "table", "hr",
    "address", "article", "aside", "center", "details", "dialog", "dir", "fieldset", "figure", "footer", "form",
    "header", "hgroup", "main", "menu", "nav", "section", "body", "html",
})
# Elements on a line of their own, without a blank line.
_LINES = frozenset({"dt", "dd", "caption", "figcaption", "summary", "legend"})
# Elements whose content is never text.
_SKIPPED = frozenset({
    "script", "style", "head", "title", "template", "noscript", "iframe", "object", "embed", "applet",
    "frameset", "noframes", "noembed",
})
_VOID = frozenset({
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track", "wbr",
})
# Whitespace a browser collapses (&nbsp; is rendered as a plain space too).
_WHITESPACE = re.compile(r"[ \t\n\r\f\xa0]+")
# libxml2 stops at this depth (the rest of the document is lost); deeper tags are dropped before a second parse.
_MAX_DEPTH = 200
# A tag, scanned without crossing another "<" so that the scan stays linear on hostile input.
_TAG = re.compile(r"<(/?)([A-Za-z][^\s/<>]*)[^<>]*>")


class _TextRenderer:
    """Plain text laid out from a stream of start tag, end tag and text events."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.started = False  # something was written: breaks before it are dropped
        self.newlines = 0  # line breaks at the end of out
        self.pending_break = 0  # line breaks owed before the next text (2 = a blank line)
        self.pending_space = False
        self.pending_separator = False  # " | " owed between two table cells
        self.prefix: str | None = None  # "- " or "3. " owed at the start of a list item's first line
        self.pre_whitespace = ""  # trailing spaces of preformatted text, written if more of it follows
        self.pre_start = False  # the next text opens a pre: its first newline is not content
        self.skip_depth = 0
        self.pre_depth = 0
        self.item_depth = 0
        self.cell_depth = 0
        self.lists: list[list[int]] = []  # [ordered, next number]
        self.rows: list[int] = []  # cells seen in each open table row
        self.link_depth = 0
        self.link_href = ""
        self.link_start: int | None = None  # where the outermost link's text starts in out

    # events

    def start(self, tag: str, get: Callable[[str], str | None]) -> None:
        """An element opens."""
        if self.skip_depth or tag in _SKIPPED:
            self.skip_depth += 1
            return
        self.pre_start = False
        if tag in _BLOCKS:
            self._break(1 if self.item_depth else 2)
            if tag == "pre":
                self.pre_depth += 1
                self.pre_start = True
            elif tag in ("ul", "ol", "menu", "dir"):
                self.lists.append([tag == "ol", _list_start(get("start")) if tag == "ol" else 1])
        elif tag == "br":
            self._line_break()
        elif tag == "li":
            self._break(1)
            self.item_depth += 1
            if self.lists and self.lists[-1][0]:
                self.prefix = f"{self.lists[-1][1]}. "
                self.lists[-1][1] += 1
            else:
                self.prefix = "- "
        elif tag == "tr":
            self._break(1)
            self.rows.append(0)
        elif tag in ("td", "th"):
            if self.rows:
                if self.rows[-1]:
                    self.pending_separator = True
                self.rows[-1] += 1
            self.cell_depth += 1
        elif tag in _LINES:
            self._break(1)
        elif tag == "a":
            self.link_depth += 1
            if self.link_depth == 1:
                self.link_href = _link_target(get("href"))
                self.link_start = None

    def end(self, tag: str) -> None:
        """An element closes."""
        if self.skip_depth:
            self.skip_depth -= 1
            return
        if tag in _BLOCKS:
            if tag == "pre":
                self.pre_depth -= 1
                self.pre_whitespace = ""
            elif tag in ("ul", "ol", "menu", "dir") and self.lists:
                self.lists.pop()
            self._break(1 if self.item_depth else 2)
        elif tag == "li":
            self.item_depth = max(self.item_depth - 1, 0)
            self._break(1)
        elif tag == "tr":
            if self.rows:
                self.rows.pop()
            self._break(1)
        elif tag in ("td", "th"):
            self.cell_depth = max(self.cell_depth - 1, 0)
        elif tag in _LINES:
            self._break(1)
        elif tag == "a" and self.link_depth:
            self.link_depth -= 1
            if not self.link_depth:
                self._end_link()

    def text(self, text: str) -> None:
        """Character data, entities already decoded."""
        if self.skip_depth or not text:
            return
        if self.pre_depth:
            self._preformatted(text)
            return
        text = _WHITESPACE.sub(" ", text)
        core = text.strip(" ")
        if text[0] == " ":
            self.pending_space = True
        if core:
            self._write(core)
            self.pending_space = text[-1] == " "

    def result(self) -> str:
        """The text written so far, each line right-stripped, without blank lines around it."""
        text = "".join(self.out)
        return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")

    # layout

    def _break(self, lines: int) -> None:
        if self.cell_depth:  # a table row stays on one line
            self.pending_space = True
        else:
            self.pending_break = max(self.pending_break, lines)

    def _line_break(self) -> None:
        if self.cell_depth:
            self.pending_space = True
        elif self.started:
            self.pending_break = min(self.pending_break + 1, 2)

    def _separate(self) -> None:
        """Write what is owed before the next text: line breaks, a list prefix, a space or a cell separator."""
        if not self.started:
            self.pending_break = 0
        elif self.pending_break:
            missing = self.pending_break - self.newlines
            if missing > 0:
                self.out.append("\n" * missing)
                self.newlines += missing
            self.pending_break = 0
        if not self.started or self.newlines:
            if self.prefix:
                self.out.append(self.prefix)
                self.newlines = 0
        elif self.pending_separator:
            self.out.append(" | ")
        elif self.pending_space:
            self.out.append(" ")
        self.prefix = None
        self.pending_space = self.pending_separator = False
        if self.link_depth and self.link_start is None:
            self.link_start = len(self.out)

    def _write(self, text: str) -> None:
        self.pre_whitespace = ""
        self._separate()
        self.out.append(text)
        self.started = True
        self.newlines = 0

    def _preformatted(self, text: str) -> None:
        text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\xa0", " ")
        if self.pre_start and text[0] == "\n":
            text = text[1:]  # as a browser does
        self.pre_start = False
        text = self.pre_whitespace + text
        body = text.rstrip(" \t")
        self.pre_whitespace = text[len(body):]
        if not body:
            return
        if not self.started:
            body = body.lstrip("\n")
            if not body.strip():
                return
        self._separate()
        self.out.append(body)
        self.started = True
        content = body.rstrip(" \t\n")
        if content:
            self.newlines = body.count("\n", len(content))
        else:
            self.newlines += body.count("\n")

    def _end_link(self) -> None:
        href = self.link_href
        if not href:
            return
        label = "".join(self.out[self.link_start:]).strip() if self.link_start is not None else ""
        if not label:
            self._write(href)
        elif label != href and not (href[:7].lower() == "mailto:" and label == href[7:]):
            self.out.append(f" ({href})")
            self.newlines = 0


def _list_start(value: str | None) -> int:
    try:
        return int(value or 1)
    except ValueError:
        return 1


def _link_target(href: str | None) -> str:
    """The URL shown for a link, or "" for none (no href, a fragment of the page, a script)."""
    href = _URL_IGNORED.sub("", href or "").strip()
    if href.startswith("#") or href.lower().startswith("javascript:"):
        return ""
    return href


def _parse(html: str | bytes) -> tuple[lxml.html.HtmlElement | None, bool]:
    """The document parsed by libxml2, and whether libxml2 gave up on part of it (too deep)."""
    if isinstance(html, bytes):
        parser = lxml.html.HTMLParser(encoding="utf-8", remove_comments=True, remove_pis=True)
    else:
        parser = lxml.html.HTMLParser(remove_comments=True, remove_pis=True)
    try:
        root = lxml.html.document_fromstring(html, parser=parser)
    except (etree.ParserError, ValueError):  # empty document, XML encoding declaration in a str
        return None, False
    return root, any(error.level_name == "FATAL" for error in parser.error_log)


def _flatten(html: str) -> str:
    """The HTML without the tags nested deeper than libxml2 accepts (their text is kept)."""
    depth = 0

    def keep(match: re.Match[str]) -> str:
        nonlocal depth
        tag = match[2].lower()
        if tag in _VOID:
            return match[0]
        if match[1]:  # an end tag
            level, depth = depth, max(depth - 1, 0)
        else:
            depth += 1
            level = depth
        return match[0] if level <= _MAX_DEPTH or tag in ("script", "style") else ""

    return _TAG.sub(keep, html)


def _render(root: lxml.html.HtmlElement, renderer: _TextRenderer) -> None:
    for event, element in etree.iterwalk(root, events=("start", "end", "comment", "pi")):
        tag = element.tag
        if event == "start":
            if isinstance(tag, str):
                renderer.start(tag.lower(), element.get)
            if element.text and isinstance(tag, str):
                renderer.text(element.text)
        else:
            if event == "end" and isinstance(tag, str):
                renderer.end(tag.lower())
            if element.tail:
                renderer.text(element.tail)


def html_to_text(html: str) -> str:
    """Render HTML as plain text for SMS and chat: paragraphs, lists, links as "text (url)"; never raises."""
    if not html or html.isspace():
        return ""
    renderer = _TextRenderer()
    with contextlib.suppress(Exception):  # best effort: whatever was laid out before a failure
        source: str | bytes = html
        root, truncated = _parse(source)
        if root is None:  # a str lxml refuses (XML encoding declaration, lone surrogate): try UTF-8 bytes
            source = html.encode("utf-8", "replace")
            root, truncated = _parse(source)
        if truncated:
            flat = _flatten(html)
            flat_root, _ = _parse(flat if isinstance(source, str) else flat.encode("utf-8", "replace"))
            root = flat_root if flat_root is not None else root
        if root is not None:
            _render(root, renderer)
    return renderer.result()


def subject_line(text: str) -> str:
    """The first non-empty line of a text, cut to the length Desk allows for a subject."""
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line[:SUBJECT_LENGTH]
    return ""
