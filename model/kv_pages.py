"""Keys and values of many sequences in fixed-size pages, shared between sequences that start alike.

A page holds `page_size` consecutive positions of every layer. A sequence's `PageTable` lists its
pages in order. A page that fills up is registered under a digest of every token up to its end,
so a later prompt with the same first tokens (the same system and developer messages and tools,
the same earlier turns) takes the page as it is: the keys of a position depend only on the tokens
before it. Where a prompt diverges inside a page, the common rows are copied into a page of its
own (copy on write), so reuse is exact to the token. When a sequence ends its pages stay cached,
its last, partly filled one included; unreferenced pages are evicted least recently used first
when the pool runs out.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from .config import ModelConfig

PAGE_SIZE = 32
_ROOT = b""  # the digest of the empty prefix


def _digest(prefix: bytes, tokens: Sequence[int]) -> bytes:
    return hashlib.blake2b(prefix + array("i", tokens).tobytes(), digest_size=16).digest()


@dataclass
class PageTable:
    """The pages of one sequence: positions 0..length-1 hold the keys and values of `tokens`."""

    pages: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    roots: list[bytes] = field(default_factory=lambda: [_ROOT])
    """roots[j]: the digest of the tokens before page j."""

    @property
    def length(self) -> int:
        return len(self.tokens)


class PagePool:
    """The pages of every layer, their owners and the index of cached prefixes.

    Only one thread may call its methods at a time (the engine's step does).
    """

    def __init__(
        self,
        config: ModelConfig,
        num_pages: int,
        device: torch.device,
        dtype: torch.dtype,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.page_size, self.num_pages = page_size, num_pages
        shape = (num_pages * page_size, config.num_key_value_heads, config.head_dim)
        # zeros, not empty: padding keys are read (and masked), and must be finite
        layers = range(config.num_hidden_layers)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in layers]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in layers]
        self._free = list(range(num_pages - 1, -1, -1))
        self._refs = [0] * num_pages
        self._idle: OrderedDict[int, None] = OrderedDict()  # cached, unreferenced; oldest first
        self._tokens: list[tuple[int, ...]] = [()] * num_pages  # what a registered page holds
        self._parent: list[bytes | None] = [None] * num_pages  # what it continues, if registered
        self._full: dict[bytes, int] = {}  # digest through a full page -> the page
        self._children: dict[bytes, set[int]] = {}  # digest -> registered pages that continue it

    @property
    def device(self) -> torch.device:
        return self.k[0].device

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def available(self) -> int:
        """Pages that can be given out now (free, or cached and evictable)."""
        return len(self._free) + len(self._idle)

    def pages_for(self, tokens: int) -> int:
        return -(-tokens // self.page_size)

    def match(self, tokens: Sequence[int], limit: int) -> PageTable:
        """A table holding the longest cached prefix of `tokens`, at most `limit` tokens of it."""
        table, size = PageTable(), self.page_size
        while True:
            at, root = table.length, table.roots[-1]
            chunk = tuple(tokens[at : at + size])
            page = self._full.get(_digest(root, chunk)) if len(chunk) == size else None
            if page is not None and at + size <= limit:
                self._acquire(page)
                self._append_full(table, page, chunk)
                continue
            best, common = None, 0
            for candidate in self._children.get(root, ()):
                n = _common_prefix(self._tokens[candidate], chunk)
                if n > common:
                    best, common = candidate, n
            common = min(common, limit - at)
            if best is not None and common > 0:
                self._acquire(best)  # it must not be evicted for its own copy
                copy = self._alloc()
                if copy is not None:
                    self._copy_rows(best, copy, common)
                    table.pages.append(copy)
                    table.tokens.extend(chunk[:common])
                self.release_pages([best])
            return table

    def reserve(self, table: PageTable, length: int) -> bool:
        """Give `table` pages for positions up to `length`; False (and nothing taken) if the pool
        has too few."""
        need = self.pages_for(length) - len(table.pages)
        if need > self.available():
            return False
        for _ in range(need):
            page = self._alloc()
            assert page is not None
            table.pages.append(page)
        return True

    def commit(self, table: PageTable, tokens: Sequence[int]) -> None:
        """`tokens` were written at the table's next positions: pages they fill are registered."""
        size = self.page_size
        for token in tokens:
            table.tokens.append(token)
            if table.length % size == 0:  # a page just filled
                j = table.length // size - 1
                chunk = tuple(table.tokens[j * size :])
                key = _digest(table.roots[j], chunk)
                page = table.pages[j]
                if key not in self._full and self._parent[page] is None:
                    self._register(page, table.roots[j], chunk)
                    self._full[key] = page
                table.roots.append(key)

    def release(self, table: PageTable, *, cache: bool = True) -> None:
        """The sequence is done with its pages; they stay cached for prompts that start alike
        (with `cache` False, only the pages already registered do)."""
        full = len(table.roots) - 1
        if cache and len(table.pages) > full and table.length > full * self.page_size:
            last = table.pages[full]  # partly filled: kept for copies of its first rows
            if self._parent[last] is None:
                self._register(
                    last, table.roots[full], tuple(table.tokens[full * self.page_size :])
                )
        self.release_pages(reversed(table.pages))  # deepest first: evicted before its prefix
        table.pages = []

    def release_pages(self, pages: Iterable[int]) -> None:
        for page in pages:
            self._refs[page] -= 1
            if self._refs[page] == 0:
                if self._parent[page] is None:
                    self._free.append(page)
                else:
                    self._idle[page] = None

    def forget(self) -> None:
        """Drop every cached page no sequence holds."""
        while self._idle:
            self._free.append(self._evict())

    def _register(self, page: int, parent: bytes, tokens: tuple[int, ...]) -> None:
        self._parent[page], self._tokens[page] = parent, tokens
        self._children.setdefault(parent, set()).add(page)

    def _append_full(self, table: PageTable, page: int, chunk: tuple[int, ...]) -> None:
        table.pages.append(page)
        table.roots.append(_digest(table.roots[-1], chunk))
        table.tokens.extend(chunk)

    def _acquire(self, page: int) -> None:
        self._refs[page] += 1
        self._idle.pop(page, None)

    def _alloc(self) -> int | None:
        if self._free:
            page = self._free.pop()
        elif self._idle:
            page = self._evict()
        else:
            return None
        self._refs[page] = 1
        return page

    def _evict(self) -> int:
        page, _ = self._idle.popitem(last=False)
        parent = self._parent[page]
        assert parent is not None
        self._children[parent].discard(page)
        if not self._children[parent]:
            del self._children[parent]
        tokens = self._tokens[page]
        key = _digest(parent, tokens)
        if self._full.get(key) == page:
            del self._full[key]
        self._parent[page], self._tokens[page] = None, ()
        return page

    def _copy_rows(self, src: int, dst: int, n: int) -> None:
        a, b = src * self.page_size, dst * self.page_size
        for t in self.k + self.v:
            t[b : b + n] = t[a : a + n]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class PagedBatch:
    """The cache of one batched forward: row b writes its new tokens at positions starts[b].. of
    its table and attends to its own keys (its window of them in sliding-window layers)."""

    def __init__(
        self, pool: PagePool, tables: Sequence[PageTable], starts: Sequence[int], new: int
    ) -> None:
        self.pool = pool
        device = pool.k[0].device
        size = pool.page_size
        self.ends = [s + new for s in starts]
        self.starts = starts
        self._tables = tables
        slots = [_slots(t, s, s + new, size) for t, s in zip(tables, starts, strict=True)]
        self.write = torch.tensor([i for row in slots for i in row], device=device)
        self._reads: dict[int | None, tuple[torch.Tensor, torch.Tensor]] = {}

    def layer(self, i: int) -> _PagedLayer:
        return _PagedLayer(self, i)

    def reads(self, window: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Slots each row attends to (B, S), padded at the end, and each row's first position."""
        if window not in self._reads:
            firsts = [0 if window is None else max(0, s - window + 1) for s in self.starts]
            rows = [
                _slots(t, f, e, self.pool.page_size)
                for t, f, e in zip(self._tables, firsts, self.ends, strict=True)
            ]
            width = max(len(r) for r in rows)
            device = self.write.device
            idx = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=device)
            self._reads[window] = idx, torch.tensor(firsts, device=device)
        return self._reads[window]


class _PagedLayer:
    """Layer i of a `PagedBatch`: its key and value tensors (slot, nkv, hd) and which slots
    the batch writes and reads (a kernel over the pages takes these as they are)."""

    def __init__(self, batch: PagedBatch, i: int) -> None:
        self.batch, self.k, self.v = batch, batch.pool.k[i], batch.pool.v[i]

    def slots(self, window: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The slots of the new tokens (B * T,), row by row; the slots each row attends to
        (B, S), padded at the end with slot 0; each row's first position attended to (B,)."""
        return (self.batch.write, *self.batch.reads(window))

    def update(
        self, k: torch.Tensor, v: torch.Tensor, start: int | torch.Tensor, window: int | None
    ) -> tuple[torch.Tensor, torch.Tensor, int | torch.Tensor]:
        b, nkv, t, hd = k.shape
        write, idx, firsts = self.slots(window)
        self.k[write] = k.transpose(1, 2).reshape(b * t, nkv, hd)
        self.v[write] = v.transpose(1, 2).reshape(b * t, nkv, hd)
        # (B, S, nkv, hd) -> (B, nkv, S, hd)
        return self.k[idx].transpose(1, 2), self.v[idx].transpose(1, 2), firsts


def _slots(table: PageTable, first: int, end: int, size: int) -> list[int]:
    return [table.pages[p // size] * size + p % size for p in range(first, end)]
