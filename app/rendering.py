"""Renderings of message content: sanitised HTML, HTML to plain text, a subject line."""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Callable

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


# html5ever (under nh3) spends time in proportion to the depth of open elements for each tag, so deeply nested or
# misnested HTML costs it quadratic time: 20,000 nested divs take over a second, a hostile 1 MiB body minutes.
# Input with more tags than this is first re-serialised by libxml2 (linear, in C), which nests it properly and at
# most _MAX_DEPTH deep; below it the worst case is a few milliseconds.
_NORMALISE_ABOVE_TAGS = 4096

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
    if html.count("<") > _NORMALISE_ABOVE_TAGS:
        with contextlib.suppress(Exception):
            root = _document(html)
            if root is not None:
                html = etree.tostring(root, method="html", encoding="unicode")
    return _CLEANER.clean(html)


# --- HTML to plain text ------------------------------------------------------------------------------------------

# Elements separated from what is around them by a blank line (a single line break inside a list item).
_BLOCKS = frozenset({
    "p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "ul", "ol", "dl", "table", "hr",
    "address", "article", "aside", "center", "details", "dialog", "dir", "fieldset", "figure", "footer", "form",
    "header", "hgroup", "main", "menu", "nav", "section", "body", "html",
})
# Elements on a line of their own, without a blank line. A div is one, as a browser shows it:
# rich-text editors write each line of a reply as a <div>, and a blank line
# as <div><br></div>.
_LINES = frozenset({"div", "dt", "dd", "caption", "figcaption", "summary", "legend"})
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
# Elements a start tag of the same name closes (as in <li>a<li>b).
_CLOSE_SIBLING = frozenset({"p", "li", "dt", "dd", "option", "tr", "td", "th"})
# libxml2 stops at this depth (the rest of the document is lost); deeper tags are dropped before a second parse.
_MAX_DEPTH = 200
# A tag, scanned without crossing another "<" so that the scan stays linear on hostile input.
_TAG = re.compile(r"<(/?)([A-Za-z][^\s/<>]*)[^<>]*>")


class _TextRenderer:
    """Plain text laid out from a walk over an lxml tree: start and end of elements, their text."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.started = False  # something was written: breaks before it are dropped
        self.newlines = 0  # line breaks at the end of out
        self.pending_break = 0  # line breaks owed before the next text (2 = a blank line)
        self.pending_space = False
        self.pending_separator = False  # " | " owed between two table cells
        self.prefix = ""  # "- " or "3. " owed at the start of a list item's first line
        self.pre_whitespace = ""  # trailing spaces of preformatted text, written if more of it follows
        self.pre_start = False  # the next text opens a pre: its first newline is not content
        self.pre_depth = 0
        self.item_depth = 0
        self.cell_depth = 0
        self.lists: list[list[int]] = []  # [ordered, next number] of each open list
        self.rows: list[int] = []  # cells seen in each open table row
        self.link_depth = 0
        self.link_href = ""
        self.link_start = -1  # where the outermost link's text starts in out (-1: not yet)
        self.starts: dict[str, Callable[[etree._Element], None]] = {
            **dict.fromkeys(_BLOCKS, self._block_start), **dict.fromkeys(_LINES, self._line_start),
            "pre": self._pre_start, "ul": self._list_start, "ol": self._list_start, "menu": self._list_start,
            "dir": self._list_start, "br": self._br, "li": self._item_start, "tr": self._row_start,
            "td": self._cell_start, "th": self._cell_start, "a": self._link_start,
        }
        self.ends: dict[str, Callable[[], None]] = {
            **dict.fromkeys(_BLOCKS, self._block_end), **dict.fromkeys(_LINES, self._line_end),
            "pre": self._pre_end, "ul": self._list_end, "ol": self._list_end, "menu": self._list_end,
            "dir": self._list_end, "li": self._item_end, "tr": self._row_end, "td": self._cell_end,
            "th": self._cell_end, "a": self._link_end,
        }

    def render(self, root: etree._Element) -> None:
        """Lay out the tree under root (iteratively: any depth)."""
        starts, ends, text, skipped = self.starts, self.ends, self.text, _SKIPPED
        walker = etree.iterwalk(root, events=("start", "end"))
        for event, element in walker:
            tag = element.tag
            if event == "start":
                if tag in skipped:
                    walker.skip_subtree()
                    continue
                handler = starts.get(tag)
                if handler is not None:
                    handler(element)
                value = element.text
            else:
                finish = ends.get(tag)
                if finish is not None:
                    finish()
                value = element.tail
            if value:
                text(value)

    def text(self, value: str) -> None:
        """Character data, entities already decoded."""
        if self.pre_depth:
            self._preformatted(value)
            return
        value = _WHITESPACE.sub(" ", value)
        core = value.strip(" ")
        if value[0] == " ":
            self.pending_space = True
        if not core:
            return
        if not self.started or self.pending_break or self.pending_space or self.pending_separator or self.link_depth:
            self._separate()
        self.out.append(core)
        self.started = True
        self.newlines = 0
        self.pre_whitespace = ""
        self.pending_space = value[-1] == " "

    def result(self) -> str:
        """The text written so far, each line right-stripped, without blank lines around it."""
        text = "".join(self.out)
        return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")

    # elements

    def _block_start(self, element: etree._Element) -> None:
        self._break(1 if self.item_depth else 2)

    def _block_end(self) -> None:
        self._break(1 if self.item_depth else 2)

    def _line_start(self, element: etree._Element) -> None:
        self._break(1)

    def _line_end(self) -> None:
        self._break(1)

    def _pre_start(self, element: etree._Element) -> None:
        self._block_start(element)
        self.pre_depth += 1
        self.pre_start = True

    def _pre_end(self) -> None:
        self.pre_depth -= 1
        self.pre_whitespace = ""
        self._block_end()

    def _list_start(self, element: etree._Element) -> None:
        self._block_start(element)
        ordered = element.tag == "ol"
        self.lists.append([ordered, _first_number(element.get("start")) if ordered else 1])

    def _list_end(self) -> None:
        if self.lists:
            self.lists.pop()
        self._block_end()

    def _item_start(self, element: etree._Element) -> None:
        self._break(1)
        self.item_depth += 1
        if self.lists and self.lists[-1][0]:
            self.prefix = f"{self.lists[-1][1]}. "
            self.lists[-1][1] += 1
        else:
            self.prefix = "- "

    def _item_end(self) -> None:
        self.item_depth = max(self.item_depth - 1, 0)
        self._break(1)

    def _row_start(self, element: etree._Element) -> None:
        self._break(1)
        self.rows.append(0)

    def _row_end(self) -> None:
        if self.rows:
            self.rows.pop()
        self._break(1)

    def _cell_start(self, element: etree._Element) -> None:
        if self.rows:
            if self.rows[-1]:
                self.pending_separator = True
            self.rows[-1] += 1
        self.cell_depth += 1

    def _cell_end(self) -> None:
        self.cell_depth = max(self.cell_depth - 1, 0)

    def _br(self, element: etree._Element) -> None:
        if self.cell_depth:  # a table row stays on one line
            self.pending_space = True
        elif self.started:
            self.pending_break = 2 if self.pending_break else 1

    def _link_start(self, element: etree._Element) -> None:
        self.link_depth += 1
        if self.link_depth == 1:  # a link inside a link is only text
            self.link_href = _link_target(element.get("href"))
            self.link_start = -1

    def _link_end(self) -> None:
        if not self.link_depth:
            return
        self.link_depth -= 1
        href = self.link_href
        if self.link_depth or not href:
            return
        label = "".join(self.out[self.link_start:]).strip() if self.link_start >= 0 else ""
        if not label:
            self.text(href)
        elif label != href and not (href[:7].lower() == "mailto:" and label == href[7:]):
            self.out.append(f" ({href})")
            self.newlines = 0

    # layout

    def _break(self, lines: int) -> None:
        if self.cell_depth:  # a table row stays on one line
            self.pending_space = True
        elif lines > self.pending_break:
            self.pending_break = lines

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
        self.prefix = ""
        self.pending_space = self.pending_separator = False
        if self.link_depth and self.link_start < 0:
            self.link_start = len(self.out)

    def _preformatted(self, value: str) -> None:
        value = value.replace("\r\n", "\n").replace("\r", "\n").replace("\xa0", " ")
        if self.pre_start and value[0] == "\n":
            value = value[1:]  # as a browser does
        self.pre_start = False
        value = self.pre_whitespace + value
        body = value.rstrip(" \t")
        self.pre_whitespace = value[len(body):]
        if not self.started:
            body = body.lstrip("\n")
        if not body:
            return
        self._separate()
        self.out.append(body)
        self.started = True
        content = body.rstrip(" \t\n")
        if content:
            self.newlines = body.count("\n", len(content))
        else:
            self.newlines += body.count("\n")


def _first_number(value: str | None) -> int:
    """The number of an ordered list's first item."""
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


def _parse(data: bytes) -> tuple[etree._Element | None, bool]:
    """The document parsed by libxml2 (None if empty), and whether libxml2 gave up on part of it."""
    parser = etree.HTMLParser(encoding="utf-8", remove_comments=True, remove_pis=True)
    try:
        root = etree.fromstring(data, parser)
    except etree.LxmlError:
        return None, False
    return root, any(error.level_name == "FATAL" for error in parser.error_log)


def _flatten(html: str) -> str:
    """The HTML without the tags nested deeper than libxml2 accepts (their text is kept)."""
    stack: list[tuple[str, bool]] = []  # open elements, as libxml2 would roughly have them, and whether kept
    open_tags: Counter[str] = Counter()

    def keep(match: re.Match[str]) -> str:
        tag = match[2].lower()
        if tag in _VOID:
            return match[0]
        if match[1]:  # an end tag: it closes the elements opened after its own
            if not open_tags[tag]:
                return match[0]  # a stray end tag, ignored by the parser
            while True:
                name, kept = stack.pop()
                open_tags[name] -= 1
                if name == tag:
                    return match[0] if kept else ""
        if tag in _CLOSE_SIBLING and stack and stack[-1][0] == tag:  # <li>a<li>b: the first li ends
            open_tags[tag] -= 1
            stack.pop()
        kept = len(stack) < _MAX_DEPTH or tag in ("script", "style")  # whose text must stay out of sight
        stack.append((tag, kept))
        open_tags[tag] += 1
        return match[0] if kept else ""

    return _TAG.sub(keep, html)


def _document(html: str) -> etree._Element | None:
    """The HTML parsed by libxml2, as much of it as can be: None if there is no document at all."""
    # As UTF-8 bytes: a str with an XML encoding declaration is refused, a lone surrogate ends the parse.
    root, truncated = _parse(html.encode("utf-8", "replace"))
    if truncated:  # nested too deep: libxml2 dropped everything from there on
        flat_root, _ = _parse(_flatten(html).encode("utf-8", "replace"))
        if flat_root is not None:
            root = flat_root
    return root


def html_to_text(html: str) -> str:
    """Render HTML as plain text for SMS and chat: paragraphs, lists, links as "text (url)"; never raises."""
    if not html or html.isspace():
        return ""
    renderer = _TextRenderer()
    with contextlib.suppress(Exception):  # best effort: whatever was laid out before a failure
        root = _document(html)
        if root is not None:
            renderer.render(root)
    return renderer.result()


def subject_line(text: str) -> str:
    """The first non-empty line of a text, cut to the length Desk allows for a subject."""
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line[:SUBJECT_LENGTH]
    return ""
