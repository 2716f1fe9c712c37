"""How fast the browser is: Chromium start, first page open, warm page open.

    python benchmarks/browser.py [--repeats 10] [--url URL]

Without `--url` it serves a generated article (~60 KB of HTML, 200 paragraphs, 100 links, a
script) on 127.0.0.1 and opens it through the default safety policy (an allow-list for that one
port), so the numbers include the policy checks and the filtering proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harmony_agent.tools import BrowserTool


def article() -> bytes:
    paragraphs = "".join(
        f"<p>Paragraph {i} of the article, with <a href='/p{i}'>a link</a> and some words "
        "to make it about as long as a paragraph on a real page usually is.</p>"
        for i in range(200)
    )
    return (
        "<!doctype html><html><head><title>Benchmark article</title>"
        "<style>p { margin: 1em }</style></head><body><h1>Benchmark</h1>"
        f"{paragraphs}<script>document.body.append('rendered by script')</script></body></html>"
    ).encode()


class _Handler(BaseHTTPRequestHandler):
    body = article()

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)


async def measure(tool: BrowserTool, url: str, repeats: int = 10) -> dict[str, float]:
    """Seconds for: Chromium start, the first open of `url`, and the median warm open."""
    await tool.aclose()
    began = time.perf_counter()
    await tool.chromium.start()
    start = time.perf_counter() - began
    began = time.perf_counter()
    await tool.open(id=url)
    first = time.perf_counter() - began
    warm = []
    for _ in range(repeats):
        began = time.perf_counter()
        await tool.open(id=url)
        warm.append(time.perf_counter() - began)
    return {
        "start_s": start,
        "first_open_s": first,
        "warm_open_median_s": statistics.median(warm),
        "warm_open_min_s": min(warm),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="page to open (default: a generated local article)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    server = None
    allow: bool | list[str] = False
    url = args.url
    if url is None:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        allow = [f"127.0.0.1:{server.server_address[1]}"]

    async def run() -> dict[str, float]:
        tool = BrowserTool(allow_private_network=allow, search_backend=None)
        # Load the tokenizer first so it is not counted as browser time.
        from ._browser_pages import harmony_prefix_chars

        harmony_prefix_chars("x " * 5000, 10)
        try:
            return await measure(tool, url, args.repeats)
        finally:
            await tool.aclose()

    try:
        figures = asyncio.run(run())
    finally:
        if server is not None:
            server.shutdown()
    print(f"url: {url}")
    for name, seconds in figures.items():
        print(f"{name:>20}: {seconds * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
