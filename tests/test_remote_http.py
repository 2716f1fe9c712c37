"""The remote engines' request/response mapping, against loopback servers that answer in the
shapes the engines document (vLLM's `/v1/completions` with `return_token_ids`, SGLang's
`/generate` in both of its streaming modes, llama.cpp's `/completion`), and the one-line errors
for what goes wrong. vLLM and SGLang are checked against these documented shapes only: neither
runs here. llama.cpp itself is tested in test_remote_llamacpp.py."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from _support import FINAL, LoopbackSite, QuietHandler, cli_env, serving

from harmony_agent.agent.cli import main as cli_main
from harmony_agent.model import Sampling, harmony_encoding
from harmony_agent.model.remote import (
    LlamaCppModel,
    RemoteEngineError,
    SGLangModel,
    VllmModel,
    connect,
)

RETURN, CALL, END = 200002, 200012, 200007
SCRIPT = harmony_encoding().encode(FINAL, allowed_special="all")
"""What the fake engines generate: a final answer ending in <|return|>."""


class Engine:
    """What a fake engine was asked and how it answers: `script` are the ids it generates (up
    to max tokens or a stop id, which it includes, as the engines do)."""

    def __init__(self, script: list[int] = SCRIPT, **options: Any) -> None:
        self.script = script
        self.requests: list[dict[str, Any]] = []
        self.options = options
        self.disconnected = threading.Event()

    def generated(self, max_tokens: int, stops: list[int]) -> list[int]:
        out = []
        for token in self.script[:max_tokens]:
            out.append(token)
            if token in stops:
                break
        return out


def tokenize(engine: Engine, text: str) -> list[int]:
    ids = harmony_encoding().encode(text, allowed_special="all")
    return engine.options.get("vocabulary", lambda ids: ids)(ids)


def handler(engine: Engine, routes: dict[str, Callable[[QuietHandler, Any], None]]) -> type:
    class Handler(QuietHandler):
        def _route(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            if self.path not in ("/v1/models", "/get_model_info", "/health", "/props"):
                engine.requests.append({"path": self.path, "body": body})
            route = routes.get(self.path)
            if route is None:
                self.reply(404, {}, b'{"detail": "Not Found"}')
                return
            route(self, body)

        do_GET = do_POST = _route

        def json(self, data: Any, status: int = 200) -> None:
            self.reply(status, {"Content-Type": "application/json"}, json.dumps(data).encode())

        def stream(self, events: Iterator[Any], delay: float = 0.0) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            try:
                for event in events:
                    data = event if isinstance(event, str) else json.dumps(event)
                    self.wfile.write(f"data: {data}\n\n".encode())
                    self.wfile.flush()
                    time.sleep(delay)
            except (BrokenPipeError, ConnectionResetError):
                engine.disconnected.set()

    return Handler


@contextmanager
def running(handler_class: type) -> Iterator[str]:
    site = LoopbackSite(handler_class)
    with serving(site):
        yield site.url


# --- vLLM ------------------------------------------------------------------------------------


def vllm(engine: Engine) -> type:
    def models(h: Any, _: Any) -> None:
        h.json({"object": "list", "data": [{"id": "openai/gpt-oss-20b", "object": "model",
                                            "max_model_len": 65536}]})  # fmt: skip

    def tokenize_route(h: Any, body: Any) -> None:
        ids = tokenize(engine, body["prompt"])
        h.json({"count": len(ids), "max_model_len": 65536, "tokens": ids})

    def completions(h: Any, body: Any) -> None:
        if "error" in engine.options:
            h.json({"object": "error", "message": engine.options["error"], "code": 400}, 400)
            return
        out = engine.generated(body["max_tokens"], body["stop_token_ids"])
        trim = engine.options.get("trim_stop", False)

        def events() -> Iterator[Any]:
            for i, token in enumerate(out):
                last = i == len(out) - 1
                stopped = last and token in body["stop_token_ids"]
                ids = [] if stopped and trim else [token]
                choice: dict[str, Any] = {"index": 0, "text": "x", "logprobs": None,
                                          "finish_reason": None, "stop_reason": None}  # fmt: skip
                if engine.options.get("text_only") is None:
                    choice["token_ids"] = ids
                if i == 0:
                    choice["prompt_token_ids"] = body["prompt"]
                if last:
                    choice["finish_reason"] = "stop" if stopped else "length"
                    choice["stop_reason"] = token if stopped else None
                yield {"id": "cmpl-1", "object": "text_completion", "created": 0,
                       "model": body["model"], "choices": [choice]}  # fmt: skip
            usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": len(out)}
            yield {"id": "cmpl-1", "object": "text_completion", "created": 0,
                   "model": body["model"], "choices": [], "usage": usage}  # fmt: skip
            yield "[DONE]"

        h.stream(events(), engine.options.get("delay", 0.0))

    return handler(engine, {"/v1/models": models, "/tokenize": tokenize_route,
                            "/v1/completions": completions})  # fmt: skip


def test_vllm_maps_sampling_stops_and_limits_and_streams_the_token_ids() -> None:
    engine = Engine()
    with running(vllm(engine)) as url:
        model = connect(url + "/v1", "vllm")  # an OpenAI client's base URL works too
        assert isinstance(model, VllmModel) and model.max_context == 65536
        sampling = Sampling(temperature=0.7, top_p=0.9, seed=5)
        out = list(model.generate([1, 2, 3], stop_tokens=[CALL, RETURN], max_tokens=100,
                                  sampling=sampling))  # fmt: skip
    assert out == SCRIPT
    (vocab, request) = engine.requests
    assert vocab["path"] == "/tokenize" and vocab["body"]["add_special_tokens"] is False
    body = request["body"]
    assert request["path"] == "/v1/completions"
    assert body["model"] == "openai/gpt-oss-20b" and body["prompt"] == [1, 2, 3]
    assert body["max_tokens"] == 100 and body["stop_token_ids"] == [RETURN, CALL]
    assert (body["temperature"], body["top_p"], body["seed"]) == (0.7, 0.9, 5)
    assert body["stream"] is True and body["return_token_ids"] is True
    # the server's generation-config defaults must not change our sampling
    assert (body["top_k"], body["min_p"], body["repetition_penalty"]) == (0, 0.0, 1.0)


def test_vllm_greedy_sends_no_seed_and_max_tokens_cuts_the_stream() -> None:
    engine = Engine()
    with running(vllm(engine)) as url:
        out = list(connect(url, "vllm").generate([7], stop_tokens=[RETURN], max_tokens=3,
                                                 sampling=Sampling(temperature=0)))  # fmt: skip
    assert out == SCRIPT[:3]
    body = engine.requests[-1]["body"]
    assert body["temperature"] == 0 and "seed" not in body and body["max_tokens"] == 3


def test_a_stop_token_the_engine_names_but_leaves_out_is_still_yielded() -> None:
    engine = Engine(trim_stop=True)
    with running(vllm(engine)) as url:
        out = list(connect(url, "vllm").generate([1], stop_tokens=[RETURN], max_tokens=100))
    assert out == SCRIPT and out[-1] == RETURN


# --- SGLang ----------------------------------------------------------------------------------


def sglang(engine: Engine) -> type:
    def info(h: Any, _: Any) -> None:
        h.json({"model_path": "openai/gpt-oss-120b", "tokenizer_path": "openai/gpt-oss-120b",
                "is_generation": True, "preferred_sampling_params": None})  # fmt: skip

    def tokenize_route(h: Any, body: Any) -> None:
        ids = tokenize(engine, body["prompt"])
        h.json({"tokens": ids, "count": len(ids), "max_model_len": 131072})

    def generate(h: Any, body: Any) -> None:
        params = body["sampling_params"]
        out = engine.generated(params["max_new_tokens"], params["stop_token_ids"])
        incremental = engine.options.get("incremental", False)

        def events() -> Iterator[Any]:
            for i in range(len(out)):
                done = i == len(out) - 1
                finish = None
                if done and out[i] in params["stop_token_ids"]:
                    finish = {"type": "stop", "matched": out[i]}
                elif done:
                    finish = {"type": "length", "length": len(out)}
                ids = out[i : i + 1] if incremental else out[: i + 1]
                yield {"text": "x", "output_ids": ids,
                       "meta_info": {"id": "r1", "finish_reason": finish, "prompt_tokens": 3,
                                     "completion_tokens": i + 1, "cached_tokens": 0}}  # fmt: skip
            yield "[DONE]"

        h.stream(events())

    return handler(engine, {"/get_model_info": info, "/tokenize": tokenize_route,
                            "/generate": generate})  # fmt: skip


@pytest.mark.parametrize("incremental", [False, True], ids=["cumulative", "incremental"])
def test_sglang_reads_both_streaming_modes_and_maps_the_sampling(incremental: bool) -> None:
    engine = Engine(incremental=incremental)
    with running(sglang(engine)) as url:
        model = connect(url, "sglang")
        assert isinstance(model, SGLangModel) and model.max_context == 131072
        sampling = Sampling(temperature=0.5, top_p=0.8, seed=3)
        out = list(model.generate([9, 8], stop_tokens=[RETURN, CALL], max_tokens=50,
                                  sampling=sampling))  # fmt: skip
        short = list(model.generate([9, 8], stop_tokens=[RETURN], max_tokens=4))
    assert out == SCRIPT and short == SCRIPT[:4]
    body = engine.requests[1]["body"]
    assert body["input_ids"] == [9, 8] and body["stream"] is True
    params = body["sampling_params"]
    assert params["max_new_tokens"] == 50 and params["stop_token_ids"] == [RETURN, CALL]
    assert (params["temperature"], params["top_p"], params["sampling_seed"]) == (0.5, 0.8, 3)
    assert params["top_k"] == -1 and params["no_stop_trim"] is True


# --- llama.cpp's stream, which withholds the ids of tokens that end inside a character ---------


def llamacpp(engine: Engine, withheld: set[int]) -> type:
    def health(h: Any, _: Any) -> None:
        h.json({"status": "ok"})

    def tokenize_route(h: Any, body: Any) -> None:
        h.json({"tokens": tokenize(engine, body["content"])})

    def props(h: Any, _: Any) -> None:
        h.json({"default_generation_settings": {"n_ctx": 4096}})

    def completion(h: Any, body: Any) -> None:
        start = len(body["prompt"]) - 1  # the prompt is [0] + what was generated so far
        out = engine.script[start : start + body["n_predict"]]
        if not body["stream"]:
            h.json({"tokens": out, "stop": True, "tokens_predicted": len(out)})
            return

        def events() -> Iterator[Any]:
            for i, token in enumerate(out):
                if start + i not in withheld:  # as llama-server: nothing for these
                    yield {"content": "x", "tokens": [token], "stop": False,
                           "tokens_predicted": i + 1}  # fmt: skip
            yield {"content": "", "tokens": [], "stop": True, "tokens_predicted": len(out),
                   "stop_type": "eos"}  # fmt: skip

        h.stream(events())

    return handler(engine, {"/health": health, "/tokenize": tokenize_route, "/props": props,
                            "/completion": completion})  # fmt: skip


def test_llamacpp_fetches_the_ids_its_stream_withholds() -> None:
    engine = Engine(script=list(range(100, 120)))
    withheld = {3, 4, 10, 19}  # a two-token character, one alone, and the very last token
    with running(llamacpp(engine, withheld)) as url:
        model = connect(url, "llamacpp")
        assert isinstance(model, LlamaCppModel) and model.max_context == 4096
        out = list(model.generate([0], stop_tokens=[RETURN], max_tokens=20))
    assert out == list(range(100, 120))
    fetched = [(r["body"]["stream"], len(r["body"]["prompt"]) - 1, r["body"]["n_predict"])
               for r in engine.requests if r["path"] == "/completion"]  # fmt: skip
    # streamed from 0; the gap 3-4 fetched whole; streaming resumed at 5; and so on
    assert fetched == [(True, 0, 20), (False, 3, 2), (True, 5, 15), (False, 10, 1),
                       (True, 11, 9), (False, 19, 1)]  # fmt: skip
    body = engine.requests[1]["body"]
    assert body["samplers"] == ["temperature", "top_p"] and body["cache_prompt"] is True


# --- errors: one line each ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_engine_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RemoteEngineError) as e:
        connect(url, "llamacpp")
    assert str(e.value) == f"cannot reach llama.cpp at {url}: connection refused (is it running?)"


def test_an_engine_that_does_not_answer_times_out() -> None:
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        started = time.perf_counter()
        with pytest.raises(RemoteEngineError) as e:
            connect(url, "sglang", timeout=0.3)
        assert time.perf_counter() - started < 5
    assert str(e.value) == f"SGLang at {url}/get_model_info: no answer within 0.3 s (timeout)"


def test_text_instead_of_token_ids_is_one_line() -> None:
    with running(vllm(Engine(text_only=True))) as url:
        model = connect(url, "vllm")
        with pytest.raises(RemoteEngineError) as e:
            list(model.generate([1], stop_tokens=[RETURN], max_tokens=5))
    assert str(e.value) == (
        f"vLLM at {url} answered text without token ids (no 'token_ids' in its stream); it needs "
        "a vLLM whose /v1/completions supports return_token_ids"
    )


def test_another_vocabulary_is_refused_at_connect() -> None:
    shifted = Engine(vocabulary=lambda ids: [i + 1 if i < 200000 else i for i in ids])
    with running(sglang(shifted)) as url, pytest.raises(RemoteEngineError) as e:
        connect(url, "sglang")
    message = str(e.value)
    assert message.startswith(f"SGLang at {url} does not use harmony's vocabulary")
    assert "\n" not in message and message.endswith("serve a gpt-oss model")


def test_an_engine_error_answer_is_one_line_with_its_message() -> None:
    with running(vllm(Engine(error="This model's maximum context length is 8 tokens.\n"))) as url:
        model = connect(url, "vllm")
        with pytest.raises(RemoteEngineError) as e:
            list(model.generate(list(range(20)), stop_tokens=[RETURN], max_tokens=5))
    assert str(e.value) == (
        f"vLLM at {url}/v1/completions answered HTTP 400: This model's maximum context length "
        "is 8 tokens."
    )


def test_an_unknown_engine_or_a_missing_one_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown engine 'tgi' \\(llamacpp, vllm, sglang\\)"):
        connect("http://127.0.0.1:1", "tgi")
    with pytest.raises(ValueError, match="say which engine serves it"):
        connect("http://127.0.0.1:1", None)


# --- cancelling ------------------------------------------------------------------------------


def test_closing_the_generator_closes_the_stream_and_the_engine_sees_it() -> None:
    engine = Engine(script=list(range(1000, 3000)), delay=0.01)
    with running(vllm(engine)) as url:
        tokens = connect(url, "vllm").generate([1], stop_tokens=[RETURN], max_tokens=2000)
        assert [next(tokens) for _ in range(3)] == [1000, 1001, 1002]
        tokens.close()
        # the server's next write fails: it knows the client left (an engine aborts there)
        assert engine.disconnected.wait(5)


# --- through the CLI -------------------------------------------------------------------------


def test_an_agent_run_through_a_served_model_answers(capsys: pytest.CaptureFixture[str]) -> None:
    engine = Engine()
    with running(vllm(engine)) as url:
        code = cli_main(["run", "--model", url, "--engine", "vllm", "--temperature", "0",
                         "--no-plugins", "--json", "What is 2+3?"])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out)
    assert result["status"] == "completed" and result["final"] == "The answer is **5**."
    prompt = engine.requests[-1]["body"]["prompt"]
    assert harmony_encoding().decode(prompt).endswith("What is 2+3?<|end|><|start|>assistant")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "vllm"], "--engine names what serves --model URL (an http:// address)"),
        (["--model", "http://127.0.0.1:{port}", "--engine", "sglang"],
         "cannot reach SGLang at http://127.0.0.1:{port}: connection refused (is it running?)"),
        (["--model", "http://127.0.0.1:{port}"], "say which engine serves it"),
        (["--model", "http://127.0.0.1:{port}", "--engine", "vllm", "--device", "cpu"],
         "device: for local weights; http://127.0.0.1:{port} is a served model"),
    ],
)  # fmt: skip
def test_cli_errors_about_served_models_are_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    assert cli_main(["run", *(a.format(port=port) for a in args), "hi"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("harmony-agent: error: ") and err.count("\n") == 1, err
    assert message.format(port=port) in err


def test_the_server_serves_a_served_model(tmp_path: Path) -> None:
    import httpx
    import openai

    engine = Engine()
    port = free_port()
    with running(vllm(engine)) as url:
        server = subprocess.Popen(
            [sys.executable, "-m", "harmony_agent", "serve", "--model", url, "--engine", "vllm",
             "--port", str(port), "--log-level", "warning"],
            cwd=tmp_path, env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        ours = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{ours}/health").status_code == 200:
                        break
                except httpx.ConnectError:
                    assert server.poll() is None, server.communicate()
                    assert time.monotonic() < deadline, "serve did not start"
                    time.sleep(0.1)
            client = openai.OpenAI(base_url=f"{ours}/v1", api_key="-", max_retries=0)
            answer = client.responses.create(model="gpt-oss", input="What is 2+3?")
        finally:
            server.terminate()
            server.communicate(timeout=30)
    assert answer.output_text == "The answer is **5**."
    assert engine.requests[-1]["path"] == "/v1/completions"
