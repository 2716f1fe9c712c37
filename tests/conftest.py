"""Fixtures shared across test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from _llamacpp import LlamaCpp, llama_cpp


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models: one thread avoids oversubscription stalls on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def llama() -> LlamaCpp:
    """The cached llama.cpp build (built at first use, ~8 minutes on 2 cores)."""
    built = llama_cpp()  # in CI a failed build raises: these tests fail instead of skipping
    if isinstance(built, str):
        pytest.skip(built)
    return built
