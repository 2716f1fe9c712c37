"""How kernel output becomes the text the model reads: no kernel needed."""

from __future__ import annotations

import base64

from harmony_agent.tools._jupyter_output import (
    OutputCollector,
    format_traceback,
    strip_ansi,
    truncate,
)


def msg(kind: str, **content: object) -> dict[str, object]:
    return {"header": {"msg_type": kind}, "content": content}


def collector(saved: list[tuple[bytes, str]] | None = None) -> OutputCollector:
    def save(data: bytes, ext: str) -> str:
        if saved is not None:
            saved.append((data, ext))
        return f"/mnt/data/output_1.{ext}"

    return OutputCollector(save)


def test_truncate_keeps_head_and_tail_and_says_how_much() -> None:
    assert truncate("short", 10) == "short"
    out = truncate("a" * 50 + "b" * 50, 20)
    assert out == "a" * 10 + "\n[... 80 characters cut ...]\n" + "b" * 10


def test_strip_ansi() -> None:
    assert strip_ansi("\x1b[0;31mZeroDivisionError\x1b[0m: x") == "ZeroDivisionError: x"


def test_traceback_drops_rule_colours_and_deep_middle() -> None:
    frames = [
        "\x1b[0;31m---------------------------------------------------------------------------",
        "\x1b[0;31mValueError\x1b[0m    Traceback (most recent call last)",
        *[f"Cell In[1], line {i}\n----> {i} f{i}()\n" for i in range(10)],
        "File /usr/lib/python3/site-packages/IPython/core/interactiveshell.py:284, in open()",
        "\x1b[0;31mValueError\x1b[0m: bad",
    ]
    out = format_traceback(frames, "ValueError", "bad")
    lines = out.splitlines()
    assert lines[0].startswith("ValueError    Traceback")
    assert lines[-1] == "ValueError: bad"
    assert "[... 5 frames omitted ...]" in out
    assert "IPython" not in out and "\x1b" not in out and "-----" not in out
    assert "f0()" in out and "f9()" in out and "f5()" not in out


def test_traceback_without_frames_falls_back_to_the_error_line() -> None:
    assert format_traceback([], "KeyError", "'x'") == "KeyError: 'x'"


def test_a_syntax_error_is_shown_once() -> None:
    # IPython reports a SyntaxError as one traceback entry (as `def f(:` gets it).
    frames = [
        "\x1b[0;36m  Cell \x1b[0;32mIn[1], line 1\x1b[0;36m\x1b[0m\n\x1b[0;31m    def f(:\x1b[0m\n"
        "\x1b[0m          ^\x1b[0m\n\x1b[0;31mSyntaxError\x1b[0m\x1b[0;31m:\x1b[0m invalid syntax\n"
    ]
    out = format_traceback(frames, "SyntaxError", "invalid syntax (2747763117.py, line 1)")
    assert out == "  Cell In[1], line 1\n    def f(:\n          ^\nSyntaxError: invalid syntax"


def test_output_order_images_and_progress_bars() -> None:
    saved: list[tuple[bytes, str]] = []
    c = collector(saved)
    c.add(msg("stream", name="stdout", text="10%\r50%\r100%\n"))
    c.add(msg("display_data", data={"image/png": base64.b64encode(b"png").decode()}))
    c.add(msg("stream", name="stderr", text="warning"))
    c.add(msg("execute_result", data={"text/plain": "42"}))
    assert c.text() == "100%\n[image saved to /mnt/data/output_1.png]\nwarning\n42"
    assert saved == [(b"png", "png")]


def test_clear_output_and_keyboard_interrupt() -> None:
    c = collector()
    c.add(msg("stream", name="stdout", text="old"))
    c.add(msg("clear_output", wait=False))
    c.add(msg("stream", name="stdout", text="new\n"))
    c.add(msg("error", ename="KeyboardInterrupt", evalue="", traceback=["KeyboardInterrupt: "]))
    c.drop_keyboard_interrupt()
    assert c.text() == "new"
    assert c.error is None


def test_a_flood_keeps_head_and_tail_and_counts_the_rest() -> None:
    c = OutputCollector(lambda data, ext: "unused", max_chars=100)
    c.add(msg("stream", name="stdout", text="HEAD"))
    for i in range(10_000):
        c.add(msg("stream", name="stdout", text=f"{i:09d}\n"))
    # A message the kernel already trimmed says how much it left out.
    c.add(msg("stream", name="stdout", text="kernel-trimmed", cut=1_000_000))
    c.add(msg("stream", name="stdout", text="TAIL"))
    out = c.text()
    total = 4 + 10_000 * 10 + len("kernel-trimmed") + 1_000_000 + 4
    assert out.startswith("HEAD000000000\n")
    assert out.endswith("kernel-trimmedTAIL")
    head, rest = out.split("\n[... ", 1)
    marker, tail = rest.split(" ...]\n", 1)
    assert marker == f"{total - 100} characters cut"
    assert len(head) == len(tail) == 50
    # Bounded while it streams: the collector holds a few times its limit, never the flood.
    assert sum(map(len, c._window.head + c._window.tail)) <= 3 * 100


def test_image_save_errors_and_the_image_cap_are_reported() -> None:
    def refuse(data: bytes, ext: str) -> str:
        raise OSError(28, "No space left on device", "/host/secret/path")

    c = OutputCollector(refuse, max_images=1)
    png = {"image/png": base64.b64encode(b"png").decode()}
    c.add(msg("display_data", data=png))
    c.add(msg("display_data", data=png))
    assert c.text() == (
        "[image not saved: No space left on device]\n[image not saved: too many images in one call]"
    )


def test_fields_a_hostile_kernel_forges_do_not_break_the_collector() -> None:
    c = collector()
    c.add(msg("stream", name="stdout", text="ok\n", cut="lots"))
    c.add(msg("stream", name="stdout", text="still\n", cut=-5))
    c.add(msg("display_data", data={"image/png": "not base64 at all!"}))
    assert c.text() == "ok\nstill\n[image not saved: its data is not valid base64]"
