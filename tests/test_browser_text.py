"""The browser's text format without a browser: HTML conversion, views, find, citations."""

from __future__ import annotations

import pytest

from harmony_agent.tools.browser import (
    Page,
    PageStack,
    SearchResult,
    approximate_prefix_chars,
    find_page,
    harmony_prefix_chars,
    html_to_text,
    render_view,
    resolve_citations,
    search_page,
    strip_link_markers,
    wrap_lines,
)

URL = "http://site.test/dir/index.html"


def convert(body: str, title: str = "T") -> str:
    page = html_to_text(f"<html><head><title>{title}</title></head><body>{body}</body></html>", URL)
    return page.text


def test_url_line_comes_first_after_an_empty_line():
    text = convert("<p>hello</p>")
    assert text.split("\n")[:3] == ["", f"URL: {URL}", "hello"]


def test_links_same_site_external_and_text_only():
    page = html_to_text(
        "<p><a href='/a'>same</a> <a href='https://other.test/x'>far</a> "
        "<a href='#top'>frag</a> <a href='mailto:x@y.z'>mail</a> "
        "<a href='javascript:void(0)'>js</a> <a href='file:///etc/passwd'>file</a> "
        "<a href='a?x=1'>rel</a> <a href='/a'>again</a></p>",
        URL,
    )
    assert "【0†same】 【1†far†other.test】 frag mail js file 【2†rel】 【0†again】" in page.text
    assert page.links == {
        0: "http://site.test/a",
        1: "https://other.test/x",
        2: "http://site.test/dir/a?x=1",
    }


def test_special_characters_are_escaped():
    text = convert("<p>【x】 a†b <a href='/q'>dagger † link 【y】</a></p>")
    assert "〖x〗 a†b 【0†dagger ‡ link 〖y〗】" in text


def test_images_are_numbered_in_page_order():
    text = convert(
        "<img src=a.png alt='A cat'> <img src=b.png> <a href='/x'><img src=c.png alt='linked'></a>"
    )
    assert "[Image 0: A cat] [Image 1] [Image 2: linked]" in text


def test_headings_lists_tables_pre_and_quotes():
    text = convert(
        "<h1>Main</h1><h3>Sub</h3><ul><li>one</li><li>two<ul><li>deep</li></ul></li></ul>"
        "<ol start='3'><li>three</li><li>four</li></ol>"
        "<table><tr><th>Name</th><th>Value</th></tr><tr><td>a</td><td>1</td></tr></table>"
        "<pre>def f():\n    return 1</pre><blockquote>quoted</blockquote>"
    )
    lines = text.split("\n")[2:]
    # Trailing spaces as the reference writes them: a word that only tags separate from the
    # next word gets one (`one</li><li>two`), table rows end in two more.
    assert lines == [
        "# Main ",
        "",
        "### Sub ",
        "",
        "  * one ",
        "  * two ",
        "    * deep ",
        "",
        "  3. three ",
        "  4. four ",
        "",
        "Name Value   ",
        "a 1   ",
        "",
        "    def f():",
        "        return 1 ",
        "",
        "> quoted",
    ]


def test_scripts_styles_and_hidden_content_are_dropped():
    text = convert(
        "<style>.x{color:red}</style><script>var secret = 1</script><p>shown</p>"
        "<div hidden>hidden1</div><p style='display: none'>hidden2</p><noscript>nojs</noscript>"
    )
    assert "shown" in text
    for absent in ("color", "secret", "hidden1", "hidden2", "nojs"):
        assert absent not in text


def test_whitespace_collapses_and_blank_runs_merge():
    text = convert("<p>a   b\n\n c</p><div></div><div> </div><p>d</p><br><br><br><p>e</p>")
    assert text.split("\n")[2:] == ["a b c", "", "d ", "", "e"]  # `d</p><br>...<p>e`: glued


def test_trailing_spaces_follow_the_reference():
    # Worked out from the reference's rules (gpt-oss 0.0.9, simple_browser/page_contents.py and
    # html2text 2025.4.15 under it): a text's trailing whitespace stays as one space; a word
    # followed across tags only by a word gets a space; `</tr>` adds two spaces, `<br>` two
    # more (after any pending space); leading whitespace after a bullet is dropped; the whole
    # text is stripped at both ends.
    text = convert(
        "<p>\n  A paragraph that\n  wraps it.\n</p>\n<p>Ends in a period.</p>"
        "<ol><li>one</li><li>two</li></ol><p>Constants</p>"
        "<table>\n<tr><td>pi</td><td>3.14159</td></tr>\n<tr><td>e</td><td>2.71828</td></tr>\n"
        "</table>\n<table><tr><td>(a)</td><td>(b)</td></tr></table>"
        "<p>line<br>broken <br>twice<br><br>apart</p>"
        "<ul><li>\n  spaced\n</li><li><a href='/x'>linked</a></li></ul>"
        "<p><span>a</span><span>b</span> <b> bold</b> and two <b> spaces</b></p>"
        "<h2>Last heading</h2>"
    )
    assert text.split("\n")[2:] == [
        "A paragraph that wraps it. ",
        "",
        "Ends in a period.",
        "",
        "  1. one ",
        "  2. two ",
        "",
        "Constants",
        "",
        "pi 3.14159  ",
        "e 2.71828  ",
        "(a)(b)  ",
        "",
        "line   ",
        "broken   ",
        "twice   ",
        "",
        "apart",
        "",
        "  * spaced ",
        "  * 【0†linked】",
        "",
        "a b bold and two  spaces ",
        "",
        "## Last heading",
    ]


def test_title_falls_back_to_the_domain():
    page = html_to_text("<html><body><p>x</p></body></html>", URL)
    assert page.title == "site.test"


def test_wrap_at_80_columns_keeps_indentation():
    lines = wrap_lines("word " * 40 + "\n\n    indented " + "x" * 100)
    assert all(len(line) <= 80 for line in lines)
    assert lines[0].startswith("word word")
    assert "" in lines
    assert any(line.startswith("    indented") for line in lines)


def make_page(n_lines: int = 625) -> Page:
    body = "\n".join(f"line {i} " + "lorem ipsum dolor sit amet " * 2 for i in range(n_lines - 2))
    return Page(
        url="http://site.test/long", title="Long", text="\nURL: http://site.test/long\n" + body
    )


def test_view_header_scrollbar_and_numbering():
    page = make_page(50)
    view = render_view(page, 3, 0, fit=approximate_prefix_chars)
    lines = view.split("\n")
    assert lines[0] == "[3] Long (http://site.test/long)"
    assert lines[1] == "**viewing lines [0 - 49] of 49**"
    assert lines[2] == ""
    assert lines[3] == "L0: "
    assert lines[4] == "L1: URL: http://site.test/long"
    assert lines[5].startswith("L2: line 0 lorem")


@pytest.mark.parametrize("fit", [harmony_prefix_chars, approximate_prefix_chars])
def test_views_hold_about_1024_tokens(fit):
    page = make_page(625)
    view = render_view(page, 0, 0, fit=fit)
    header, _, body = view.partition("\n\n")
    first, last = header.split("[")[2].split("]")[0].split(" - ")
    assert first == "0"
    assert 40 < int(last) < 200
    assert header.endswith(f"of {len(page.lines) - 1}**")
    assert body.split("\n")[-1].startswith(f"L{last}: ")
    # scrolling continues where asked, and num_lines overrides the token budget
    view = render_view(page, 1, 300, num_lines=5, fit=fit)
    assert "**viewing lines [300 - 304] of" in view


def test_loc_past_the_end_is_an_error():
    with pytest.raises(ValueError, match="Cannot exceed page maximum of 9"):
        render_view(make_page(10), 0, 10, fit=approximate_prefix_chars)


def test_url_in_header_is_unquoted_and_empty_url_omitted():
    page = Page(url="http://site.test/a%20b", title="T", text="\nURL: x\nbody")
    assert render_view(page, 0, 0).startswith("[0] T (http://site.test/a b)\n")
    page = Page(url="", title="query", text="\nURL: \nbody")
    assert render_view(page, 0, 0).startswith("[0] query\n")


def test_find_page_format_and_targets():
    page = make_page(100)
    found = find_page(page, "LINE 5 ")
    assert found.title == "Find results for text: `LINE 5 ` in `Long`"
    assert found.url == "http://site.test/long/find?pattern=LINE%205%20"
    lines = found.text.split("\n")
    assert lines[0] == "# 【0†match at L7】"
    assert lines[1].startswith("line 5 lorem")
    assert len(lines) == 5  # the heading, the match and the three lines after it
    assert found.targets == {0: 7}
    assert found.links == {0: page.url}


def test_find_skips_lines_already_shown_and_reports_nothing_found():
    page = Page(url="u", title="t", text="\n".join(["match"] * 10))
    found = find_page(page, "match")
    assert found.targets == {0: 0, 1: 4, 2: 8}
    assert find_page(page, "zzz").text == "No `find` results for pattern: `zzz`"


def test_find_matches_link_text_not_markers():
    page = Page(url="u", title="t", text="see 【3†the docs†x.test】 now")
    assert strip_link_markers(page.lines[0]) == "see the docs now"
    assert find_page(page, "the docs now").targets == {0: 0}
    assert strip_link_markers("cut 【12†link te") == "cut link te"
    assert strip_link_markers("xt†far.test】 after") == " after"


def test_search_page_format():
    page = search_page(
        "cats",
        [
            SearchResult("https://a.test/cats", "All <about> cats", "Cats are great."),
            SearchResult("https://b.test/", "B", ""),
        ],
    )
    assert page.title == "cats"
    assert page.url == ""
    assert page.text.split("\n") == [
        "",
        "URL: ",
        "# Search Results",  # the next text, a link marker, starts with no word character
        "",
        "  * 【0†All <about> cats†a.test】 Cats are great.",
        "  * 【1†B†b.test】",
    ]
    assert page.links == {0: "https://a.test/cats", 1: "https://b.test/"}


def test_stack_errors_are_messages():
    stack = PageStack()
    with pytest.raises(LookupError, match="No pages"):
        stack.get()
    stack.push(make_page(5))
    with pytest.raises(LookupError, match=r"Cursor `4` is out of range.*\[0 - 0\]"):
        stack.get(4)


def test_citations_become_links_to_the_cited_lines():
    stack = PageStack()
    stack.push(Page(url="", title="q", text="\nURL: \nresults", kind="search"))
    page = Page(
        url="https://docs.test/guide#intro",
        title="Guide",
        text="\nURL: https://docs.test/guide\n# Install \nRun pip install thing to get it.\n"
        "Then 【0†configure†x.test】 it, please.",
    )
    stack.push(page)
    stack.push(find_page(page, "then"))
    cited = resolve_citations(
        "Install with pip【1†L3】 and configure 【1†L2-L4】. Found【2†L1】. Bad【9†L1】【0†L1】.",
        stack,
    )
    assert [c.cursor for c in cited.citations] == [1, 1, 2]
    first, second, third = cited.citations
    assert first.quote == "Run pip install thing to get it."
    assert (
        first.link == "https://docs.test/guide#:~:text=Run%20pip%20install%20thing%20to%20get%20it."
    )
    assert (second.first_line, second.last_line) == (2, 4)
    assert second.link.startswith("https://docs.test/guide#:~:text=Install%20Run%20pip")
    assert "configure it, please." in second.quote
    assert third.url == "https://docs.test/guide#intro"  # the searched page
    assert cited.text.startswith(
        "Install with pip ([docs.test](https://docs.test/guide#:~:text=Run"
    )
    assert cited.text.endswith("Bad【9†L1】【0†L1】.")  # unknown cursor, search page: unchanged
