"""Making the model call a tool: `Agent.tool_choice` "required" or a tool's name.

gpt-oss decides itself whether to call a tool; nothing in harmony forbids an answer. So the run
watches each message header as it streams: when a message that is neither reasoning nor a call
begins (its header is complete, no content yet, so nothing of it reached the user), generation
stops there and resumes from a prompt that ends in a call's header instead — the named tool's
whole header, or only `<|start|>assistant to=` for "required", so that the model writes the
recipient itself. The prefix cache makes the resumed call prefill only those few tokens.
"""

from __future__ import annotations

from openai_harmony import (
    Conversation,
    HarmonyEncoding,
    Message,
    Role,
    StreamableParser,
    StreamState,
)

AUTO = "auto"
REQUIRED = "required"


def recipient_of(choice: str) -> str | None:
    """The recipient `choice` forces (None for "auto" and "required"): a bare function name is
    one of the `functions` namespace, as the model addresses it."""
    choice = choice.strip()
    if not choice:
        raise ValueError("tool_choice must be 'auto', 'required' or a tool's name, got ''")
    if choice in (AUTO, REQUIRED):
        return None
    return choice if "." in choice or choice == "python" else f"functions.{choice}"


def answer_begins(parser: StreamableParser) -> bool:
    """The parser has just read the header of a message that does not call a tool."""
    if parser.state != StreamState.CONTENT or parser.last_content_delta:
        return False
    recipient = parser.current_recipient
    return recipient in (None, "assistant") and parser.current_channel != "analysis"


def call_header(encoding: HarmonyEncoding, choice: str, *, first: bool) -> list[int]:
    """The tokens the resumed generation starts from: a call's header (from `<|start|>`, or
    after it when the prompt already ends in `<|start|>assistant`, the turn's `first` message).

    Rendered by harmony from a call with no content, so they are exactly what the model reads
    in its context for a call of this tool.
    """
    recipient = recipient_of(choice)
    probe = Message.from_role_and_content(Role.ASSISTANT, "")
    if recipient is None:  # "required": up to `to=`, the model names the tool
        probe = probe.with_recipient("functions.x").with_channel("commentary")
        tokens = encoding.render(probe)
        cut = next(k for k in range(len(tokens)) if encoding.decode(tokens[:k]).endswith(" to="))
        header = tokens[:cut]
    else:
        probe = probe.with_recipient(recipient)
        if recipient == "python" or recipient.startswith("browser."):
            probe = probe.with_channel("analysis")  # where gpt-oss calls its built-in tools
        else:
            probe = probe.with_channel("commentary").with_content_type("<|constrain|>json")
        header = encoding.render(probe)[:-1]  # the call without its end token
    if first:
        empty = Conversation.from_messages([])
        start = encoding.render_conversation_for_completion(empty, Role.ASSISTANT)
        header = header[len(start) :]  # `<|start|>assistant`
    return header
