"""Keys and values of many sequences in fixed-size pages, shared between sequences that start alike.

The layers fall in groups by the keys they attend to: the full-attention layers, and the
sliding-window layers. A page holds `page_size` consecutive positions of one group's layers; a
sequence's `PageTable` lists each group's pages in order. A sliding-window group needs only the
last `window` positions: the pages a sequence has moved past go back to the pool as cache (kept
for prefixes that end inside them, evicted first), so a long conversation holds a few of them,
not its whole length.

A page that fills up is registered under a digest of every token up to its end, so a later prompt
with the same first tokens (the same system and developer messages and tools, the same earlier
turns) takes the page as it is: the keys of a position depend only on the tokens before it. Where
a prompt diverges inside a page, the common rows are copied into a page of its own (copy on
write), so reuse is exact to the token. A cached prefix is used up to the last point where every
sliding-window group still has the window before it. When a sequence ends its pages stay cached,
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
_NONE = -1  # no page: a sliding-window group's page behind the window


def _digest(prefix: bytes, tokens: Sequence[int]) -> bytes:
    return hashlib.blake2b(prefix + array("i", tokens).tobytes(), digest_size=16).digest()


@dataclass(frozen=True)
class LayerGroup:
    """Layers that attend to the same positions: all of them (window None) or the last `window`."""

    window: int | None
    layers: tuple[int, ...]


def layer_groups(config: ModelConfig) -> list[LayerGroup]:
    full = tuple(i for i in range(config.num_hidden_layers) if not config.is_sliding(i))
    sliding = tuple(i for i in range(config.num_hidden_layers) if config.is_sliding(i))
    groups = [LayerGroup(None, full), LayerGroup(config.sliding_window, sliding)]
    return [g for g in groups if g.layers]


@dataclass
class PageTable:
    """The pages of one sequence: positions 0..length-1 hold the keys and values of `tokens`."""

    pages: list[list[int]]
    """pages[g][j]: the page of group g holding positions j * page_size.. (_NONE: not held)."""
    tokens: list[int] = field(default_factory=list)
    roots: list[bytes] = field(default_factory=lambda: [_ROOT])
    """roots[j]: the digest of the tokens before page j."""

    @property
    def length(self) -> int:
        return len(self.tokens)


class PagePool:
    """The pages of every layer group, their owners and the index of cached prefixes.

    Every group's pages come from one store of `num_pages`: a page holds as many layers as the
    largest group has (the gpt-oss groups are equal), each layer's slots side by side, so that a
    decode step streams a sequence's keys of a layer instead of one scattered row a key. Only one
    thread may call its methods at a time (the engine's step does).
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
        self.groups = layer_groups(config)
        width = max(len(g.layers) for g in self.groups)
        shape = (width, num_pages * page_size, config.num_key_value_heads, config.head_dim)
        # zeros, not empty: padding keys are read (and masked), and must be finite
        self._store_k = torch.zeros(shape, device=device, dtype=dtype)
        self._store_v = torch.zeros(shape, device=device, dtype=dtype)
        self.group_of = [0] * config.num_hidden_layers
        self.k: list[torch.Tensor] = [self._store_k[0]] * config.num_hidden_layers
        self.v: list[torch.Tensor] = [self._store_v[0]] * config.num_hidden_layers
        for g, group in enumerate(self.groups):
            for column, i in enumerate(group.layers):  # layer i: (slot, nkv, hd) views, made once
                self.group_of[i] = g
                self.k[i], self.v[i] = self._store_k[column], self._store_v[column]
        self._free = list(range(num_pages - 1, -1, -1))
        self._refs = [0] * num_pages
        self._idle: OrderedDict[int, None] = OrderedDict()  # cached, unreferenced; oldest first
        self._group = [0] * num_pages  # whose layers a registered page holds
        self._tokens: list[tuple[int, ...]] = [()] * num_pages  # what a registered page holds
        self._parent: list[bytes | None] = [None] * num_pages  # what it continues, if registered
        self._full: dict[tuple[int, bytes], int] = {}  # (group, digest through a full page) -> page
        self._children: dict[tuple[int, bytes], set[int]] = {}  # (group, digest) -> continuations

    @property
    def device(self) -> torch.device:
        return self._store_k.device

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self._store_k, self._store_v))

    def available(self) -> int:
        """Pages that can be given out now (free, or cached and evictable)."""
        return len(self._free) + len(self._idle)

    def pages_for(self, tokens: int) -> int:
        return -(-tokens // self.page_size)

    def table(self) -> PageTable:
        return PageTable([[] for _ in self.groups])

    def match(self, tokens: Sequence[int], limit: int) -> PageTable:
        """A table holding the longest cached prefix of `tokens`, at most `limit` tokens of it,
        whose sliding-window groups still have the window before its end."""
        size, groups = self.page_size, range(len(self.groups))
        found: list[list[int]] = []  # found[j][g]: group g's page for page j of the prefix
        roots = [_ROOT]
        while (len(found) + 1) * size <= limit:
            at = len(found) * size
            key = _digest(roots[-1], tokens[at : at + size])
            row = [self._full.get((g, key), _NONE) for g in groups]
            if any(p == _NONE and self.groups[g].window is None for g, p in enumerate(row)):
                break
            if all(p == _NONE for p in row):
                break
            found.append(row)
            roots.append(key)
        # the longest usable prefix: whole pages and the common rows of a cached page after them
        k = len(found)
        at = k * size
        partial, common = self._continuations(roots[k], tokens[at : min(at + size, limit)])
        if not (partial and self._window_held(found, k, at + common)):
            partial, common = [], 0
            while k and not self._window_held(found, k, k * size):
                k -= 1
        end = k * size + common
        table = self.table()
        for g, group in enumerate(self.groups):
            first = self._first_page(group, end)
            for j in range(k):
                page = found[j][g] if j >= first else _NONE
                if page != _NONE:
                    self._acquire(page)
                table.pages[g].append(page)
        table.tokens.extend(tokens[: k * size])
        table.roots.extend(roots[1 : k + 1])
        if partial:
            for page in partial:
                self._acquire(page)  # it must not be evicted for its own copy
            copies = [self._alloc() for _ in partial]
            if all(c is not None for c in copies):
                for g, (src, dst) in enumerate(zip(partial, copies, strict=True)):
                    self._copy_rows(src, dst, common)  # type: ignore[arg-type]
                    table.pages[g].append(dst)  # type: ignore[arg-type]
                table.tokens.extend(tokens[k * size : end])
            self.release_pages(partial)
            if not all(c is not None for c in copies):  # a full pool: start from nothing
                self.release_pages(c for c in copies if c is not None)
                self.release(table, cache=False)
                return self.table()
        return table

    def _continuations(self, root: bytes, chunk: Sequence[int]) -> tuple[list[int], int]:
        """Each group's cached page continuing `root` most like `chunk`, and the rows they all
        share with it ([] and 0 if a group has none)."""
        best, common = [], len(chunk)
        for g in range(len(self.groups)):
            page, n = _NONE, 0
            for candidate in self._children.get((g, root), ()):
                m = _common_prefix(self._tokens[candidate], chunk)
                if m > n:
                    page, n = candidate, m
            if page == _NONE:
                return [], 0
            best.append(page)
            common = min(common, n)
        return (best, common) if common else ([], 0)

    def _window_held(self, found: list[list[int]], k: int, end: int) -> bool:
        """Whether the first k pages of `found` hold each sliding-window group's window before
        position `end`."""
        return all(
            found[j][g] != _NONE
            for g, group in enumerate(self.groups)
            if group.window is not None
            for j in range(self._first_page(group, end), k)
        )

    def _first_page(self, group: LayerGroup, end: int) -> int:
        """The first page a query at position `end` reads in the group's layers."""
        return 0 if group.window is None else max(0, end - group.window + 1) // self.page_size

    def reserve(self, table: PageTable, length: int, writing: int | None = None) -> bool:
        """Give `table` the pages of the full-attention groups for positions up to `length`, and
        of the sliding-window groups for the positions up to `writing` (default `length`) that
        the next forward writes; False (and nothing taken) if the pool has too few."""
        writing = length if writing is None else writing
        needs = []
        for g, group in enumerate(self.groups):
            end = self.pages_for(length if group.window is None else writing)
            needs.append(max(0, end - len(table.pages[g])))
        if sum(needs) > self.available():
            return False
        for g, need in enumerate(needs):
            for _ in range(need):
                page = self._alloc()
                assert page is not None
                table.pages[g].append(page)
        return True

    def commit(self, table: PageTable, tokens: Sequence[int]) -> None:
        """`tokens` were written at the table's next positions: pages they fill are registered,
        and sliding-window pages the next position no longer reads are let go."""
        size = self.page_size
        for token in tokens:
            table.tokens.append(token)
            if table.length % size == 0:  # a page just filled
                j = table.length // size - 1
                chunk = tuple(table.tokens[j * size :])
                key = _digest(table.roots[j], chunk)
                for g in range(len(self.groups)):
                    page = table.pages[g][j]
                    if (g, key) not in self._full and self._parent[page] is None:
                        self._register(page, g, table.roots[j], chunk)
                        self._full[(g, key)] = page
                table.roots.append(key)
        for g, group in enumerate(self.groups):
            pages = table.pages[g]
            j = min(self._first_page(group, table.length), len(pages)) - 1
            while j >= 0 and pages[j] != _NONE:  # (the pages let go are the first ones)
                self.release_pages([pages[j]])
                pages[j] = _NONE
                j -= 1

    def release(self, table: PageTable, *, cache: bool = True) -> None:
        """The sequence is done with its pages; they stay cached for prompts that start alike
        (with `cache` False, only the pages already registered do)."""
        full = len(table.roots) - 1
        for g, pages in enumerate(table.pages):
            if cache and len(pages) > full and table.length > full * self.page_size:
                last = pages[full]  # partly filled: kept for copies of its first rows
                if self._parent[last] is None:
                    chunk = tuple(table.tokens[full * self.page_size :])
                    self._register(last, g, table.roots[full], chunk)
        deepest = max(len(pages) for pages in table.pages)  # released first: evicted first
        self.release_pages(
            pages[j]
            for j in reversed(range(deepest))
            for pages in table.pages
            if j < len(pages) and pages[j] != _NONE
        )
        table.pages = [[] for _ in self.groups]

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

    def _register(self, page: int, group: int, parent: bytes, tokens: tuple[int, ...]) -> None:
        self._group[page], self._parent[page], self._tokens[page] = group, parent, tokens
        self._children.setdefault((group, parent), set()).add(page)

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
        parent, group = self._parent[page], self._group[page]
        assert parent is not None
        siblings = self._children[(group, parent)]
        siblings.discard(page)
        if not siblings:
            del self._children[(group, parent)]
        key = (group, _digest(parent, self._tokens[page]))
        if self._full.get(key) == page:
            del self._full[key]
        self._parent[page], self._tokens[page] = None, ()
        return page

    def _copy_rows(self, src: int, dst: int, n: int) -> None:
        a, b = src * self.page_size, dst * self.page_size
        for t in (self._store_k, self._store_v):
            t[:, b : b + n] = t[:, a : a + n]


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
        self.ends = [s + new for s in starts]
        self.starts = starts
        self._tables = tables
        self._writes: dict[int, torch.Tensor] = {}
        self._reads: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def layer(self, i: int) -> _PagedLayer:
        return _PagedLayer(self, i)

    def write(self, g: int) -> torch.Tensor:
        """The slots of group g the new tokens go to (B * T,), row by row."""
        if g not in self._writes:
            size = self.pool.page_size
            rows = zip(self._tables, self.starts, self.ends, strict=True)
            slots = [i for t, s, e in rows for i in _slots(t.pages[g], s, e, size)]
            self._writes[g] = torch.tensor(slots, device=self.pool.device)
        return self._writes[g]

    def reads(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Slots of group g each row attends to (B, S), padded at the end, and each row's first
        position."""
        if g not in self._reads:
            window = self.pool.groups[g].window
            firsts = [0 if window is None else max(0, s - window + 1) for s in self.starts]
            rows = [
                _slots(t.pages[g], f, e, self.pool.page_size)
                for t, f, e in zip(self._tables, firsts, self.ends, strict=True)
            ]
            width = max(len(r) for r in rows)
            device = self.pool.device
            idx = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=device)
            self._reads[g] = idx, torch.tensor(firsts, device=device)
        return self._reads[g]


class _PagedLayer:
    """Layer i of a `PagedBatch`: its key and value tensors (slot, nkv, hd) and which slots
    the batch writes and reads (a kernel over the pages takes these as they are)."""

    def __init__(self, batch: PagedBatch, i: int) -> None:
        self.batch, self.k, self.v = batch, batch.pool.k[i], batch.pool.v[i]
        self.group = batch.pool.group_of[i]

    def slots(self, window: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The slots of the new tokens (B * T,), row by row; the slots each row attends to
        (B, S), padded at the end with slot 0; each row's first position attended to (B,)."""
        kept = self.batch.pool.groups[self.group].window
        if window != kept:
            raise ValueError(f"the layer attends to a window of {window}; the pages keep {kept}")
        return (self.batch.write(self.group), *self.batch.reads(self.group))

    def update(
        self, k: torch.Tensor, v: torch.Tensor, start: int | torch.Tensor, window: int | None
    ) -> tuple[torch.Tensor, torch.Tensor, int | torch.Tensor]:
        b, nkv, t, hd = k.shape
        write, idx, firsts = self.slots(window)
        self.k[write] = k.transpose(1, 2).reshape(b * t, nkv, hd)
        self.v[write] = v.transpose(1, 2).reshape(b * t, nkv, hd)
        # (B, S, nkv, hd) -> (B, nkv, S, hd)
        return self.k[idx].transpose(1, 2), self.v[idx].transpose(1, 2), firsts


def _slots(pages: list[int], first: int, end: int, size: int) -> list[int]:
    return [pages[p // size] * size + p % size for p in range(first, end)]
