"""HTML to the plain text the model reads: markdown-ish blocks, numbered link markers, no markup.

The format is the one gpt-oss was trained on (see DESIGN.md §6): links become `【{id}†{text}】`
(same site) or `【{id}†{text}†{domain}】`, images `[Image N: alt]`, headings `# Title `, list
items `  * item` / `  1. item`, table rows their cells joined by spaces, `<pre>` lines indented
by four spaces. Text is prefixed by an empty line and `URL: {url}`.

Whitespace follows the reference tool (html2text behind a regex) to the byte, trailing spaces
included: a word directly followed, across tags only, by another word gets a space
(`one</li><li>two` -> `one `); a text's trailing whitespace is kept as one space, its leading
whitespace only separates it from text before it on the line; table rows end in two spaces and
`<br>` in two more; the whole text is stripped at both ends.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import lxml.html
from lxml import etree

# Characters the model reads as link syntax must not appear in page text: swap them for
# look-alikes, as the reference tool does. Zero-width spaces only split words.
_SPECIAL = str.maketrans({"【": "〖", "】": "〗", "◼": "◾", "\u200b": None})
_WS = re.compile(r"\s+")
_BLANK_RUNS = re.compile(r"\n{3,}")

# Never rendered: code, styling, invisible or interactive-only content.
_SKIP = {
    "script", "style", "noscript", "template", "head", "svg", "math", "canvas", "iframe",
    "object", "embed", "select", "input", "button", "audio", "video", "map", "dialog",
}  # fmt: skip
# Elements that start a new paragraph (a blank line before and after).
_PARAGRAPH = {
    "p", "div", "section", "article", "main", "header", "footer", "nav", "aside", "form",
    "fieldset", "figure", "figcaption", "address", "details", "summary", "dl", "hgroup",
    "center", "caption", "legend",
}  # fmt: skip
# Elements that start a new line without a blank one.
_LINE = {"dt", "dd", "option", "label"}
_HEADINGS = {f"h{i}": i for i in range(1, 7)}
_WORD = re.compile(r"\w")
_COMPACT = re.compile(r"[\w\-]+")  # <sup>/<sub> text written inline as ^{...} / _{...}


# windows-1252 as browsers decode it: Latin-1, except 0x80-0x9F, which are mostly punctuation
# (the five bytes cp1252 leaves undefined stay C1 controls, as in the WHATWG table).
_CP1252_HIGH = {
    chr(byte): bytes([byte]).decode("cp1252")
    for byte in range(0x80, 0xA0)
    if byte not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)
}
_FROM_LATIN1 = str.maketrans(_CP1252_HIGH)
_TO_LATIN1 = str.maketrans({char: latin for latin, char in _CP1252_HIGH.items()})
_MISREAD_RUN = re.compile("[\x80-\xff" + "".join(_CP1252_HIGH.values()) + "]+")


def decode_text(data: bytes) -> str:
    """Bytes with no trustworthy charset, as a detecting browser reads them: UTF-8 when they
    are valid UTF-8, else windows-1252 (which decodes anything)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1").translate(_FROM_LATIN1)


def undo_windows_1252(text: str) -> str:
    """Text decoded as windows-1252 from UTF-8 bytes, read again as UTF-8 (`cafÃ©` -> `café`).

    Only runs of characters that windows-1252 bytes decode to, and that form valid UTF-8 again,
    change: text a script wrote correctly (`é` alone, `【`) is left as it is.
    """

    def redo(run: re.Match[str]) -> str:
        try:
            return run.group().translate(_TO_LATIN1).encode("latin-1").decode("utf-8")
        except UnicodeDecodeError:
            return run.group()

    return _MISREAD_RUN.sub(redo, text)


def clean_text(text: str) -> str:
    """Page text with the link-syntax characters replaced by look-alikes."""
    return text.translate(_SPECIAL)


def domain_of(url: str) -> str:
    """The host[:port] of a URL, as shown after the second `†` of an external link."""
    try:
        return urlsplit(url).netloc
    except ValueError:
        return ""


@dataclass
class PageText:
    """A converted page: its title, text (URL line included) and link id -> URL."""

    title: str
    text: str
    links: dict[int, str] = field(default_factory=dict)


def html_to_text(html: str, url: str, title: str | None = None) -> PageText:
    """Convert a rendered page's HTML to the model's text format."""
    try:
        root = lxml.html.document_fromstring(html) if html.strip() else None
    except (etree.ParserError, ValueError):
        root = None
    if root is None:
        return PageText(title=title or domain_of(url), text=with_url_line(url, ""))
    if not title:
        found = root.find(".//title")
        title = _WS.sub(" ", found.text_content()).strip() if found is not None else ""
    converter = _Converter(url)
    body = root.find("body")
    converter.glue_words(body if body is not None else root)
    converter.walk(body if body is not None else root)
    return PageText(
        title=clean_text(title or domain_of(url)),
        text=with_url_line(url, converter.finish()),
        links=converter.links,
    )


def with_url_line(url: str, text: str) -> str:
    """The text with its header: an empty line, then `URL: {url}`."""
    return f"\nURL: {url}\n{text}"


def plain_text_page(text: str) -> str:
    """Non-HTML text (text/plain, JSON, PDF text): cleaned, trailing spaces and blank runs cut."""
    text = clean_text(text.replace("\r\n", "\n").replace("\r", "\n"))
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _BLANK_RUNS.sub("\n\n", text).strip("\n")


class _Converter:
    """Walks the tree once, writing blocks of text line by line."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.domain = domain_of(url)
        self.links: dict[int, str] = {}
        self._link_ids: dict[str, int] = {}
        self.images = 0
        self.lines: list[str] = []
        self.current: list[str] = []  # inline pieces of the line being written
        self.space = False  # leading whitespace seen since the last piece
        self.fresh = False  # just after a list bullet: leading whitespace is dropped
        self.indent: list[str] = []  # prefixes of enclosing lists and quotes
        self.ordered: list[bool] = []  # enclosing lists: numbered or not
        self.inline_only = 0  # > 0 inside headings and table cells: newlines become spaces

    # -- output --------------------------------------------------------------------------

    def text(self, raw: str) -> None:
        """Inline text: whitespace collapses to single spaces. A leading one only separates this
        from what comes before on the line; a trailing one is written (and may end the line)."""
        if not raw:
            return
        collapsed = _WS.sub(" ", clean_text(raw))
        if collapsed.startswith(" "):
            self.space = True
            collapsed = collapsed[1:]
        if collapsed:
            self.piece(collapsed)

    def piece(self, text: str) -> None:
        """An unbreakable piece (a word run, a link marker)."""
        if self.space and self.current and not self.fresh:
            self.current.append(" ")
        self.space = self.fresh = False
        self.current.append(text)

    def bullet(self, mark: str) -> None:
        self.piece(mark + " ")
        self.fresh = True

    def newline(self) -> None:
        if self.inline_only:
            self.space = True
            return
        if self.current:
            self.lines.append("".join(self.indent) + "".join(self.current))
        self.current = []
        self.space = False

    def blank(self) -> None:
        if self.inline_only:
            self.space = True
            return
        self.newline()
        if self.lines and self.lines[-1] != "":
            self.lines.append("")

    def finish(self) -> str:
        self.newline()
        # Whitespace-only lines become empty; other lines keep their ends (`# Title `).
        text = "\n".join(line if line.strip() else "" for line in self.lines)
        return _BLANK_RUNS.sub("\n\n", text).strip()

    # -- the reference's word gluing -----------------------------------------------------

    def glue_words(self, root: etree._Element) -> None:
        """Give each text that ends in a word character, and that only tags separate from a
        text starting with one, a trailing space: the reference does this to the HTML (with a
        regex) before converting it. Unrendered text (scripts, hidden elements) counts, as it
        does there; link markers, images and `^{...}` are text starting and ending otherwise."""
        slots: list[tuple[etree._Element, str] | None] = []  # None: a marker

        def visit(node: etree._Element) -> None:
            if not isinstance(node.tag, str):
                pass  # a comment: all inside `<...>` to the regex, only its tail is text
            elif self._written_whole(node):
                slots.append(None)
            elif node.tag.lower() != "math":  # the reference removes math, text and all
                slots.append((node, "text"))
                for child in node:
                    visit(child)
            slots.append((node, "tail"))

        visit(root)
        texts = [(slot, "【】" if slot is None else getattr(*slot) or "") for slot in slots]
        texts = [(slot, text) for slot, text in texts if text]
        for (slot, text), (_, following) in itertools.pairwise(texts):
            if slot is not None and _WORD.match(text[-1]) and _WORD.match(following[0]):
                setattr(*slot, text + " ")

    def _written_whole(self, node: etree._Element) -> bool:
        """Elements written as one piece: a link marker, an image, a compact `^{...}`."""
        tag = node.tag.lower()
        if tag in ("sup", "sub"):
            return _COMPACT.fullmatch(node.text_content().strip()) is not None
        return tag == "img" or (tag == "a" and self._link_target(node) is not None)

    # -- tree ----------------------------------------------------------------------------

    def walk(self, node: etree._Element) -> None:
        self.text(node.text or "")
        for child in node:
            if isinstance(child.tag, str):  # skip comments and processing instructions
                self.element(child)
            self.text(child.tail or "")

    def element(self, node: etree._Element) -> None:
        tag = node.tag.lower()
        if tag in _SKIP or _hidden(node):
            return
        if tag in _HEADINGS:
            self.blank()
            self.inline_only += 1
            mark = "#" * _HEADINGS[tag] + " "
            self.piece(mark)
            self.walk(node)
            if self.current == [mark]:
                self.current = []  # an empty heading: no lone `#`
            self.space = False
            self.inline_only -= 1
            self.blank()
        elif tag == "a":
            self.link(node)
        elif tag == "img":
            self.image(node)
        elif tag == "br":
            if self.inline_only:
                self.newline()
            elif self.current:  # the reference writes a pending space, then `  \n`
                self.current.append("   " if self.space else "  ")
                self.newline()
            else:
                self.lines.append("")  # `<br><br>`: an empty line
        elif tag == "hr":
            self.blank()
            self.piece("* * *")
            self.blank()
        elif tag in ("ul", "ol", "menu"):
            self.list(node, ordered=tag == "ol")
        elif tag == "li":  # a stray item outside a list
            self.newline()
            self.bullet("*")
            self.walk(node)
            self.newline()
        elif tag == "pre":
            self.pre(node)
        elif tag == "tr":  # a table is no block to the reference; its rows are lines
            self.walk(node)
            if self.current:
                self.current.append("  ")  # the reference ends each row with a soft break
            self.newline()
        elif tag in ("td", "th"):  # cells are separated by the text's own spaces
            self.inline_only += 1
            self.walk(node)
            self.inline_only -= 1
        elif tag == "blockquote":
            self.blank()
            self.indent.append("> ")
            self.walk(node)
            self.newline()
            self.indent.pop()
            self.blank()
        elif tag in ("sup", "sub") and _COMPACT.fullmatch(node.text_content().strip()):
            self.piece(("^{" if tag == "sup" else "_{") + node.text_content().strip() + "}")
        elif tag in _PARAGRAPH:
            self.blank()
            self.walk(node)
            self.blank()
        elif tag in _LINE:
            self.newline()
            self.walk(node)
            self.newline()
        else:
            self.walk(node)

    def list(self, node: etree._Element, *, ordered: bool) -> None:
        if not self.indent:
            self.blank()
        else:
            self.newline()
        number = int(node.get("start", "1")) if (node.get("start") or "1").isdigit() else 1
        # As in the reference (CommonMark's rule): items inside a numbered item indent by three.
        step = "   " if self.ordered and self.ordered[-1] else "  "
        self.ordered.append(ordered)
        for child in node:
            if not isinstance(child.tag, str) or child.tag.lower() != "li":
                if isinstance(child.tag, str):
                    self.element(child)
                continue
            self.newline()
            bullet = f"{number}." if ordered else "*"
            number += 1
            self.indent.append(step)
            self.bullet(bullet)
            self.walk(child)
            if self.current == [bullet + " "]:  # an item with nothing readable (icons, buttons)
                self.current = []
            self.newline()
            self.indent.pop()
        self.ordered.pop()
        if not self.indent:
            self.blank()

    def _link_target(self, node: etree._Element) -> tuple[str, str] | None:
        """(URL, label) of a link written as a marker; None for the others: image links keep
        their images, mailto:, javascript: and #fragments their text."""
        href = (node.get("href") or "").strip()
        label = _WS.sub(" ", clean_text(node.text_content())).strip().replace("†", "‡")
        target = urljoin(self.url, href) if href and not href.startswith("#") else ""
        scheme = urlsplit(target).scheme.lower() if target else ""
        if not label or scheme not in ("http", "https") or not domain_of(target):
            return None
        return target, label

    def link(self, node: etree._Element) -> None:
        if (found := self._link_target(node)) is None:
            self.walk(node)
            return
        target, label = found
        if (link_id := self._link_ids.get(target)) is None:
            link_id = self._link_ids[target] = len(self.links)
            self.links[link_id] = target
        domain = domain_of(target)
        if domain == self.domain:
            self.piece(f"【{link_id}†{label}】")
        else:
            self.piece(f"【{link_id}†{label}†{domain}】")

    def image(self, node: etree._Element) -> None:
        name = _WS.sub(" ", clean_text(node.get("alt") or node.get("title") or "")).strip()
        self.piece(f"[Image {self.images}: {name}]" if name else f"[Image {self.images}]")
        self.images += 1

    def pre(self, node: etree._Element) -> None:
        self.blank()
        raw = clean_text(_pre_text(node))
        for line in raw.strip("\n").split("\n"):
            self.lines.append("".join(self.indent) + "    " + line)
        self.blank()


def _pre_text(node: etree._Element) -> str:
    """Preformatted text keeps its whitespace; `<br>` inside it is a newline."""
    parts = [node.text or ""]
    for child in node:
        if isinstance(child.tag, str):
            parts.append("\n" if child.tag.lower() == "br" else _pre_text(child))
        parts.append(child.tail or "")
    return "".join(parts)


def _hidden(node: etree._Element) -> bool:
    if node.get("hidden") is not None or node.get("aria-hidden") == "true":
        return True
    style = (node.get("style") or "").replace(" ", "").lower()
    return "display:none" in style or "visibility:hidden" in style
