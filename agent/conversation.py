"""Building the messages the model reads: system, developer, history."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from openai_harmony import (
    Conversation,
    DeveloperContent,
    HarmonyEncoding,
    Message,
    ReasoningEffort,
    RenderConversationConfig,
    Role,
    SystemContent,
    ToolDescription,
    ToolNamespaceConfig,
)

EFFORTS = {
    "low": ReasoningEffort.LOW,
    "medium": ReasoningEffort.MEDIUM,
    "high": ReasoningEffort.HIGH,
}


def system_message(
    *,
    reasoning_effort: str,
    current_date: str,
    knowledge_cutoff: str,
    namespaces: Iterable[ToolNamespaceConfig],
    model_identity: str | None = None,
) -> Message:
    """The system message: identity, dates, reasoning effort and the built-in tools."""
    try:
        effort = EFFORTS[reasoning_effort]
    except KeyError:
        raise ValueError(
            f"reasoning_effort must be one of {', '.join(EFFORTS)}, got {reasoning_effort!r}"
        ) from None
    content = (
        SystemContent.new()
        .with_reasoning_effort(effort)
        .with_conversation_start_date(current_date)
        .with_knowledge_cutoff(knowledge_cutoff)
    )
    if model_identity is not None:
        content = content.with_model_identity(model_identity)
    for namespace in namespaces:
        content = content.with_tools(namespace)
    return Message.from_role_and_content(Role.SYSTEM, content)


def developer_message(
    instructions: str | None, functions: Sequence[ToolDescription]
) -> Message | None:
    """The developer message (instructions and function tools), or None when there is neither."""
    if not instructions and not functions:
        return None
    content = DeveloperContent.new()
    if instructions:
        content = content.with_instructions(instructions)
    if functions:
        content = content.with_function_tools(list(functions))
    return Message.from_role_and_content(Role.DEVELOPER, content)


def strip_preamble(messages: Iterable[Message]) -> list[Message]:
    """The conversation without its system and developer messages (the agent writes its own)."""
    return [m for m in messages if m.author.role not in (Role.SYSTEM, Role.DEVELOPER)]


def drop_finished_analysis(messages: Sequence[Message]) -> list[Message]:
    """Drop the analysis channel of turns that ended in a final answer, as harmony prescribes.

    openai-harmony 0.0.8's `auto_drop_analysis` applies this only while the conversation ends
    before the model's next message, so a turn with tool calls would see old reasoning come
    back after its first call; doing it once per turn keeps every prompt of the turn consistent
    (and its prefix cacheable).
    """
    last_final = max(
        (
            i
            for i, m in enumerate(messages)
            if m.author.role == Role.ASSISTANT and m.channel == "final"
        ),
        default=-1,
    )
    return [m for i, m in enumerate(messages) if i > last_final or m.channel != "analysis"]


def text_of(message: Message) -> str:
    """The text content of a message."""
    return "".join(getattr(c, "text", "") for c in message.content)


class Prompt:
    """The rendered conversation, extended one message at a time.

    Re-rendering the whole conversation at every step costs time that grows with it; harmony
    renders user, assistant and tool messages independently of what precedes them, so the
    conversation so far is rendered once and each new message appended.
    """

    _CONFIG = RenderConversationConfig(auto_drop_analysis=False)  # the caller drops analysis

    def __init__(self, encoding: HarmonyEncoding, messages: Sequence[Message]) -> None:
        self.encoding = encoding
        conversation = Conversation.from_messages(list(messages))
        self.tokens = encoding.render_conversation(conversation, self._CONFIG)
        # Rendered once, on its own: a conversation of tens of thousands of tokens takes ~25 ms.
        empty = Conversation.from_messages([])
        self._assistant_start = encoding.render_conversation_for_completion(empty, Role.ASSISTANT)

    def append(self, message: Message) -> None:
        self.tokens.extend(self.encoding.render(message))

    def for_completion(self) -> list[int]:
        """The tokens the model continues: the conversation, then `<|start|>assistant`."""
        return [*self.tokens, *self._assistant_start]
