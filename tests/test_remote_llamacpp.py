"""Against a real llama.cpp (tests/_llamacpp.py builds llama-server once and caches it; the first
build takes ~8 minutes on 2 cores): its converter and our GGUF writer make the same file, our
reader on its file gives our model, its greedy tokens through `engine="llamacpp"` equal our
engine's (the sliding window exercised: llama.cpp applies the same convention), agent runs
through it end as ours do, and closing the stream or Ctrl-C cancels the request there."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from _llamacpp import LlamaCpp, convert_with_llama_cpp, serving
from _support import cli_env
from openai_harmony import Role

from harmony_agent.agent import Agent
from harmony_agent.model import Sampling
from harmony_agent.model.checkpoint import write_random_checkpoint
from harmony_agent.model.config import ModelConfig
from harmony_agent.model.gguf import GgufFile, convert_to_gguf, read_header
from harmony_agent.model.loading import load_model
from harmony_agent.model.remote import LlamaCppModel

CONFIG = ModelConfig(
    num_hidden_layers=2, num_experts=4, experts_per_token=2, hidden_size=64,
    intermediate_size=64, head_dim=16, num_attention_heads=4, num_key_value_heads=2,
    sliding_window=8,
)  # fmt: skip
"""Full vocabulary (the converter writes o200k's), a window far shorter than the sequences."""
PROMPT = torch.randint(0, 199998, (8,), generator=torch.Generator().manual_seed(1)).tolist()
GREEDY = Sampling(temperature=0)
EXACT_KV = ("-ctk", "f32", "-ctv", "f32")
"""llama-server's KV cache in f32 (default f16): with f32 weights it then computes as we do."""

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same random model twice, in HF layout (what the converter reads): MXFP4 experts
    with bf16 elsewhere (as gpt-oss ships), and every weight dense fp32."""
    root = tmp_path_factory.mktemp("checkpoints")
    fp32 = write_random_checkpoint(root / "fp32", CONFIG, layout="hf", mxfp4=False,
                                   dtype=torch.float32)  # fmt: skip
    return {"mxfp4": write_random_checkpoint(root / "mxfp4", CONFIG, layout="hf"), "fp32": fp32}


@pytest.fixture(scope="module")
def converted(llama: LlamaCpp, checkpoints: dict[str, Path]) -> dict[str, Path]:
    """llama.cpp's convert_hf_to_gguf.py on each (cached by content after the first run)."""
    return {"mxfp4": convert_with_llama_cpp(llama, checkpoints["mxfp4"]),
            "fp32": convert_with_llama_cpp(llama, checkpoints["fp32"], "f32")}  # fmt: skip


@pytest.fixture(scope="module")
def written(
    checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Our writer's GGUF of each."""
    root = tmp_path_factory.mktemp("ours")
    return {kind: convert_to_gguf(folder, root / f"{kind}.gguf")
            for kind, folder in checkpoints.items()}  # fmt: skip


def greedy(model: object, prompt: list[int], count: int) -> list[int]:
    return list(model.generate(prompt, stop_tokens=(), max_tokens=count,  # type: ignore[attr-defined]
                               sampling=GREEDY))  # fmt: skip


@pytest.mark.parametrize("kind", ["mxfp4", "fp32"])
def test_llamacpps_converter_and_our_writer_make_the_same_file(
    converted: dict[str, Path], written: dict[str, Path], kind: str
) -> None:
    theirs, their_tensors, _ = read_header(converted[kind], strings=True)
    ours, our_tensors, _ = read_header(written[kind], strings=True)
    cosmetic = {"general.name", "general.size_label"}  # the converter's guesses from the folder
    assert {k: v for k, v in ours.items() if k not in cosmetic} == {
        k: v for k, v in theirs.items() if k not in cosmetic
    }
    assert [(t.name, t.dims, t.kind) for t in sorted(our_tensors, key=lambda t: t.name)] == [
        (t.name, t.dims, t.kind) for t in sorted(their_tensors, key=lambda t: t.name)
    ]
    a, b = GgufFile(converted[kind]), GgufFile(written[kind])
    for (name, x), (_, y) in zip(a.tensors(), b.tensors(), strict=True):
        assert torch.equal(x, y), name


def test_our_reader_on_llamacpps_file_gives_our_model(
    converted: dict[str, Path], checkpoints: dict[str, Path]
) -> None:
    want = dict(load_model(checkpoints["mxfp4"], progress=False).transformer.state_dict())
    got = load_model(converted["mxfp4"], progress=False)
    assert all(torch.equal(t, want[n]) for n, t in got.transformer.state_dict().items())
    tokens = PROMPT * 3
    ours = load_model(checkpoints["mxfp4"], dtype="fp32", progress=False).logits(tokens)
    assert torch.equal(load_model(converted["mxfp4"], dtype="fp32", progress=False).logits(tokens),
                       ours)  # fmt: skip


@pytest.fixture(scope="module")
def ours_fp32(checkpoints: dict[str, Path]) -> object:
    return load_model(checkpoints["fp32"], dtype="fp32", progress=False)


@pytest.fixture(scope="module")
def server(llama: LlamaCpp, converted: dict[str, Path]) -> Iterator[str]:
    """llama-server with the converter's fp32 file (one slot, 4096 tokens of context)."""
    with serving(llama, converted["fp32"], *EXACT_KV, context=4096) as url:
        yield url


def test_greedy_tokens_through_llamacpp_equal_ours_and_its_window_is_ours(
    server: str, ours_fp32: object, checkpoints: dict[str, Path]
) -> None:
    remote = load_model(server, engine="llamacpp")
    assert isinstance(remote, LlamaCppModel)
    theirs = greedy(remote, PROMPT, 48)
    assert greedy(ours_fp32, PROMPT, 48) == theirs
    # Which convention: key j seen by query i iff 0 <= i - j < window, on even layers. Each
    # other reading of it gives other tokens on this model (56 tokens, window 8). (On the
    # one-sequence engine, whose cache holds every position: the page pool keeps only each
    # sliding layer's window, so a layer's window cannot change under it.)
    one = load_model(checkpoints["fp32"], dtype="fp32", progress=False, batching=False)
    assert greedy(one, PROMPT, 48) == theirs
    blocks = one.transformer.block  # type: ignore[attr-defined]
    window = CONFIG.sliding_window
    try:
        for other in ([window + 1, None], [window - 1, None], [None, None], [None, window]):
            for block, w in zip(blocks, other, strict=True):
                block.attn.window = w
            assert greedy(one, PROMPT, 48) != theirs, other
    finally:
        for block, w in zip(blocks, [window, None], strict=True):
            block.attn.window = w


def test_our_writers_file_served_by_llamacpp_gives_the_same_greedy_tokens(
    llama: LlamaCpp, written: dict[str, Path], ours_fp32: object
) -> None:
    # (MXFP4: our writer's file is the converter's, byte for byte, above; and a trained model
    # written by us answers through llama-server as through our engine, below)
    with serving(llama, written["fp32"], *EXACT_KV) as url:
        served = greedy(load_model(url, engine="llamacpp"), PROMPT, 48)
    assert served == greedy(ours_fp32, PROMPT, 48)


def completion(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """llama-server's answer to POST /completion: its stream's events, or the one answer."""
    request = urllib.request.Request(url + "/completion", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=120) as answer:
        if not body["stream"]:
            return [json.load(answer)]
        return [json.loads(line[6:]) for line in answer if line.startswith(b"data: ")]


def test_the_ids_llamacpps_stream_withholds_are_fetched(server: str) -> None:
    body = {"prompt": PROMPT, "n_predict": 64, "temperature": 0, "samplers": ["temperature"],
            "return_tokens": True}  # fmt: skip
    streamed = [t for e in completion(server, {**body, "stream": True}) for t in e["tokens"]]
    (whole,) = completion(server, {**body, "stream": False})
    ours = greedy(load_model(server, engine="llamacpp"), PROMPT, 64)
    # llama-server streams nothing for a token that ends inside a UTF-8 character
    assert len(streamed) < 64 == len(whole["tokens"])
    assert ours == whole["tokens"]


def slot_busy(url: str) -> bool:
    with urllib.request.urlopen(url + "/slots", timeout=30) as answer:
        return any(slot["is_processing"] for slot in json.load(answer))


def wait_for(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def seconds_per_token(server: str) -> float:
    """How fast the server decodes here: a request left running would take its tokens times
    this; a cancelled one stops long before."""
    tokens = load_model(server, engine="llamacpp").generate(
        PROMPT, stop_tokens=(), max_tokens=41, sampling=GREEDY
    )
    next(tokens)
    started = time.perf_counter()
    assert sum(1 for _ in tokens) == 40
    return (time.perf_counter() - started) / 40


def test_closing_the_generator_cancels_the_request_in_llama_server(
    server: str, seconds_per_token: float
) -> None:
    tokens = load_model(server, engine="llamacpp").generate(
        PROMPT, stop_tokens=(), max_tokens=4000, sampling=GREEDY
    )
    next(tokens), next(tokens)
    assert slot_busy(server)
    tokens.close()
    assert wait_for(lambda: not slot_busy(server), 4000 * seconds_per_token / 4)


def test_ctrl_c_in_the_cli_cancels_the_request_in_llama_server(
    server: str, seconds_per_token: float, tmp_path: Path
) -> None:
    # random weights never write harmony: only the token limit would end this run
    proc = subprocess.Popen(
        [sys.executable, "-m", "harmony_agent", "run", "--model", server, "--engine", "llamacpp",
         "--max-tokens", "3500", "hi"],
        cwd=tmp_path, env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert wait_for(lambda: slot_busy(server), 120), proc.stderr
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err.endswith("harmony-agent: interrupted\n"), err
    assert wait_for(lambda: not slot_busy(server), 3500 * seconds_per_token / 4)


def test_the_engines_context_is_the_models_and_can_be_lowered(server: str) -> None:
    assert load_model(server, engine="llamacpp").max_context == 4096
    assert load_model(server, engine="llamacpp", max_context=300).max_context == 300


@pytest.fixture(scope="module")
def demo_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from harmony_agent.model.demo import demo_model_path

    return convert_to_gguf(demo_model_path(), tmp_path_factory.mktemp("demo") / "demo.gguf")


def demo_agent(model: object) -> Agent:
    """The demo model's own setting (the CLI's demo agent): it was trained on these prompts."""
    from harmony_agent.model.demo import DEMO_CURRENT_DATE
    from harmony_agent.model.demo.task import convert_units
    from harmony_agent.tools import PythonTool, function_tool

    return Agent(model, tools=[PythonTool(), function_tool(convert_units)], sampling=GREEDY,
                 max_steps=6, max_turn_tokens=256, current_date=DEMO_CURRENT_DATE)  # fmt: skip


def test_an_agent_run_through_llamacpp_calls_the_tool_and_answers_as_ours_does(
    llama: LlamaCpp, demo_gguf: Path
) -> None:
    """A trained model (the demo's, MXFP4 experts, window 64 under a ~400-token prompt) as our
    writer's GGUF in llama-server: the same tool call and answer as our engine gives."""
    from harmony_agent.model.demo import load_demo_model

    question = "Convert 12 km to miles."
    local = demo_agent(load_demo_model(progress=False)).run(question)
    with serving(llama, demo_gguf, context=4096) as url:
        remote = demo_agent(load_model(url, engine="llamacpp")).run(question)
    assert (remote.status, remote.final) == (local.status, local.final) == (
        "completed", "12 km is 7.46 miles.")  # fmt: skip
    calls = [m.recipient for m in remote.messages
             if m.author.role == Role.ASSISTANT and m.recipient]  # fmt: skip
    assert calls == ["functions.convert_units"]
