"""Citations in a final answer: `【{cursor}†L{start}-L{end}】` turned into links to what was cited.

The model cites by cursor and line numbers of the pages it saw. Resolving them needs the tool's
page stack; each becomes a markdown link to the page, with a text fragment (`#:~:text=`) that
makes a browser scroll to and highlight the cited lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from .html_text import domain_of
from .pages import PageStack, strip_link_markers

CITATION = re.compile(r"【(\d+)†L(\d+)(?:\s*-\s*L?(\d+))?】")
_FRAGMENT_WORDS = 5
_MARKER = re.compile(r"^(?:#+|\*|\d+\.|>)\s+")


@dataclass(frozen=True)
class Citation:
    """One resolved citation."""

    start: int
    end: int
    """Character span of the citation in the original text."""
    cursor: int
    first_line: int
    last_line: int
    url: str
    """The cited page (for a find page, the page that was searched)."""
    title: str
    quote: str
    """The cited lines as the model saw them, link markers reduced to their text."""
    link: str
    """`url` with a text fragment pointing at the cited lines."""


@dataclass(frozen=True)
class CitedText:
    text: str
    """The answer with each resolvable citation replaced by ` ([domain](link))`."""
    citations: list[Citation]


def resolve_citations(text: str, stack: PageStack) -> CitedText:
    """Replace the citations in `text` that point at real pages and lines; leave others as is."""
    out: list[str] = []
    citations: list[Citation] = []
    last = 0
    for match in CITATION.finditer(text):
        citation = _resolve(match, stack)
        out.append(text[last : match.start()])
        last = match.end()
        if citation is None:
            out.append(match.group(0))
            continue
        citations.append(citation)
        before = "".join(out)
        space = "" if not before or before[-1].isspace() else " "
        out.append(f"{space}([{domain_of(citation.url) or citation.url}]({citation.link}))")
    out.append(text[last:])
    return CitedText("".join(out), citations)


def _resolve(match: re.Match[str], stack: PageStack) -> Citation | None:
    cursor, first = int(match.group(1)), int(match.group(2))
    last = int(match.group(3)) if match.group(3) else first
    if not 0 <= cursor < len(stack) or last < first:
        return None
    page = stack.pages[cursor]
    # A find page's citations point at the searched page, whose URL its links hold.
    url = next(iter(page.links.values()), "") if page.kind == "find" else page.url
    if not url.startswith(("http://", "https://")) or first >= len(page.lines):
        return None
    lines = [strip_link_markers(line).strip() for line in page.lines[first : last + 1]]
    quote_text = "\n".join(lines)
    return Citation(
        start=match.start(),
        end=match.end(),
        cursor=cursor,
        first_line=first,
        last_line=min(last, len(page.lines) - 1),
        url=url,
        title=page.title,
        quote=quote_text,
        link=url.split("#")[0] + _text_fragment(lines),
    )


def _text_fragment(lines: list[str]) -> str:
    """`#:~:text=start,end` from the first and last words of the cited lines ("" if none)."""
    # Markdown markers (`# `, `* `, `1. `, `> `) and the URL line are ours, not the page's.
    words = [
        w for line in lines if not line.startswith("URL:") for w in _MARKER.sub("", line).split()
    ]
    if not words:
        return ""
    if len(words) <= 2 * _FRAGMENT_WORDS:
        return "#:~:text=" + _fragment_quote(" ".join(words))
    start = " ".join(words[:_FRAGMENT_WORDS])
    end = " ".join(words[-_FRAGMENT_WORDS:])
    return f"#:~:text={_fragment_quote(start)},{_fragment_quote(end)}"


def _fragment_quote(text: str) -> str:
    # `-`, `,` and `&` are syntax inside a text fragment and must be percent-encoded.
    return quote(text, safe="")
