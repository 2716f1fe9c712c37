"""`harmony-agent --browser` set up from the command line: search services and intranet hosts,
driven in a subprocess with scripted turns, against services on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _support import LoopbackSite, QuietHandler, serving

from harmony_agent.tools.browser import FetchError, find_chromium

FINAL = "<|channel|>final<|message|>done<|return|>"
SEARCH_SETTINGS = ("HARMONY_AGENT_SEARCH", "SEARXNG_URL", "EXA_API_KEY", "YDC_API_KEY")


def browser_call(method: str, arguments: dict[str, object]) -> str:
    return f"<|channel|>analysis to=browser.{method}<|message|>{json.dumps(arguments)}<|call|>"


def harmony(
    workdir: Path, *args: str, turns: list[str] | None = None, **environ: str
) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess, with no search settings but `environ`'s."""
    (workdir / "turns.json").write_text(json.dumps(turns or [FINAL]))
    env = {k: v for k, v in os.environ.items() if k not in SEARCH_SETTINGS}
    return subprocess.run(
        [sys.executable, "-m", "harmony_agent", *args],
        cwd=workdir, env={**env, "HARMONY_AGENT_CACHE": str(workdir / "cache"), **environ},
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def tool_texts(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """What the model read back from its tool calls, from `run --json`."""
    assert proc.returncode == 0, proc.stderr
    messages = json.loads(proc.stdout)["messages"]
    return [m["content"][0]["text"] for m in messages if m["role"] == "tool"]


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("harmony-agent: error: ")
    return proc.stderr.removeprefix("harmony-agent: error: ").strip()


class Searxng(QuietHandler):
    """A SearXNG instance's JSON API, answering every query with two hits."""

    def do_GET(self) -> None:
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        results = [
            {"url": "https://cats.test/", "title": "All about cats", "content": "Cats purr."},
            {"url": "https://dogs.test/", "title": "Dogs", "content": "Dogs bark."},
        ]
        body = json.dumps({"query": "q", "results": results}).encode()
        self.reply(200, {"Content-Type": "application/json"}, body)


class Intranet(QuietHandler):
    def do_GET(self) -> None:
        page = b"<html><head><title>Wiki</title></head><body><p>Internal notes</p></body></html>"
        self.reply(200, {"Content-Type": "text/html"}, page)


@pytest.fixture(scope="module")
def searxng() -> Iterator[LoopbackSite]:
    site = LoopbackSite(Searxng)
    site.paths = []  # type: ignore[attr-defined]
    with serving(site):
        yield site


def test_help_says_how_search_is_set_up(tmp_path: Path) -> None:
    proc = harmony(tmp_path, "run", "--help", COLUMNS="100")
    assert proc.returncode == 0
    help_text = " ".join(proc.stdout.split())
    for text in (
        "--browser searches with DuckDuckGo (no key needed)",
        "--search {duckduckgo,searxng,exa,you}",
        "--searxng-url URL",
        "$SEARXNG_URL",
        "$EXA_API_KEY",
        "$YDC_API_KEY",
        "$HARMONY_AGENT_SEARCH",
        "--browser-allow HOST[:PORT]",
    ):
        assert text in help_text


def test_the_model_searches_a_searxng_instance(tmp_path: Path, searxng: LoopbackSite) -> None:
    turns = [browser_call("search", {"query": "cats"}), FINAL]
    proc = harmony(tmp_path, "run", "--scripted", "turns.json", "--browser", "--searxng-url",
                   searxng.url, "--json", "tell me about cats", turns=turns)  # fmt: skip
    (page,) = tool_texts(proc)
    assert page.startswith("[0] cats")
    assert "All about cats" in page and "Cats purr." in page and "dogs.test" in page
    assert searxng.paths[-1] == "/search?q=cats&format=json"  # type: ignore[attr-defined]

    # The same service chosen by the environment.
    environ = {"HARMONY_AGENT_SEARCH": "searxng", "SEARXNG_URL": searxng.url}
    proc = harmony(tmp_path, "run", "--scripted", "turns.json", "--browser", "--json", "cats?",
                   turns=turns, **environ)  # fmt: skip
    assert "All about cats" in tool_texts(proc)[0]


def test_an_unreachable_service_is_told_to_the_model_and_shown(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    turns = [browser_call("search", {"query": "cats"}), FINAL]
    proc = harmony(tmp_path, "run", "--scripted", "turns.json", "--browser", "--searxng-url",
                   closed, "cats?", turns=turns, COLUMNS="200")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done"
    shown = proc.stderr  # the tool result panel, one line wide enough
    assert (
        f"Error during search for `cats`: SearXNG at {closed}: cannot connect (Connection" in shown
    )


@pytest.mark.parametrize(
    ("args", "environ", "message"),
    [
        (["--search", "exa"], {}, "Exa search needs an API key: set EXA_API_KEY"),
        ([], {"HARMONY_AGENT_SEARCH": "you"}, "You.com search needs an API key: set YDC_API_KEY"),
    ],
)
def test_a_named_service_that_is_not_set_up_is_one_line(
    tmp_path: Path, args: list[str], environ: dict[str, str], message: str
) -> None:
    proc = harmony(tmp_path, "run", "--scripted", "turns.json", "--browser", *args, "hi", **environ)
    assert one_line_error(proc).startswith(message)


def test_browser_settings_without_browser_are_refused(tmp_path: Path) -> None:
    proc = harmony(tmp_path, "run", "--scripted", "turns.json", "--browser-allow", "wiki", "hi")
    assert one_line_error(proc) == (
        "--search, --searxng-url and --browser-allow set up --browser: add it"
    )


def test_a_malformed_allowed_host_is_a_usage_error(tmp_path: Path) -> None:
    proc = harmony(tmp_path, "run", "--browser", "--browser-allow", "wiki:http", "hi")
    assert proc.returncode == 2
    assert "argument --browser-allow: `wiki:http` is not HOST or HOST:PORT" in proc.stderr


def _chromium_missing() -> str | None:
    try:
        find_chromium()
    except FetchError as e:
        return str(e)
    return None


@pytest.mark.skipif(_chromium_missing() is not None and not os.environ.get("CI"),
                    reason="no Chromium executable")  # fmt: skip
def test_browser_allow_opens_a_named_intranet_host(tmp_path: Path) -> None:
    site = LoopbackSite(Intranet)
    turns = [browser_call("open", {"id": f"{site.url}/"}), FINAL]
    run = ("run", "--scripted", "turns.json", "--browser", "--json", "read the wiki")
    with serving(site):
        (refused,) = tool_texts(harmony(tmp_path, *run, turns=turns))
        (opened,) = tool_texts(
            harmony(tmp_path, *run, "--browser-allow", f"127.0.0.1:{site.port}", turns=turns)
        )
        (other_port,) = tool_texts(
            harmony(tmp_path, *run, "--browser-allow", f"127.0.0.1:{site.port + 1}", turns=turns)
        )
    assert "127.0.0.1 is a loopback address" in refused
    assert opened.startswith(f"[0] Wiki ({site.url}/)") and "Internal notes" in opened
    assert "loopback address" in other_port
