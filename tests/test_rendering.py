"""app.rendering: sanitising inbound HTML, plain text of agents' HTML replies, subject lines."""

from __future__ import annotations

import time

import lxml.html
import pytest

from app.rendering import html_to_text, sanitize_html, subject_line

PNG_DOT = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def parsed(html: str) -> lxml.html.HtmlElement:
    """The sanitiser's output as a tree, to assert on elements rather than on serialisation details."""
    return lxml.html.fragment_fromstring(html, create_parent="div")


# --- sanitize_html ------------------------------------------------------------------------------------------------


def test_sanitizer_drops_script_element_with_its_content():
    clean = sanitize_html('<p>Hi</p><script>alert("x")</script><p>there</p>')
    assert "script" not in clean and "alert" not in clean
    assert [p.text for p in parsed(clean).iter("p")] == ["Hi", "there"]


def test_sanitizer_drops_style_element_with_its_rules_and_style_attributes():
    clean = sanitize_html('<style>p { color: red }</style><p style="position: fixed">text</p>')
    assert "color" not in clean and "style" not in clean and "fixed" not in clean
    assert [p.text for p in parsed(clean).iter("p")] == ["text"]


@pytest.mark.parametrize("html", [
    '<iframe src="https://evil.example/">inner text</iframe>',
    '<object data="https://evil.example/x.swf">inner text</object>',
    '<embed src="https://evil.example/x.swf">',
])
def test_sanitizer_drops_iframe_object_and_embed_with_their_content(html):
    clean = sanitize_html(f"<p>before</p>{html}<p>after</p>")
    assert "iframe" not in clean and "object" not in clean and "embed" not in clean
    assert "evil.example" not in clean and "inner text" not in clean
    assert [p.text for p in parsed(clean).iter("p")] == ["before", "after"]


def test_sanitizer_removes_event_handler_attributes():
    clean = sanitize_html(
        '<p onclick="steal()">a</p><img src="https://img.example/a.png" onerror="steal()" onload="steal()">'
        '<a href="https://ok.example/" onmouseover="steal()">b</a>'
    )
    assert "steal" not in clean and "onclick" not in clean and "onerror" not in clean
    tree = parsed(clean)
    assert tree.find("p").text == "a"
    assert tree.find("img").get("src") == "https://img.example/a.png"
    assert tree.find("a").get("href") == "https://ok.example/"


@pytest.mark.parametrize("href", [
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "java&#x09;script:alert(1)",
    "java&#x0A;script:alert(1)",
    " &#x6a;avascript:alert(1)",
    "&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1)",
])
def test_sanitizer_removes_javascript_hrefs_however_spelled(href):
    clean = sanitize_html(f'<a href="{href}">click</a>')
    link = parsed(clean).find("a")
    assert link.get("href") is None
    assert link.text == "click"
    assert "alert" not in clean


@pytest.mark.parametrize("href", [
    "data:text/html,<script>alert(1)</script>",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "DaTa:text/html,hi",
    "da&#x09;ta:text/html,hi",
    PNG_DOT,  # data: images are for img src only
])
def test_sanitizer_removes_data_hrefs(href):
    clean = sanitize_html(f'<a href="{href}">click</a>')
    assert parsed(clean).find("a").get("href") is None
    assert "data:" not in clean.lower()


@pytest.mark.parametrize("src", [
    "data:text/html,<script>alert(1)</script>",
    "data:application/javascript,x",
    " DATA:text/html,x",
])
def test_sanitizer_removes_non_image_data_urls_from_img_src(src):
    clean = sanitize_html(f'<img src="{src}" alt="logo">')
    image = parsed(clean).find("img")
    assert image.get("src") is None
    assert image.get("alt") == "logo"


def test_sanitizer_keeps_data_image_png_in_img_src():
    clean = sanitize_html(f'<img src="{PNG_DOT}" alt="dot" width="1" height="1">')
    image = parsed(clean).find("img")
    assert image.get("src") == PNG_DOT
    assert (image.get("alt"), image.get("width"), image.get("height")) == ("dot", "1", "1")


def test_sanitizer_adds_noopener_noreferrer_to_links_replacing_the_authors_rel():
    clean = sanitize_html('<a href="https://shop.example/o/1" rel="opener" target="_blank">order</a>')
    link = parsed(clean).find("a")
    assert link.get("href") == "https://shop.example/o/1"
    assert link.get("rel") == "noopener noreferrer"
    assert link.get("target") is None


def test_sanitizer_keeps_a_normal_rich_message_intact():
    html = (
        "<div><p>Hello <b>Ann</b>, <i>thanks</i> for <strong>your</strong> <em>order</em>.</p>"
        '<p>Track it <a href="https://track.example/1" title="Tracking">here</a>.<br>'
        "<u>Underlined</u> <s>struck</s> <span>span</span> <code>x = 1</code></p>"
        "<h2>Items</h2><ul><li>Box</li><li>Tape</li></ul><ol><li>Pack</li><li>Ship</li></ol>"
        '<blockquote>Quoted</blockquote><pre>  two  spaces</pre><hr>'
        '<img src="https://img.example/p.png" alt="Parcel" width="120" height="80">'
        '<table><thead><tr><th colspan="2">Summary</th></tr></thead>'
        "<tbody><tr><td>Weight</td><td>2 kg</td></tr></tbody></table></div>"
    )
    tree = parsed(sanitize_html(html))
    paragraphs = tree.findall(".//p")
    assert [p.text_content() for p in paragraphs] == [
        "Hello Ann, thanks for your order.",
        "Track it here.Underlined struck span x = 1",
    ]
    assert [(e.tag, e.text) for e in paragraphs[0]] == [("b", "Ann"), ("i", "thanks"), ("strong", "your"),
                                                      ("em", "order")]
    assert [e.tag for e in paragraphs[1]] == ["a", "br", "u", "s", "span", "code"]
    link = tree.find(".//a")
    assert (link.get("href"), link.get("title"), link.text) == ("https://track.example/1", "Tracking", "here")
    assert tree.find(".//h2").text == "Items"
    assert [li.text for li in tree.findall(".//ul/li")] == ["Box", "Tape"]
    assert [li.text for li in tree.findall(".//ol/li")] == ["Pack", "Ship"]
    assert tree.find(".//blockquote").text == "Quoted"
    assert tree.find(".//pre").text == "  two  spaces"
    assert tree.find(".//hr") is not None
    image = tree.find(".//img")
    assert (image.get("src"), image.get("alt"), image.get("width"), image.get("height")) == (
        "https://img.example/p.png", "Parcel", "120", "80")
    header = tree.find(".//table/thead/tr/th")
    assert (header.text, header.get("colspan")) == ("Summary", "2")
    assert [td.text for td in tree.findall(".//table/tbody/tr/td")] == ["Weight", "2 kg"]


def test_sanitizer_keeps_a_tag_heavy_message_intact():
    items = "".join(f'<li><a href="https://e.example/{n}">item {n}</a></li>' for n in range(3000))
    tree = parsed(sanitize_html(f"<p>List:</p><ul>{items}</ul><script>alert(1)</script>"))
    links = tree.findall(".//ul/li/a")
    assert len(links) == 3000
    assert (links[0].text, links[0].get("href"), links[0].get("rel")) == (
        "item 0", "https://e.example/0", "noopener noreferrer")
    assert links[-1].text == "item 2999"
    assert tree.find(".//p").text == "List:"
    assert "alert" not in tree.text_content()


def test_sanitizer_stays_fast_on_deeply_nested_html():
    html = "<div>x" * 50_000
    started = time.perf_counter()
    clean = sanitize_html(html)
    assert time.perf_counter() - started < 2.0  # html5ever alone takes about 8 s on this
    assert "x" in clean


def test_sanitizer_of_empty_input_is_empty():
    assert sanitize_html("") == ""


# --- html_to_text -------------------------------------------------------------------------------------------------


def test_div_with_line_breaks_and_a_link_renders_as_in_the_bug_report():
    html = '<div>Hello <b>Ann</b>,<br>it left today.<br><a href="https://track.example/1">track</a></div>'
    assert html_to_text(html) == "Hello Ann,\nit left today.\ntrack (https://track.example/1)"


def test_paragraphs_are_separated_by_one_blank_line():
    assert html_to_text("<p>Hello Ann,</p><p>It left today.</p>") == "Hello Ann,\n\nIt left today."


def test_links_render_as_text_then_url():
    html = '<p>See <a href="https://help.example/returns">our <b>returns</b> page</a> today.</p>'
    assert html_to_text(html) == "See our returns page (https://help.example/returns) today."


def test_link_whose_text_is_its_url_renders_the_url_once():
    html = '<p>Go to <a href="https://help.example/">  https://help.example/ </a></p>'
    assert html_to_text(html) == "Go to https://help.example/"


def test_mailto_link_whose_text_is_the_address_renders_the_address_once():
    html = '<p>Write to <a href="mailto:help@shop.example">help@shop.example</a>.</p>'
    assert html_to_text(html) == "Write to help@shop.example."


def test_mailto_link_with_other_text_renders_text_then_url():
    html = '<a href="mailto:help@shop.example">our team</a>'
    assert html_to_text(html) == "our team (mailto:help@shop.example)"


def test_link_without_href_renders_just_its_text():
    assert html_to_text("<p>a <a>plain</a> word</p>") == "a plain word"


def test_link_without_text_renders_its_url():
    html = '<p>Logo: <a href="https://shop.example/"><img src="https://shop.example/logo.png"></a></p>'
    assert html_to_text(html) == "Logo: https://shop.example/"


def test_unordered_list_items_get_a_dash_each_on_its_own_line():
    html = "<p>You ordered:</p>\n<ul>\n  <li>a box</li>\n  <li>some <b>tape</b></li>\n</ul>\n<p>Thanks</p>"
    assert html_to_text(html) == "You ordered:\n\n- a box\n- some tape\n\nThanks"


def test_ordered_list_items_are_numbered_from_the_start_attribute():
    assert html_to_text("<ol><li>Pack</li><li>Ship</li></ol>") == "1. Pack\n2. Ship"
    assert html_to_text('<ol start="3"><li>Pack</li><li>Ship</li></ol>') == "3. Pack\n4. Ship"


def test_nested_list_and_paragraphs_in_items_add_no_blank_lines():
    html = "<ul><li><p>Fruit</p><ol><li>apple</li><li>pear</li></ol></li><li>Bread</li></ul>"
    assert html_to_text(html) == "- Fruit\n1. apple\n2. pear\n- Bread"


def test_nested_divs_do_not_multiply_line_breaks():
    html = "<div><div><div>one</div></div></div><div><div><div><div>two</div></div></div></div>"
    assert html_to_text(html) == "one\ntwo"


def test_divs_are_lines_and_an_empty_div_line_is_a_blank_line_as_desk_s_editor_writes_them():
    html = "<div>Hi Ann,</div><div><br></div><div>It left today.</div><div>Regards</div>"
    assert html_to_text(html) == "Hi Ann,\n\nIt left today.\nRegards"


def test_paragraphs_between_divs_keep_their_blank_lines():
    assert html_to_text("<div>a</div><p>b</p><div>c</div>") == "a\n\nb\n\nc"


def test_consecutive_blocks_give_at_most_one_blank_line():
    html = (
        "<h1>Title</h1>\n<blockquote><p>Quoted</p></blockquote>\n<div><br></div>\n<hr>\n"
        "<p>&nbsp;</p><p>Body<br></p>\n\n<pre>code</pre><div></div><p>Sign-off</p>"
    )
    assert html_to_text(html) == "Title\n\nQuoted\n\nBody\n\ncode\n\nSign-off"


def test_br_is_a_single_line_break_and_two_make_a_blank_line():
    assert html_to_text("one<br>two<br/>three") == "one\ntwo\nthree"
    assert html_to_text("one<br><br>two") == "one\n\ntwo"


def test_inline_whitespace_collapses_and_no_line_is_indented():
    html = "<div>\n    Hello     <b> Ann </b>\n    ,\t how\n  are   you?   \n</div>\n   <p>   Next   line   </p>"
    assert html_to_text(html) == "Hello Ann , how are you?\n\nNext line"


def test_pre_is_kept_verbatim():
    html = "<p>Run:</p><pre>\nif ready:\n    ship(  order  )\n\n# done</pre><p>Then wait.</p>"
    assert html_to_text(html) == "Run:\n\nif ready:\n    ship(  order  )\n\n# done\n\nThen wait."


def test_entities_are_decoded_and_nbsp_is_a_space():
    html = "<p>Fish &amp; chips &lt;b&gt; &quot;fresh&quot; &#8364;5&nbsp;each &eacute;t&eacute;</p>"
    assert html_to_text(html) == 'Fish & chips <b> "fresh" \u20ac5 each \u00e9t\u00e9'


def test_script_and_style_content_never_appears():
    html = (
        "<html><head><title>Mail</title><style>p { color: red }</style><script>var a = 1;</script></head>"
        "<body><p>Visible<script>document.write('hidden')</script> text</p><style>.x{}</style></body></html>"
    )
    assert html_to_text(html) == "Visible text"


def test_table_rows_render_on_their_own_lines_with_cells_separated_by_bars():
    html = (
        "<p>Your order:</p><table><thead><tr><th>Item</th><th>Qty</th></tr></thead>"
        "<tbody><tr><td>Box</td><td><p>2</p></td></tr><tr><td>Tape</td><td>1</td></tr></tbody></table><p>Bye</p>"
    )
    assert html_to_text(html) == "Your order:\n\nItem | Qty\nBox | 2\nTape | 1\n\nBye"


@pytest.mark.parametrize("html", ["", "   ", "\n\t \n", "<!-- nothing -->", "<p> </p>", "<br><br>", "<div>&nbsp;</div>",
                                  "<script>x()</script>"])
def test_empty_or_blank_html_renders_as_empty_string(html):
    assert html_to_text(html) == ""


def test_three_hundred_kilobytes_of_paragraphs_render_quickly():
    paragraph = "<p>Paragraph {n}: the parcel left our <b>warehouse</b> &amp; is on its way.</p>\n"
    html = "".join(paragraph.format(n=n) for n in range(4000))
    assert len(html) > 300_000
    started = time.perf_counter()
    text = html_to_text(html)
    assert time.perf_counter() - started < 1.0  # about 40 ms; quadratic work would take many seconds
    lines = text.split("\n")
    assert len(lines) == 4000 * 2 - 1
    assert lines[0] == "Paragraph 0: the parcel left our warehouse & is on its way."
    assert lines[1] == ""
    assert lines[-1] == "Paragraph 3999: the parcel left our warehouse & is on its way."


def test_deeply_nested_html_does_not_raise_and_keeps_its_text():
    html = "<div>" * 10_000 + "deep" + "</div>" * 10_000 + "<p>after</p>"
    assert html_to_text(html) == "deep\n\nafter"


def test_deeply_nested_html_with_stray_end_tags_keeps_its_text():
    html = "<div>one" + "<span></i>" * 5000 + "two</div><p>end</p>"
    assert html_to_text(html) == "onetwo\n\nend"


@pytest.mark.parametrize(("html", "expected"), [
    ('<?xml version="1.0" encoding="utf-8"?><p>xml</p>', "xml"),
    ("<p>a\ud800b</p>", "a?b"),
    ("<p>nul\x00here</p>", "nul\ufffdhere"),
    ("<<<>>>", "<<<>>>"),
    ("<p>unclosed <b>bold", "unclosed bold"),
])
def test_odd_input_renders_best_effort_without_raising(html, expected):
    assert html_to_text(html) == expected


# --- subject_line -------------------------------------------------------------------------------------------------


def test_subject_line_is_the_first_non_empty_line_stripped():
    assert subject_line("\n  \n  Where is my parcel?  \nIt was due Monday.") == "Where is my parcel?"


def test_subject_line_is_cut_to_255_characters():
    assert subject_line("x" * 300) == "x" * 255


def test_subject_line_of_blank_text_is_empty():
    assert subject_line(" \n\t\n") == ""
