"""Transcripts -> training examples.

Data: transcript JSONL files (the agent's format: `{"type": "message", "message": {...}}` lines,
system and developer messages included; `run` records are ignored). A system message that follows
other messages starts a new conversation, so concatenated transcripts are read as many. Each turn
that ends in a final answer becomes one example, rendered with harmony's training rendering (the
answer ends in `<|return|>`) and with the analysis of earlier finished turns dropped, exactly as
the agent prompts the model. The loss covers what the model generates: every assistant message
except the `<|start|>assistant` header of one that follows a user or tool message (the agent's
prompt already ends with it).

Compact vocabulary: a model whose embedding and unembedding rows are zero outside a small set of
tokens (a demo model trained from scratch) trains on those rows only. A zero unembedding row gives
logit 0, so the full-vocabulary softmax is still exact: logsumexp over the kept rows plus
`log(vocab - kept)`. Rows outside the set stay zero.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from openai_harmony import (
    Conversation,
    HarmonyEncoding,
    HarmonyError,
    Message,
    RenderConversationConfig,
    Role,
)

from harmony_agent.encoding import harmony_encoding
from harmony_agent.records import RecordError, read_messages

from ..train import FinetuneError


@dataclass
class Example:
    """One rendered conversation: `tokens`, and `loss[i]` True where token i is trained on."""

    tokens: list[int]
    loss: list[bool]
    source: str = ""

    @property
    def trained_tokens(self) -> int:
        return sum(self.loss)


def read_conversations(path: str | os.PathLike[str]) -> list[list[Message]]:
    """The conversations of a transcript file (a system message after others starts a new one)."""
    path = Path(path)
    try:
        messages = read_messages(path)
    except OSError as e:
        raise FinetuneError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise FinetuneError(f"{path}: not UTF-8 text") from None
    except RecordError as e:
        raise FinetuneError(str(e)) from None
    conversations: list[list[Message]] = []
    current: list[Message] = []
    for _, message in messages:
        if message.author.role == Role.SYSTEM and current:
            conversations.append(current)
            current = []
        current.append(message)
    if current:
        conversations.append(current)
    return conversations


_RENDER = RenderConversationConfig(auto_drop_analysis=False)  # dropping is done per turn below


def conversation_examples(
    messages: Sequence[Message], encoding: HarmonyEncoding | None = None, source: str = ""
) -> list[Example]:
    """One example per turn that ends in a final answer (earlier turns are context)."""
    encoding = encoding or harmony_encoding()
    finals = [
        i
        for i, m in enumerate(messages)
        if m.author.role == Role.ASSISTANT and m.channel == "final"
    ]
    if not finals:
        raise FinetuneError(f"{source}: no final answer from the assistant: nothing to train on")
    examples = []
    for n, end in enumerate(finals):
        previous = finals[n - 1] if n else -1
        # What the agent shows for this turn: earlier turns without anything on the analysis
        # channel (reasoning, python calls and their results), as harmony prescribes.
        context = [m for m in messages[: previous + 1] if m.channel != "analysis"]
        turn = list(messages[previous + 1 : end + 1])
        examples.append(_render_example([*context, *turn], len(context), encoding, source))
    return examples


def _render_example(
    messages: list[Message], first_trained: int, encoding: HarmonyEncoding, source: str
) -> Example:
    try:
        tokens = encoding.render_conversation_for_training(
            Conversation.from_messages(messages), _RENDER
        )
        # Where each message starts. Harmony renders the system and developer messages with
        # knowledge of the rest (e.g. the tools), so those are measured by rendering the prefix;
        # later messages render on their own (the agent's prompt relies on that too).
        head = 0
        while head < len(messages) and messages[head].author.role in (Role.SYSTEM, Role.DEVELOPER):
            head += 1
        bounds = [
            len(encoding.render_conversation(Conversation.from_messages(messages[:k]), _RENDER))
            for k in range(head + 1)
        ]
        for m in messages[head:]:
            bounds.append(bounds[-1] + len(encoding.render(m)))
    except HarmonyError as e:
        raise FinetuneError(
            f"{source}: the conversation does not render as harmony ({e})"
        ) from None
    if bounds[-1] != len(tokens) or not all(a < b for a, b in itertools.pairwise(bounds)):
        raise FinetuneError(f"{source}: the conversation does not render message by message")
    start = encoding.encode("<|start|>", allowed_special="all")[0]
    role = encoding.encode("assistant", allowed_special="all")
    loss = [False] * len(tokens)
    for k in range(first_trained, len(messages)):
        if messages[k].author.role != Role.ASSISTANT:
            continue
        a, b = bounds[k], bounds[k + 1]
        prev = messages[k - 1].author.role if k else None
        if prev != Role.ASSISTANT:
            # The prompt ends with `<|start|>assistant`: the model does not generate it.
            if tokens[a : a + 1 + len(role)] != [start, *role]:
                raise FinetuneError(f"{source}: unexpected header for message {k}")
            a += 1 + len(role)
        loss[a:b] = [True] * (b - a)
    return Example(tokens, loss, source)


def load_examples(
    paths: Iterable[str | os.PathLike[str]],
    *,
    encoding: HarmonyEncoding | None = None,
    max_tokens: int | None = None,
) -> list[Example]:
    """Every example of every transcript file; a conversation that does not render is an error."""
    encoding = encoding or harmony_encoding()
    examples = []
    for path in paths:
        for c, messages in enumerate(read_conversations(path), 1):
            source = f"{path}: conversation {c}"
            for example in conversation_examples(messages, encoding, source):
                if max_tokens is not None and len(example.tokens) > max_tokens:
                    raise FinetuneError(
                        f"{source}: {len(example.tokens)} tokens, more than --max-tokens "
                        f"({max_tokens})"
                    )
                examples.append(example)
    if not examples:
        raise FinetuneError("no training examples in the given transcripts")
    return examples


class CompactVocab:
    """A sorted set of token ids kept as embedding rows; every other row is zero."""

    def __init__(self, ids: Iterable[int], vocab_size: int) -> None:
        self.ids = torch.tensor(sorted(set(ids)), dtype=torch.long)  # (V,)
        self.vocab_size = vocab_size
        if len(self.ids) and (self.ids[0] < 0 or self.ids[-1] >= vocab_size):
            raise ValueError(f"token ids must be in 0..{vocab_size - 1}")
        self._index = torch.full((vocab_size,), -1, dtype=torch.long)
        self._index[self.ids] = torch.arange(len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)

    def compact(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self._index[tokens]
        if (out < 0).any():
            missing = sorted(set(tokens[out < 0].tolist()))[:5]
            raise FinetuneError(f"tokens {missing} are not in the compact vocabulary")
        return out

    @property
    def zero_rows(self) -> int:
        return self.vocab_size - len(self.ids)


def used_tokens(examples: Iterable[Example], encoding: HarmonyEncoding) -> set[int]:
    """Tokens of the examples plus every 1-3 digit number token: any number the model may have
    to copy, seen in training or not, gets a trained row."""
    ids: set[int] = set()
    for example in examples:
        ids.update(example.tokens)
    for n in range(1000):
        for text in {str(n), f"{n:02d}", f"{n:03d}"}:
            tokens = encoding.encode(text, allowed_special=set())
            if len(tokens) == 1:
                ids.add(tokens[0])
    return ids
