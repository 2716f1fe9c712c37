"""A real llama.cpp for the interop tests and the remote benchmark, built once and cached.

The source is the llama.cpp tree vendored in the `llama-cpp-python` sdist on the pip registry
(pinned below), so CI needs nothing but pip, cmake, ninja and a C++ compiler. The first build on
a machine takes about 8 minutes on 2 cores; later runs reuse `<cache>/llama.cpp-<version>/`
(`python3 tests/_llamacpp.py` builds it ahead of a test run). Outside CI a failed build skips
the tests that need it; in CI (env CI) it fails them, so a broken build step cannot hide.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harmony_agent.encoding import cache_dir

VERSION = "0.3.36"
"""The llama-cpp-python sdist whose vendored llama.cpp we build."""
TARGETS = ("llama-server", "llama-bench")
CMAKE_OPTIONS = (
    "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF",
    # Nothing may download at build time: no prebuilt web UI, no HTTPS client.
    "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
)  # fmt: skip


class LlamaCppBuildError(RuntimeError):
    """llama.cpp could not be fetched or built (the message names the step and the log)."""


@dataclass(frozen=True)
class LlamaCpp:
    """A built llama.cpp: its binaries and the source tree (for `convert_hf_to_gguf.py`)."""

    root: Path

    @property
    def source(self) -> Path:
        return self.root / "src"

    @property
    def server(self) -> Path:
        return self.root / "build" / "bin" / "llama-server"

    @property
    def bench(self) -> Path:
        return self.root / "build" / "bin" / "llama-bench"

    @property
    def converter(self) -> Path:
        """`convert_hf_to_gguf.py`: it puts the tree's own gguf-py first on its path."""
        return self.source / "convert_hf_to_gguf.py"

    @property
    def _done(self) -> Path:
        return self.root / "built"

    def is_built(self) -> bool:
        return self._done.is_file() and self.server.is_file() and self.bench.is_file()


def _run(step: str, command: list[str], log: Path, cwd: Path | None = None) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode:
        raise LlamaCppBuildError(f"llama.cpp {step} failed (exit {done.returncode}); see {log}")


def _fetch_source(into: Path, log: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _run("download", [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={VERSION}",
                          "--no-deps", "--no-binary", ":all:", "-d", tmp, "-q"], log)  # fmt: skip
        (sdist,) = Path(tmp).glob("llama_cpp_python-*.tar.gz")
        prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
        staging = into.with_name(into.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        with tarfile.open(sdist) as tar:
            members = []
            for member in tar.getmembers():
                if member.name.startswith(prefix):
                    member.name = member.name[len(prefix) :]
                    members.append(member)
            tar.extractall(staging, members=members, filter="data")
        staging.rename(into)


def build(root: Path | None = None) -> LlamaCpp:
    """The cached llama.cpp, built first if it is not there yet (one build at a time: a lock)."""
    built = LlamaCpp(root or cache_dir() / f"llama.cpp-{VERSION}")
    if built.is_built():
        return built
    built.root.mkdir(parents=True, exist_ok=True)
    log = built.root / "build.log"
    with (built.root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if built.is_built():  # another process finished it while we waited
            return built
        for tool in ("cmake", "ninja"):
            if shutil.which(tool) is None:
                raise LlamaCppBuildError(f"building llama.cpp needs {tool}: apt-get install "
                                         "cmake ninja-build g++")  # fmt: skip
        # pytest captures output: say it on the real stderr, a first build takes a while
        print(f"\nbuilding llama.cpp from llama-cpp-python {VERSION}'s sdist into {built.root} "
              f"(first time only: ~8 minutes on 2 cores; log {log})",
              file=sys.__stderr__)  # fmt: skip
        if not built.converter.is_file():
            _fetch_source(built.source, log)
        build_dir = built.root / "build"
        _run("configure", ["cmake", "-S", str(built.source), "-B", str(build_dir),
                           *CMAKE_OPTIONS], log)  # fmt: skip
        _run("build", ["cmake", "--build", str(build_dir), "--target", *TARGETS,
                       "-j", str(os.cpu_count() or 2)], log)  # fmt: skip
        built._done.write_text(f"llama-cpp-python {VERSION}\n")
    return built


def _tokenizer(built: LlamaCpp) -> Path:
    """The o200k + harmony tokenizer.json for the converter, made once per cache (~1 min)."""
    folder = built.root / "o200k-harmony-tokenizer"
    if not (folder / "tokenizer.json").is_file():
        staging = Path(tempfile.mkdtemp(dir=built.root))
        write_o200k_tokenizer(staging)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    return folder


def write_o200k_tokenizer(folder: Path) -> None:
    """tokenizer.json (+ config) for o200k and harmony's special tokens, made by transformers'
    tiktoken converter (what `convert_tiktoken_to_fast` runs) from bpe-openai's copy of the
    ranks, so tiktoken itself is not needed."""
    from bpe_openai.registry import o200k_base
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from harmony_agent.encoding import VOCAB_SIZE, harmony_encoding

    base = o200k_base()

    class Converter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
            return base["mergeable_ranks"]

    encoding = harmony_encoding()
    first = len(base["mergeable_ranks"])  # the special tokens follow the ranks, in id order
    specials = [encoding.decode([i]) for i in range(first, VOCAB_SIZE)]
    tokenizer = Converter(pattern=base["pat_str"], extra_special_tokens=specials).converted()
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|startoftext|>",
              "eos_token": "<|return|>", "pad_token": "<|endoftext|>"}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def convert_with_llama_cpp(built: LlamaCpp, hf_folder: Path, outtype: str = "auto") -> Path:
    """llama.cpp's own `convert_hf_to_gguf.py` on an HF-layout checkpoint folder (`outtype`:
    its --outtype for the dense weights), cached by the folder's contents (a conversion takes a
    minute or two here)."""
    digest = hashlib.sha256(outtype.encode())
    for name in ("config.json", "model.safetensors"):
        with (hf_folder / name).open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    out = built.root / "converted" / f"{digest.hexdigest()[:20]}.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(_tokenizer(built) / name, hf_folder / name)
    partial = out.with_suffix(".partial")
    _run("convert_hf_to_gguf.py", [sys.executable, str(built.converter), str(hf_folder),
                                   "--outtype", outtype, "--outfile", str(partial)],
         out.with_suffix(".log"))  # fmt: skip
    partial.rename(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(
    built: LlamaCpp, gguf: Path, *args: str, context: int = 2048, threads: int = 1
) -> Iterator[str]:
    """`llama-server` on 127.0.0.1 with `gguf` (one slot): its URL, once healthy. One thread by
    default: on 2 busy cores, 2 threads that spin-wait for each other decoded a tiny model 15x
    slower here (4 against 61-70 tok/s)."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
    command = [str(built.server), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
               "-c", str(context), "-np", "1", "-t", str(threads), "--no-webui", *args]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama-server exited ({proc.returncode}): "
                                   f"{log.read_text()[-2000:]}")  # fmt: skip
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama-server did not get healthy: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.unlink()


@functools.cache
def llama_cpp() -> LlamaCpp | str:
    """The built llama.cpp, or why there is none (outside CI; in CI a failed build raises)."""
    try:
        return build()
    except LlamaCppBuildError as e:
        if os.environ.get("CI"):
            raise
        return str(e)


if __name__ == "__main__":
    print(build().root)
