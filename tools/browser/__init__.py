"""The built-in browser: harmony's `browser` namespace (search, open, find) on a real Chromium.

- `tool`: `BrowserTool`, what the model calls;
- `policy` and `proxy`: which hosts may be reached, enforced for every request Chromium makes;
- `chromium` and `jail`: the system Chromium driven by Playwright, unprivileged and bounded;
- `html_text`, `pages`, `citations`: page HTML to the text, views and citations the model reads;
- `search`: search backends (DuckDuckGo, SearXNG, Exa, You.com, local documents).
"""

from .chromium import FetchError, find_chromium
from .citations import Citation, CitedText, resolve_citations
from .html_text import html_to_text
from .pages import (
    Page,
    PageStack,
    SearchResult,
    approximate_prefix_chars,
    find_page,
    harmony_prefix_chars,
    render_view,
    search_page,
    strip_link_markers,
    wrap_lines,
)
from .policy import NetworkPolicy, Refused, address_problem, split_host_port
from .proxy import REFUSED_HEADER, PolicyProxy
from .search import (
    DuckDuckGoBackend,
    ExaBackend,
    HttpRequest,
    LocalDocument,
    LocalSearchBackend,
    SearchBackend,
    SearchError,
    SearxngBackend,
    YouComBackend,
    backend_from_env,
)
from .tool import BrowserTool

__all__ = [
    "REFUSED_HEADER",
    "BrowserTool",
    "Citation",
    "CitedText",
    "DuckDuckGoBackend",
    "ExaBackend",
    "FetchError",
    "HttpRequest",
    "LocalDocument",
    "LocalSearchBackend",
    "NetworkPolicy",
    "Page",
    "PageStack",
    "PolicyProxy",
    "Refused",
    "SearchBackend",
    "SearchError",
    "SearchResult",
    "SearxngBackend",
    "YouComBackend",
    "address_problem",
    "approximate_prefix_chars",
    "backend_from_env",
    "find_chromium",
    "find_page",
    "harmony_prefix_chars",
    "html_to_text",
    "render_view",
    "resolve_citations",
    "search_page",
    "split_host_port",
    "strip_link_markers",
    "wrap_lines",
]
