"""The page stack and what the model sees of a page: wrapped, numbered lines in ~1024-token views.

Every search, open and find pushes a page; its index on the stack is the cursor the model uses
to scroll, follow links and cite (`【{cursor}†L{start}-L{end}】`). Formats follow DESIGN.md §6.
"""

from __future__ import annotations

import functools
import html
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from .html_text import html_to_text

WRAP_WIDTH = 80
VIEW_TOKENS = 1024
FIND_CONTEXT_LINES = 4
FIND_MAX_RESULTS = 50
MAX_URL_IN_HEADER = 1024

# Link markers in a find match are shown as their text, so the pattern matches what the model
# reads; markers cut by wrapping (`...†text` at a line start, `【3†te` at its end) included.
_LINK = re.compile(r"【\d+†([^†】]+)(?:†[^†】]+)?】")
_CUT_START = re.compile(r"^[^【】]*】")
_CUT_END = re.compile(r"【\d*(?:†([^†】]*)(?:†[^†】]*)?)?$")


@dataclass
class Page:
    """One entry of the page stack."""

    url: str
    title: str
    text: str
    """The full text, starting with the empty line and the `URL:` line."""
    links: dict[int, str] = field(default_factory=dict)
    """Link id -> absolute URL, for `open(id=...)`."""
    kind: str = "page"
    """"page", "search" (a search result page) or "find" (a find result page)."""
    targets: dict[int, int] = field(default_factory=dict)
    """For find pages: link id -> the matching line in the page searched."""
    source: str | None = None
    """The document as fetched (HTML source), for `open(view_source=true)`."""

    @functools.cached_property
    def lines(self) -> list[str]:
        return wrap_lines(self.text)


def wrap_lines(text: str, width: int = WRAP_WIDTH) -> list[str]:
    """Lines of at most `width` characters; whitespace is kept so indentation survives."""
    lines: list[str] = []
    for line in text.split("\n"):
        if line:
            lines.extend(
                textwrap.wrap(line, width=width, replace_whitespace=False, drop_whitespace=False)
            )
        else:
            lines.append("")
    return lines


def numbered(lines: list[str], start: int) -> str:
    return "\n".join(f"L{start + i}: {line}" for i, line in enumerate(lines))


# -- views -------------------------------------------------------------------------------------

TokenCounter = Callable[[str, int], int]
"""`(text, budget) -> characters of text that fit in `budget` tokens` (all of it if it fits)."""


@functools.cache
def _encoding():  # type: ignore[no-untyped-def]
    from harmony_agent.encoding import harmony_encoding

    return harmony_encoding()


def harmony_prefix_chars(text: str, budget: int) -> int:
    """How many characters of `text` fit in `budget` tokens of the gpt-oss encoding."""
    if len(text) <= budget:  # a token is at least one character
        return len(text)
    enc = _encoding()
    window = budget * 8
    while True:
        tokens = enc.encode(text[:window], allowed_special=set())
        if len(tokens) > budget or window >= len(text):
            break
        window *= 4
    if len(tokens) <= budget:
        return len(text)
    return len(enc.decode(tokens[:budget]))


def approximate_prefix_chars(text: str, budget: int) -> int:
    """A tokenizer-free stand-in: about four characters per token."""
    return min(len(text), budget * 4)


def view_end(
    lines: list[str], loc: int, num_lines: int, view_tokens: int, fit: TokenCounter
) -> int:
    """The line after the last one shown from `loc`: `num_lines` of them, or as many as fit
    in `view_tokens` tokens (counting the `L{n}: ` prefixes, rounding up to whole lines)."""
    if num_lines > 0:
        return min(loc + num_lines, len(lines))
    text = numbered(lines[loc:], loc)
    chars = fit(text, view_tokens)
    if chars >= len(text):
        return len(lines)
    return min(loc + text[:chars].count("\n") + 1, len(lines))


def render_view(
    page: Page,
    cursor: int,
    loc: int,
    num_lines: int = -1,
    *,
    view_tokens: int = VIEW_TOKENS,
    fit: TokenCounter = harmony_prefix_chars,
) -> str:
    """The text the model gets: header, scrollbar, blank line, numbered lines."""
    lines = page.lines
    last = len(lines) - 1
    if not 0 <= loc <= last:
        raise ValueError(
            f"Invalid location parameter: `{loc}`. Cannot exceed page maximum of {last}."
        )
    end = view_end(lines, loc, num_lines, view_tokens, fit)
    header = f"[{cursor}] {page.title}"
    if url := unquote(page.url):
        if len(url) > MAX_URL_IN_HEADER:
            url = url[: MAX_URL_IN_HEADER - 3] + "..."
        header += f" ({url})"
    return f"{header}\n**viewing lines [{loc} - {end - 1}] of {last}**\n\n" + numbered(
        lines[loc:end], loc
    )


# -- find and search pages ---------------------------------------------------------------------


def strip_link_markers(line: str) -> str:
    line = _CUT_START.sub("", line)
    line = _CUT_END.sub(lambda m: m.group(1) or "", line)
    return _LINK.sub(lambda m: m.group(1), line)


def find_page(page: Page, pattern: str) -> Page:
    """The result page of `find(pattern)` on `page`: one heading link per match (case-insensitive),
    each followed by the matching line and the next few."""
    needle = pattern.lower()
    lines = [strip_link_markers(line) for line in page.lines]
    chunks: list[str] = []
    targets: dict[int, int] = {}
    i = 0
    while i < len(lines) and len(chunks) < FIND_MAX_RESULTS:
        if needle not in lines[i].lower():
            i += 1
            continue
        match = len(chunks)
        snippet = "\n".join(lines[i : i + FIND_CONTEXT_LINES])
        chunks.append(f"# 【{match}†match at L{i}】\n{snippet}")
        targets[match] = i
        i += FIND_CONTEXT_LINES  # the shown lines are not searched again
    text = "\n\n".join(chunks) if chunks else f"No `find` results for pattern: `{pattern}`"
    return Page(
        url=f"{page.url}/find?pattern={quote(pattern)}",
        title=f"Find results for text: `{pattern}` in `{page.title}`",
        text=text,
        links=dict.fromkeys(targets, page.url),
        kind="find",
        targets=targets,
    )


@dataclass(frozen=True)
class SearchResult:
    """One hit from a search backend."""

    url: str
    title: str
    snippet: str = ""


def search_page(query: str, results: list[SearchResult]) -> Page:
    """The search result page, shaped as the model saw it in training: titled by the query, with
    an empty URL, a `# Search Results` heading and one list item per hit (link, then snippet)."""
    items = "".join(
        f"<li><a href='{html.escape(r.url, quote=True)}'>{html.escape(r.title or r.url)}</a> "
        f"{html.escape(r.snippet)}</li>"
        for r in results
    )
    converted = html_to_text(
        f"<html><body><h1>Search Results</h1><ul>{items}</ul></body></html>", "", title=query
    )
    return Page(url="", title=query, text=converted.text, links=converted.links, kind="search")


# -- the stack ---------------------------------------------------------------------------------


class PageStack:
    """Pages in the order they were shown; a page's index is its cursor."""

    def __init__(self) -> None:
        self.pages: list[Page] = []
        self.by_url: dict[str, Page] = {}
        """The latest page fetched for each URL: following a link reuses it."""

    def __len__(self) -> int:
        return len(self.pages)

    def push(self, page: Page) -> int:
        self.pages.append(page)
        if page.kind == "page":
            self.by_url[page.url] = page
        return len(self.pages) - 1

    def pop(self) -> None:
        self.pages.pop()

    def get(self, cursor: int = -1) -> Page:
        """The page at `cursor` (-1: the latest); LookupError (message for the model) if none."""
        if not self.pages:
            raise LookupError("No pages to access! Open a URL or search first.")
        if cursor == -1:
            return self.pages[-1]
        if not 0 <= cursor < len(self.pages):
            raise LookupError(
                f"Cursor `{cursor}` is out of range. "
                f"Available cursor indices: [0 - {len(self.pages) - 1}]."
            )
        return self.pages[cursor]
