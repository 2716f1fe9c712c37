"""A client's conversation (Responses items or Chat Completions messages) as harmony messages.

What each client sends back becomes what the model wrote: reasoning as the analysis channel
(harmony keeps it for the turn in progress, so the model sees its reasoning after a tool call),
text as the commentary or final channel, function calls as `to=functions.NAME` messages on the
commentary channel, and their outputs as tool messages right after the calls they answer.
System and developer messages become the developer instructions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from openai_harmony import Author, Message, Role

from .client_tools import NAME
from .errors import bad_request
from .sealing import Sealer

_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text", "reasoning_text"})
_OTHER_PARTS = {
    "input_image": "an image",
    "image_url": "an image",
    "input_file": "a file",
    "file": "a file",
    "input_audio": "audio",
}
_BROWSER_ACTIONS = {"search": "search", "open_page": "open", "find_in_page": "find", "find": "find"}


def analysis(text: str) -> Message:
    return Message.from_role_and_content(Role.ASSISTANT, text).with_channel("analysis")


def assistant_text(text: str, channel: str) -> Message:
    return Message.from_role_and_content(Role.ASSISTANT, text).with_channel(channel)


def function_call(recipient: str, arguments: str) -> Message:
    message = Message.from_role_and_content(Role.ASSISTANT, arguments).with_channel("commentary")
    return message.with_recipient(recipient).with_content_type("<|constrain|>json")


def tool_output(recipient: str, text: str, channel: str = "commentary") -> Message:
    message = Message.from_author_and_content(Author.new(Role.TOOL, recipient), text)
    return message.with_recipient("assistant").with_channel(channel)


@dataclass
class Conversation:
    """Harmony messages built from a client's items, and what the server needs to know of them."""

    messages: list[Message] = field(default_factory=list)
    instructions: list[str] = field(default_factory=list)
    """Texts of the system and developer messages, in order: the developer instructions."""
    calls: dict[str, str] = field(default_factory=dict)
    """call_id -> the recipient of the call: what a later output answers."""
    pending: dict[str, int] = field(default_factory=dict)
    """Calls not answered yet: call_id -> index of the call in `messages`."""
    containers: list[str] = field(default_factory=list)
    """`container_id`s of code_interpreter_call items: the python sessions they ran in."""
    first_user: str | None = None

    def user(self, text: str) -> None:
        if self.first_user is None:
            self.first_user = text
        self.messages.append(Message.from_role_and_content(Role.USER, text))

    def call(self, where: str, call_id: Any, recipient: str, arguments: str) -> None:
        """`where` names the call's id field, for errors."""
        if not isinstance(call_id, str) or not call_id:
            raise bad_request(where, "expected a non-empty string")
        self.messages.append(function_call(recipient, arguments))
        self.calls[call_id] = recipient
        self.pending[call_id] = len(self.messages) - 1

    def output(self, where: str, call_id: Any, text: str, name: Any = None) -> None:
        if not isinstance(call_id, str) or not call_id:
            raise bad_request(f"{where}", "expected a non-empty call id string")
        recipient = self.calls.get(call_id)
        if recipient is None and isinstance(name, str) and name:
            recipient = f"functions.{name}"
        if recipient is None:
            raise bad_request(where, f"no function call with id {call_id!r} precedes this output")
        message = tool_output(recipient, text)
        at = self.pending.pop(call_id, None)
        if at is None:  # an answer given twice, or to a call already answered: keep it in order
            self.messages.append(message)
            return
        # Harmony reads call, output, call, output: parallel calls get their outputs interleaved.
        self.messages.insert(at + 1, message)
        self.pending = {k: i + 1 if i > at else i for k, i in self.pending.items()}

    def check_answered(self, where: str) -> None:
        if self.pending:
            call_id = next(iter(self.pending))
            raise bad_request(where, f"no output was given for the function call {call_id!r}")

    def key(self) -> str:
        """A name for the conversation when the client gives none: its start."""
        start = json.dumps([self.instructions[:1], self.first_user], ensure_ascii=False)
        return hashlib.sha256(start.encode()).hexdigest()[:24]


# -- content -----------------------------------------------------------------------------------


def content_text(where: str, content: Any, *, allow_none: bool = False) -> str:
    """The text of a message's content: a string, or parts of which the text ones count."""
    if content is None and allow_none:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(where, "expected a string or a list of content parts")
    texts = []
    for i, part in enumerate(content):
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str):
            raise bad_request(f"{where}[{i}]", "expected a content part with a type")
        if kind in _TEXT_PARTS or kind == "refusal":
            text = part.get("text", part.get("refusal"))
            if not isinstance(text, str):
                raise bad_request(f"{where}[{i}].text", "expected a string")
            texts.append(text)
        else:
            # gpt-oss reads text only: say so in place, so the model can tell the user.
            texts.append(
                f"[{_OTHER_PARTS.get(kind, kind)} was attached; this model reads only text]"
            )
    return "\n".join(texts)


def _arguments(where: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):  # some clients send the arguments as an object
        return json.dumps(value, ensure_ascii=False)
    raise bad_request(where, "expected the arguments as a JSON string")


def _recipient(where: str, name: Any, namespace: Any = None) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise bad_request(where, "a function name is 1 to 64 letters, digits, '_' or '-'")
    if namespace is None:
        return f"functions.{name}"
    if not isinstance(namespace, str) or not NAME.fullmatch(namespace):
        raise bad_request(where.rpartition(".")[0] + ".namespace", "not a valid namespace name")
    return f"{namespace}.{name}"


# -- Responses ---------------------------------------------------------------------------------


def responses_input(
    items: str | Sequence[Any],
    sealer: Sealer,
    conversation: Conversation | None = None,
) -> Conversation:
    """Add a Responses `input` to `conversation` (a new one unless continuing a stored one)."""
    conv = conversation or Conversation()
    if isinstance(items, str):
        conv.user(items)
        return conv
    sealed = {i: _unseal(item, sealer) for i, item in enumerate(items)}
    covered = _covered(items, sealed)
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad_request(where, "expected an input item object")
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            _message_item(where, item, conv, _phase_by_position(items, i))
        elif kind == "reasoning":
            _reasoning_item(where, item, conv, sealed[i])
        elif kind == "function_call":
            recipient = _recipient(f"{where}.name", item.get("name"), item.get("namespace"))
            arguments = _arguments(f"{where}.arguments", item.get("arguments", ""))
            conv.call(f"{where}.call_id", item.get("call_id"), recipient, arguments)
        elif kind == "function_call_output":
            output = content_text(f"{where}.output", item.get("output"))
            conv.output(f"{where}.call_id", item.get("call_id"), output)
        elif kind == "code_interpreter_call" and i not in covered:
            _code_interpreter_item(where, item, conv)
        elif kind == "web_search_call" and i not in covered:
            _web_search_item(where, item, conv)
        elif not isinstance(kind, str):
            raise bad_request(f"{where}.type", "expected an item type")
        # Anything else (item types of OpenAI's hosted tools, items of newer clients) carries
        # nothing the model wrote or must read: accepted and left out, as unknown fields are.
    return conv


def _message_item(where: str, item: Mapping[str, Any], conv: Conversation, phase: str) -> None:
    role = item.get("role")
    text = content_text(f"{where}.content", item.get("content"))
    if role == "user":
        conv.user(text)
    elif role in ("system", "developer"):
        conv.instructions.append(text)
    elif role == "assistant":
        given = item.get("phase")
        channel = {"commentary": "commentary", "final_answer": "final"}.get(str(given), phase)
        conv.messages.append(assistant_text(text, channel))
    else:
        raise bad_request(f"{where}.role", "expected user, assistant, system or developer")


def _phase_by_position(items: Sequence[Any], i: int) -> str:
    """An assistant message without a `phase`: commentary when a call of the same turn follows
    it (a preamble), else the final answer."""
    for item in items[i + 1 :]:
        if not isinstance(item, dict):
            break
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "function_call":
            return "commentary"
        if kind == "message":
            break
    return "final"


def _unseal(item: Any, sealer: Sealer) -> Any:
    if not isinstance(item, dict) or item.get("type") != "reasoning":
        return None
    token = item.get("encrypted_content")
    return sealer.open(token) if isinstance(token, str) else None


def _covered(items: Sequence[Any], sealed: Mapping[int, Any]) -> set[int]:
    """Indices of built-in call items whose messages a sealed reasoning item already holds:
    the item it names, or, when the client dropped ids, the item right before it."""
    ids = {s.covers for s in sealed.values() if s is not None and s.covers}
    covered = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict) or item.get("type") not in (
            "code_interpreter_call",
            "web_search_call",
        ):
            continue
        follower = sealed.get(i + 1)
        named = isinstance(item.get("id"), str) and item["id"] in ids
        if named or (follower is not None and follower.covers):
            covered.add(i)
    return covered


def _reasoning_item(where: str, item: Mapping[str, Any], conv: Conversation, sealed: Any) -> None:
    if sealed is not None:
        conv.messages.extend(sealed.messages)
        return
    content = item.get("content")
    text = content_text(f"{where}.content", content, allow_none=True)
    if not text:  # only a summary came back: the next best record of the reasoning
        text = content_text(f"{where}.summary", item.get("summary"), allow_none=True)
    if text:
        conv.messages.append(analysis(text))


def _code_interpreter_item(where: str, item: Mapping[str, Any], conv: Conversation) -> None:
    code = item.get("code")
    if not isinstance(code, str):
        raise bad_request(f"{where}.code", "expected a string")
    if isinstance(container := item.get("container_id"), str):
        conv.containers.append(container)
    call = Message.from_role_and_content(Role.ASSISTANT, code).with_channel("analysis")
    conv.messages.append(call.with_recipient("python").with_content_type("code"))
    outputs = item.get("outputs") or []
    if not isinstance(outputs, list):
        raise bad_request(f"{where}.outputs", "expected a list")
    logs = [o.get("logs") for o in outputs if isinstance(o, dict) and o.get("type") == "logs"]
    text = "\n".join(x for x in logs if isinstance(x, str))
    conv.messages.append(tool_output("python", text or "[no output]", channel="analysis"))


def _web_search_item(where: str, item: Mapping[str, Any], conv: Conversation) -> None:
    action = item.get("action")
    if not isinstance(action, dict):
        return  # nothing says what was done
    method = _BROWSER_ACTIONS.get(str(action.get("type")))
    if method is None:
        return
    args = {k: v for k, v in action.items() if k in ("query", "url", "pattern")}
    if "url" in args and method == "open":
        args["id"] = args.pop("url")
    recipient = f"browser.{method}"
    call = Message.from_role_and_content(Role.ASSISTANT, json.dumps(args, ensure_ascii=False))
    conv.messages.append(call.with_channel("analysis").with_recipient(recipient))
    # The page text went to the model but not to the client: only the call can be restored.
    note = "[the result of this call was not kept; call again to see it]"
    conv.messages.append(tool_output(recipient, note, channel="analysis"))


# -- Chat Completions --------------------------------------------------------------------------


def chat_messages(messages: Sequence[Any]) -> Conversation:
    """Chat Completions `messages` as a conversation."""
    conv = Conversation()
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(where, "expected a message object")
        role = message.get("role")
        if role in ("system", "developer"):
            conv.instructions.append(content_text(f"{where}.content", message.get("content")))
        elif role == "user":
            conv.user(content_text(f"{where}.content", message.get("content")))
        elif role == "assistant":
            _chat_assistant(where, message, conv)
        elif role == "tool":
            text = content_text(f"{where}.content", message.get("content"), allow_none=True)
            conv.output(
                f"{where}.tool_call_id", message.get("tool_call_id"), text, message.get("name")
            )
        else:
            raise bad_request(
                f"{where}.role", "expected system, developer, user, assistant or tool"
            )
    return conv


def _chat_assistant(where: str, message: Mapping[str, Any], conv: Conversation) -> None:
    # The reasoning of the turn, under either name servers use for it; harmony keeps it until
    # the turn's final answer, so a tool call's continuation sees it.
    for name in ("reasoning_content", "reasoning"):
        reasoning = message.get(name)
        if reasoning is None:
            continue
        if not isinstance(reasoning, str):
            raise bad_request(f"{where}.{name}", "expected a string")
        if reasoning:
            conv.messages.append(analysis(reasoning))
        break
    text = content_text(f"{where}.content", message.get("content"), allow_none=True)
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise bad_request(f"{where}.tool_calls", "expected a list")
    if text:
        conv.messages.append(assistant_text(text, "commentary" if calls else "final"))
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise bad_request(f"{at}.function", "expected an object with name and arguments")
        recipient = _recipient(f"{at}.function.name", function.get("name"))
        arguments = _arguments(f"{at}.function.arguments", function.get("arguments", ""))
        conv.call(f"{at}.id", call.get("id"), recipient, arguments)
