"""The system Chromium, driven by Playwright: fetch a URL, let its scripts run, return the DOM.

One browser is launched on first use and reused (a launch costs ~0.5 s, a warm open well under
that). All traffic goes through `PolicyProxy` and every request is also checked in a Playwright
route, which refuses non-http(s) schemes and gives a clear reason early.

Pages are hostile, so: Chromium keeps its own sandbox on (under a root host it runs as an
unprivileged uid in a memory cgroup, see `_browser_jail`); no document outlives the call that
read it (the page is parked on about:blank, so its scripts and timers stop, and after a failed or
looping load it is thrown away: the next call gets a new one); popups are blocked, and closed
when one opens anyway; every response is bounded by its decoded size, so a small gzip bomb
cannot expand inside the browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from typing import Any

from harmony_agent.sandbox import CgroupSet

from .download import (
    DownloadError,
    DownloadHTTPError,
    DownloadRefused,
    DownloadTooLarge,
    download,
)
from .html_text import decode_text, undo_windows_1252
from .jail import ChromiumJail, JailUnavailable
from .policy import NetworkPolicy, Refused
from .proxy import REFUSED_HEADER, PolicyProxy

CHROMIUM_ENV = "HARMONY_AGENT_CHROMIUM"
_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

# These stop Chromium's own background traffic (updates, sync, metrics, autofill, QUIC probes),
# which on a closed network floods refused connections and, through the proxy, would be work
# for the policy that no page asked for.
CHROMIUM_ARGS = (
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
    "--disable-features=AutofillServerCommunication,OptimizationHints,MediaRouter",
)
# Playwright turns Chromium's popup blocker off; a page opening hundreds of windows is one
# reason to keep it.
IGNORED_DEFAULT_ARGS = ("--disable-popup-blocking",)
MEMORY_BYTES = 2 << 30
"""Chromium's memory, all its processes together, where a memory cgroup can be made (root)."""

LOAD_EVENT_SECONDS = 5.0
"""After DOMContentLoaded, how long to wait at most for the load event."""
QUIET_SECONDS = 0.1
"""How long the network must be idle after the load event before the page counts as done."""
_HTML_TYPES = ("text/html", "application/xhtml+xml")  # XML feeds are shown as text
_NET_ERROR = re.compile(r"net::(ERR_[A-Z_]+)")
_NET_ERROR_WORDS = {
    "ERR_CONNECTION_REFUSED": "connection refused",
    "ERR_NAME_NOT_RESOLVED": "host name not found",
    "ERR_CONNECTION_TIMED_OUT": "connection timed out",
    "ERR_CONNECTION_RESET": "connection reset",
    "ERR_CONNECTION_CLOSED": "connection closed without an answer",
    "ERR_EMPTY_RESPONSE": "empty response",
    "ERR_ADDRESS_UNREACHABLE": "address unreachable",
    "ERR_INTERNET_DISCONNECTED": "no internet connection",
    "ERR_TUNNEL_CONNECTION_FAILED": "could not connect",
    "ERR_CERT_AUTHORITY_INVALID": "TLS certificate not trusted",
    "ERR_CERT_COMMON_NAME_INVALID": "TLS certificate does not match the host",
    "ERR_CERT_DATE_INVALID": "TLS certificate expired or not yet valid",
    "ERR_TOO_MANY_REDIRECTS": "too many redirects",
    "ERR_BLOCKED_BY_CLIENT": "blocked",
}


# What a reader does not see, the model should not read: menus, dialogs and templates that
# stylesheets hide (`display: none`) are removed before the DOM is serialised. Only computed
# styles know this, so it has to run in the page.
_PRUNE_HIDDEN = """() => {
  const hidden = [];
  const walk = (element) => {
    for (const child of element.children) {
      if (getComputedStyle(child).display === "none") hidden.push(child);
      else walk(child);
    }
  };
  if (document.body) walk(document.body);
  for (const element of hidden) element.remove();
  return hidden.length;
}"""

# An iframe's document is not part of `page.content()`: its body is copied in where the iframe is,
# deepest frames first so nested ones come along. Links and images are made absolute first,
# since the page text resolves them against the outer page's URL.
MAX_FRAMES = 20
FRAME_SECONDS = 1.0
_FRAME_BODY = """() => {
  for (const a of document.querySelectorAll("a[href]")) a.setAttribute("href", a.href);
  for (const img of document.querySelectorAll("img[src]")) img.setAttribute("src", img.src);
  return document.body ? document.body.innerHTML : "";
}"""
_INLINE_FRAME = """(frame, html) => {
  const div = document.createElement("div");
  div.innerHTML = html;
  frame.replaceWith(div);
}"""


class FetchError(Exception):
    """Loading failed; the message says what happened, for the model."""


class ChromiumNotFound(FetchError):
    pass


@dataclass
class Fetched:
    """A loaded document: HTML (the DOM after scripts ran) or raw bytes of another type."""

    url: str
    """The final URL, after redirects."""
    status: int
    content_type: str
    title: str = ""
    html: str | None = None
    source: str | None = None
    """The HTML as the server sent it (for view-source)."""
    body: bytes | None = None


def find_chromium(explicit: str | None = None) -> str:
    """The Chromium executable: `explicit`, `$HARMONY_AGENT_CHROMIUM`, else the first on PATH."""
    for candidate in (explicit, os.environ.get(CHROMIUM_ENV)):
        if candidate:
            if os.access(candidate, os.X_OK):
                return candidate
            raise ChromiumNotFound(f"Chromium executable `{candidate}` does not exist.")
    for name in _CANDIDATES:
        if path := shutil.which(name):
            return path
    raise ChromiumNotFound(
        "The browser is unavailable: no Chromium executable found (install the `chromium` "
        f"package, or set {CHROMIUM_ENV})."
    )


def describe_error(message: str) -> str:
    """A short reason from a Playwright error text (`net::ERR_...` names made readable)."""
    if found := _NET_ERROR.search(message):
        code = found.group(1)
        words = _NET_ERROR_WORDS.get(code)
        return f"{words} ({code})" if words else code
    return message.strip().splitlines()[0] if message.strip() else "unknown error"


class Chromium:
    """A lazily launched headless Chromium with one reusable page, behind the network policy."""

    def __init__(
        self,
        policy: NetworkPolicy,
        *,
        executable_path: str | None = None,
        load_timeout: float = 30.0,
        idle_wait: float = 1.0,
        max_page_bytes: int = 20 * 1024 * 1024,
        extra_args: tuple[str, ...] = (),
        headless: bool = True,
        user_id: int | None = None,
        memory_bytes: int | None = MEMORY_BYTES,
    ) -> None:
        self.policy = policy
        self.executable_path = executable_path
        self.load_timeout = load_timeout
        self.idle_wait = idle_wait
        self.max_page_bytes = max_page_bytes
        self.args = CHROMIUM_ARGS + tuple(extra_args)
        self.headless = headless
        self.user_id = user_id
        self.memory_bytes = memory_bytes
        self.refusals: list[str] = []
        """Every request the policy refused (subresources included), newest last."""
        self.load_event_wait = LOAD_EVENT_SECONDS
        self._lock = asyncio.Lock()
        self._start_lock = asyncio.Lock()
        self._playwright: Any = None
        self._browser: Any = None
        self._context: Any = None
        self._page: Any = None
        self._proxy: PolicyProxy | None = None
        self._jail: ChromiumJail | None = None
        self._in_flight: set[Any] = set()
        self._nav_refusals: list[str] = []
        self._received: dict[str, int] = {}
        self._oversize = asyncio.Event()
        self._popup_closers: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def started(self) -> bool:
        return self._browser is not None

    @property
    def cgroup(self) -> CgroupSet | None:
        """The cgroups Chromium runs in (root hosts only), while it runs."""
        return self._jail.cgroup if self._jail is not None else None

    def _adopt_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop:
            # Playwright's objects belong to the loop that made them; a tool reused from
            # another loop (a second asyncio.run) starts afresh. The old loop's driver process
            # ended with that loop, taking its Chromium along.
            self._playwright = self._browser = self._context = self._page = None
            if self._proxy is not None:
                self.refusals.extend(self._proxy.refusals)
            self._proxy = None
            if self._jail is not None:
                self._jail.close()
                self._jail = None
            self._lock = asyncio.Lock()
            self._start_lock = asyncio.Lock()
            self._oversize = asyncio.Event()
        self._loop = loop

    async def start(self) -> None:
        """Launch Chromium (once; later calls return at once)."""
        self._adopt_loop()
        async with self._start_lock:  # two first calls at once must not launch two browsers
            if self._browser is not None and not self._browser.is_connected():
                await self.close()  # it died (its memory limit can kill it): a new one
            if self._browser is None:
                await self._launch()
            if self._context is None:
                await self._new_context()

    async def _launch(self) -> None:
        try:
            from playwright.async_api import async_playwright
        except ImportError as e:
            raise FetchError("The browser is unavailable: `playwright` is not installed.") from e
        executable = find_chromium(self.executable_path)
        env: dict[str, str] | None = None
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            try:
                self._jail = ChromiumJail(
                    executable, uid=self.user_id, memory_bytes=self.memory_bytes
                )
            except (JailUnavailable, OSError) as e:
                raise FetchError(f"The browser is unavailable: {e}.") from e
            executable, env = self._jail.executable, self._jail.env()
        if not self.policy.allow_all:
            # Twice the page limit: what Chromium decodes is bounded exactly (with a clear
            # message) by `_data_received`; the proxy's cut on raw bytes is the backstop.
            self._proxy = PolicyProxy(self.policy, max_response_bytes=2 * self.max_page_bytes)
            await self._proxy.start()
        self._playwright = await async_playwright().start()
        try:
            self._browser = await self._playwright.chromium.launch(
                executable_path=executable,
                args=list(self.args),
                ignore_default_args=list(IGNORED_DEFAULT_ARGS),
                headless=self.headless,
                chromium_sandbox=True,  # Playwright turns it off unless asked
                env=env,
            )
        except Exception as e:
            await self.close()
            hint = (
                " (Chromium's sandbox needs user namespaces, which this kernel refuses)"
                if "No usable sandbox" in str(e)
                else ""
            )
            raise FetchError(
                f"The browser is unavailable: could not start Chromium{hint}: {e}"
            ) from e

    async def _new_context(self) -> None:
        # No bypass list: Playwright then proxies loopback too (Chromium skips it by default).
        proxy = {"server": self._proxy.url} if self._proxy is not None else None
        context = await self._browser.new_context(
            proxy=proxy,
            service_workers="block",  # their fetches would bypass the route
            accept_downloads=False,
        )
        await context.route("**/*", self._route)
        self._context = context

    async def reset(self) -> None:
        """Drop the browsing context (cookies, storage, cache, open pages); the browser process
        stays, and the next fetch opens a fresh context."""
        context, self._context, self._page = self._context, None, None
        if context is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(context.close(), 5)

    async def close(self) -> None:
        for closer in (self._context, self._browser):
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer.close()
        if self._playwright is not None:
            with contextlib.suppress(Exception):
                await self._playwright.stop()
        if self._proxy is not None:
            self.refusals.extend(self._proxy.refusals)
            await self._proxy.close()
        if self._jail is not None:
            self._jail.close()
        self._playwright = self._browser = self._context = self._page = None
        self._proxy = self._jail = None

    # -- policy --------------------------------------------------------------------------

    async def _route(self, route: Any) -> None:
        request = route.request
        url: str = request.url
        scheme = url.partition(":")[0].lower()
        try:
            if scheme in ("http", "https"):
                if not self.policy.allow_all:
                    await self.policy.check_url(url)
            elif scheme not in ("data", "blob") or request.is_navigation_request():
                # file:, chrome:, ... never; data: and blob: only as subresources.
                raise Refused(
                    f"Refused to open `{url[:200]}`: the browser only opens http:// and "
                    "https:// URLs."
                )
        except Exception as e:  # Refused, or a failed check: either way, fail closed
            message = str(e) if isinstance(e, Refused) else f"`{url[:200]}`: {e!r}"
            self.refusals.append(message)
            if _is_main_navigation(request):
                self._nav_refusals.append(message)
            with contextlib.suppress(Exception):  # the page may be gone already
                await route.abort("blockedbyclient")
            return
        with contextlib.suppress(Exception):
            await route.continue_()

    def _all_refusals(self) -> list[str]:
        return self.refusals + (self._proxy.refusals if self._proxy else [])

    # -- fetching ------------------------------------------------------------------------

    async def fetch(self, url: str) -> Fetched:
        """Load `url`, run its scripts, and return the result; raises `FetchError`."""
        await self.policy.check_url(url)  # fast, clear refusal before any browser work
        self._adopt_loop()
        async with self._lock:  # one page, so one load at a time
            await self.start()
            marks = (len(self._nav_refusals), len(self._proxy.refusals) if self._proxy else 0)
            oom_kills = self._jail.oom_kills() if self._jail is not None else 0
            read = False
            try:
                if self._page is None:
                    self._page = await self._new_page()
                self._in_flight.clear()  # what the previous document left unfinished is gone
                self._received = {}
                self._oversize = asyncio.Event()
                fetched = await self._bounded_load(self._page, url, marks)
                read = True
                return fetched
            except Exception as e:
                if self._jail is not None and self._jail.oom_kills() > oom_kills:
                    limit = (self.memory_bytes or 0) / (1 << 20)
                    raise FetchError(
                        f"Error fetching URL `{url}`: the page needed more memory than the "
                        f"browser may use ({limit:.0f} MB) and was stopped."
                    ) from e
                if isinstance(e, FetchError):
                    raise
                if isinstance(e, TimeoutError):
                    raise FetchError(
                        f"Error fetching URL `{url}`: timed out after {self.load_timeout:g} s."
                    ) from e
                # Playwright's own errors: tell the model, keep the tool alive.
                raise FetchError(f"Error fetching URL `{url}`: {describe_error(str(e))}") from e
            finally:
                await self._end_call(keep_page=read)

    async def _new_page(self) -> Any:
        page = await self._context.new_page()
        page.on("request", self._request_started)
        page.on("requestfinished", self._request_ended)
        page.on("requestfailed", self._request_ended)
        page.on("popup", self._close_popup)
        # Chromium's network events carry each response's decoded length (the proxy sees
        # only compressed, or for https encrypted, bytes).
        session = await self._context.new_cdp_session(page)
        session.on("Network.dataReceived", self._data_received)
        await session.send("Network.enable")
        return page

    def _data_received(self, event: dict[str, Any]) -> None:
        request_id = event.get("requestId", "")
        received = self._received.get(request_id, 0) + int(event.get("dataLength", 0))
        self._received[request_id] = received
        if received > self.max_page_bytes:
            self._oversize.set()

    def _close_popup(self, popup: Any) -> None:
        # The popup blocker stops scripted popups; what still opens (a click a script made)
        # is closed at once, and so are its own popups.
        popup.on("popup", self._close_popup)
        task = asyncio.ensure_future(_close_quietly(popup))
        self._popup_closers.add(task)
        task.add_done_callback(self._popup_closers.discard)

    async def _bounded_load(self, page: Any, url: str, marks: tuple[int, int]) -> Fetched:
        # Past DOMContentLoaded the page's own scripts can still block the renderer
        # (`while (true) {}` in an onload handler) and with it every call we make: one
        # deadline covers the whole load, and so does the size bound.
        load = asyncio.ensure_future(self._load(page, url, marks))
        oversize = asyncio.ensure_future(self._oversize.wait())
        try:
            await asyncio.wait(
                {load, oversize},
                timeout=self.load_timeout + self.load_event_wait,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            oversize.cancel()
            if not load.done():
                load.cancel()
            await asyncio.gather(load, oversize, return_exceptions=True)
        if self._oversize.is_set():
            raise FetchError(self._too_large(url))
        if load.cancelled():
            raise TimeoutError
        return load.result()

    async def _end_call(self, *, keep_page: bool) -> None:
        """Close every popup, and leave the page read on about:blank (its scripts, timers and
        sockets end with the document) or, after a failed load, throw it away: a page that
        loops or is stuck would interrupt the next navigation. A renderer stuck in a script
        may not even close, so the whole context goes (its processes are killed) then."""
        for task in list(self._popup_closers):
            task.cancel()
        if self._context is None:
            return
        page = self._page
        try:
            for other in self._context.pages:
                if other is not page:
                    await asyncio.wait_for(other.close(), 3)
            if page is not None and keep_page:
                try:
                    await asyncio.wait_for(page.goto("about:blank"), 3)
                    return
                except Exception:  # a page that will not leave goes
                    pass
            if page is not None:
                self._page = None
                await asyncio.wait_for(page.close(), 3)
            return
        except Exception:  # TimeoutError or Playwright's: either way the context must go
            pass
        context, self._context, self._page = self._context, None, None  # the next fetch: anew
        with contextlib.suppress(Exception):
            await asyncio.wait_for(context.close(), 5)

    def _refusal_behind(self, error: str, marks: tuple[int, int]) -> str | None:
        """The refusal that made this load fail, if one did. Only refusals of this load count:
        the page being left (or Chromium's PDF viewer) may still be making requests."""
        if self._nav_refusals[marks[0] :]:
            return self._nav_refusals[marks[0]]
        proxy_refusals = self._proxy.refusals[marks[1] :] if self._proxy else []
        if proxy_refusals and "ERR_TUNNEL_CONNECTION_FAILED" in error:
            return proxy_refusals[-1]  # an https redirect hop the proxy would not connect
        if proxy_refusals and error.startswith(REFUSED_HEADER):
            shown = error.partition(": ")[2]
            for refusal in proxy_refusals:
                if refusal.encode("ascii", "replace").decode() == shown:
                    return refusal
        return None

    async def _load(self, page: Any, url: str, marks: tuple[int, int]) -> Fetched:
        from playwright.async_api import Error as PlaywrightError
        from playwright.async_api import TimeoutError as PlaywrightTimeout

        deadline = time.monotonic() + self.load_timeout
        try:
            response = await page.goto(
                url, wait_until="domcontentloaded", timeout=self.load_timeout * 1000
            )
        except PlaywrightTimeout as e:
            raise FetchError(
                f"Error fetching URL `{url}`: timed out after {self.load_timeout:g} s."
            ) from e
        except PlaywrightError as e:
            if "Download is starting" in str(e):  # served as an attachment: fetch it directly
                return await self._download(url)
            if refusal := self._refusal_behind(str(e), marks):
                raise FetchError(refusal) from e
            raise FetchError(f"Error fetching URL `{url}`: {describe_error(str(e))}") from e
        if response is None:  # same-document navigation (only the fragment changed)
            return Fetched(page.url, 200, "text/html", await page.title(), await page.content())
        if (refused := response.headers.get(REFUSED_HEADER.lower())) is not None:
            # An http redirect hop the proxy refused: its 403 answer arrived as the document.
            raise FetchError(self._refusal_behind(f"{REFUSED_HEADER}: {refused}", marks) or refused)
        if response.status >= 400:
            reason = f" {response.status_text}" if response.status_text else ""
            raise FetchError(
                f"Error fetching URL `{url}`: the server answered HTTP {response.status}{reason}."
            )
        final_url = page.url
        if not final_url.lower().startswith(("http://", "https://")):
            raise FetchError(f"Refused to show `{final_url[:200]}`: not an http(s) page.")
        content_header = response.headers.get("content-type", "")
        content_type = content_header.split(";")[0].strip().lower()
        if content_type and not content_type.startswith(_HTML_TYPES):
            if content_type == "application/pdf":
                # Chromium's viewer hides the bytes; fetch them, and leave the viewer (it goes on
                # loading its own resources otherwise).
                with contextlib.suppress(PlaywrightError):
                    await page.goto("about:blank")
                return await self._download(final_url)
            body = await response.body()
            return Fetched(final_url, response.status, content_type, body=self._limit(body, url))
        # Scripts get until the load event (but one slow image must not cost the whole
        # timeout: the text is there already), then a short quiet spell for late fetches.
        with contextlib.suppress(PlaywrightTimeout):
            remaining = min(max(deadline - time.monotonic(), 0.1), self.load_event_wait)
            await page.wait_for_load_state("load", timeout=remaining * 1000)
        await self._settle(min(self.idle_wait, max(deadline - time.monotonic(), 0)))
        with contextlib.suppress(PlaywrightError):  # e.g. a script navigated away meanwhile
            await page.evaluate(_PRUNE_HIDDEN)
        await _inline_frames(page)
        html = await page.content()
        if len(html) > self.max_page_bytes:
            raise FetchError(
                f"Error fetching URL `{url}`: the page is too large "
                f"({len(html)} characters, limit {self.max_page_bytes})."
            )
        title = await page.title()
        try:
            body: bytes | None = await response.body()
        except PlaywrightError:
            body = None  # the body is gone once the page navigated on (a script redirect)
        # Undeclared, Chromium reads windows-1252 and never detects UTF-8 (the standard wants
        # pages labelled); valid UTF-8 bytes mean UTF-8 was meant, as a detecting browser reads.
        if body is not None and "charset" not in content_header.lower() and _undeclared_utf8(body):
            with contextlib.suppress(PlaywrightError):
                if await page.evaluate("document.characterSet") == "windows-1252":
                    html, title = undo_windows_1252(html), undo_windows_1252(title)
        return Fetched(
            final_url,
            response.status,
            content_type or "text/html",
            title,
            html,
            decode_text(body) if body is not None else None,
        )

    def _request_started(self, request: Any) -> None:
        self._in_flight.add(request)

    def _request_ended(self, request: Any) -> None:
        self._in_flight.discard(request)

    async def _settle(self, limit: float) -> None:
        """Wait (at most `limit` s) until no request has been in flight for a short while.

        Playwright's "networkidle" needs 500 ms of silence, a floor on every page; most pages
        that fill themselves in with `fetch` are done within a few quiet frames of the load.
        """
        end = time.monotonic() + limit
        quiet_since: float | None = None
        while (now := time.monotonic()) < end:
            if self._in_flight:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= QUIET_SECONDS:
                return
            await asyncio.sleep(0.02)

    async def _download(self, url: str) -> Fetched:
        """Fetch a document Chromium does not show (a PDF, an attachment) from the host, through
        the same proxy, bounded by decoded size: not with Playwright's request client, whose
        Node driver (a root host process) decodes without a bound (see `download`)."""
        cancelled = threading.Event()  # a cancelled load stops the thread at its next read
        try:
            got = await asyncio.to_thread(
                download,
                url,
                proxy=self._proxy.url if self._proxy is not None else None,
                max_bytes=self.max_page_bytes,
                timeout=self.load_timeout,
                cancelled=cancelled,
            )
        except DownloadRefused as e:
            raise FetchError(self._proxy_refusal(str(e))) from e
        except DownloadTooLarge as e:
            raise FetchError(self._too_large(url)) from e
        except DownloadHTTPError as e:
            raise FetchError(
                f"Error fetching URL `{url}`: the server answered HTTP {e.status}."
            ) from e
        except TimeoutError as e:
            raise FetchError(
                f"Error fetching URL `{url}`: timed out after {self.load_timeout:g} s."
            ) from e
        except DownloadError as e:
            raise FetchError(f"Error fetching URL `{url}`: {e}.") from e
        finally:
            cancelled.set()
        return Fetched(got.url, got.status, got.content_type, body=got.body)

    def _proxy_refusal(self, shown: str) -> str:
        """The proxy's full refusal message behind its (ASCII) refusal header `shown`."""
        refusals = self._proxy.refusals if self._proxy is not None else []
        for refusal in reversed(refusals):
            if refusal.encode("ascii", "replace").decode() == shown:
                return refusal
        return refusals[-1] if refusals else shown

    def _too_large(self, url: str) -> str:
        """What the model reads when a response is over `max_page_bytes` once decoded."""
        limit = self.max_page_bytes
        size = f"{limit / (1 << 20):.3g} MB" if limit >= 1 << 20 else f"{limit} bytes"
        return (
            f"Error fetching URL `{url}`: the page is too large (larger than {size} once "
            "decoded); it was not loaded."
        )

    def _limit(self, body: bytes, url: str) -> bytes:
        if len(body) > self.max_page_bytes:
            raise FetchError(self._too_large(url))
        return body


async def _close_quietly(page: Any) -> None:
    with contextlib.suppress(Exception):  # gone already, or its browser is
        await page.close()


def _undeclared_utf8(body: bytes) -> bool:
    """Non-ASCII bytes that are valid UTF-8, in a document that names no charset early on
    (where the HTML standard's prescan looks for `<meta charset>`)."""
    if body.isascii() or b"charset" in body[:1024].lower():
        return False
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


async def _inline_frames(page: Any) -> None:
    """Copy each loaded iframe's body into its parent document, where the iframe was."""
    from playwright.async_api import Error as PlaywrightError

    def depth(frame: Any) -> int:
        return 0 if frame.parent_frame is None else 1 + depth(frame.parent_frame)

    async def inline(frame: Any) -> None:
        element = await frame.frame_element()
        await element.evaluate(_INLINE_FRAME, await frame.evaluate(_FRAME_BODY))

    frames = [f for f in page.frames if f.parent_frame is not None]
    frames = [f for f in frames if f.url.startswith(("http://", "https://", "about:srcdoc"))]
    for frame in sorted(frames[:MAX_FRAMES], key=depth, reverse=True):
        # Detached, hidden or navigating meanwhile, or a frame whose own renderer is stuck in a
        # script (an ad): the page is read without it.
        with contextlib.suppress(PlaywrightError, TimeoutError):
            await asyncio.wait_for(inline(frame), FRAME_SECONDS)


def _is_main_navigation(request: Any) -> bool:
    try:
        return bool(request.is_navigation_request()) and request.frame.parent_frame is None
    except Exception:  # service-worker requests have no frame
        return False
