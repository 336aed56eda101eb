"""Reading a model turn's tool calls in the format chat templates ask for (``rl.chat_tools``):

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

one block per call, several blocks for parallel calls. A turn is model output, so it is read as untrusted input:
every way it can be wrong is a ``CallError`` with a short reason (for the metrics) and the message the model would
see, never an exception; its size and the number of calls are bounded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rl.chat_tools import CALL_CLOSE, CALL_OPEN

MAX_CALLS = 16  # calls read from one turn
MAX_CALL_CHARS = 8_000  # characters of one call's JSON
_MAX_ECHO = 40


@dataclass(frozen=True)
class Call:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class CallError:
    """Why a turn's text holds no valid calls; ``message`` is what the model would be told."""

    reason: str  # no_tool_call | unclosed_call | too_many_calls | too_long | bad_json | not_an_object
    # | missing_name | bad_name | missing_arguments | bad_arguments | extra_keys | unknown_tool
    message: str


def echo(text: str) -> str:
    """Model text repeated in an error message: short, and unable to forge a tag (an observation's, a call's)."""
    text = text.replace("<", "").replace(">", "")
    return repr(text if len(text) <= _MAX_ECHO else text[:_MAX_ECHO] + "...")


def model_json(text: str) -> Any:
    """``json.loads`` of model output: JSON nested too deeply to parse is bad JSON like any other (json raises a
    RecursionError there, which would escape a parser as an exception: a reward error the policy could provoke
    at will, and enough of them stop a run)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, 0) from None


def call_blocks(text: str) -> list[str] | CallError:
    """The text inside each ``<tool_call>...</tool_call>`` block, in order."""
    blocks, at = [], 0
    while (start := text.find(CALL_OPEN, at)) >= 0:
        end = text.find(CALL_CLOSE, start)
        if end < 0:
            return CallError("unclosed_call", f"error: a {CALL_OPEN} without {CALL_CLOSE}")
        blocks.append(text[start + len(CALL_OPEN) : end])
        if len(blocks) > MAX_CALLS:
            return CallError("too_many_calls", f"error: more than {MAX_CALLS} tool calls in one turn")
        at = end + len(CALL_CLOSE)
    if not blocks:
        return CallError("no_tool_call", "error: no tool call")
    return blocks


def parse_call(block: str, tools: tuple[str, ...] | None = None) -> Call | CallError:
    """One block's ``{"name": ..., "arguments": {...}}`` (arguments may come as a JSON string of an object, as
    some models write them)."""
    if len(block) > MAX_CALL_CHARS:
        return CallError("too_long", f"error: a tool call longer than {MAX_CALL_CHARS} characters")
    try:
        obj = model_json(block)
    except json.JSONDecodeError as e:
        return CallError("bad_json", f"error: bad JSON in tool call: {e.msg}")
    if not isinstance(obj, dict):
        return CallError(
            "not_an_object", 'error: a tool call is a JSON object {"name": ..., "arguments": {...}}'
        )
    if "name" not in obj:
        return CallError("missing_name", "error: tool call has no 'name'")
    if not isinstance(obj["name"], str):
        return CallError("bad_name", "error: 'name' must be a string")
    if "arguments" not in obj:
        return CallError("missing_arguments", "error: tool call has no 'arguments'")
    if extra := sorted(set(obj) - {"name", "arguments"}):
        return CallError("extra_keys", f"error: unexpected keys {', '.join(map(echo, extra))}")
    arguments = obj["arguments"]
    if isinstance(arguments, str):
        try:
            arguments = model_json(arguments)
        except json.JSONDecodeError:
            arguments = None
    if not isinstance(arguments, dict):
        return CallError("bad_arguments", "error: 'arguments' must be a JSON object")
    if tools is not None and obj["name"] not in tools:
        return CallError(
            "unknown_tool", f"error: unknown tool {echo(obj['name'])}; tools: {', '.join(tools)}"
        )
    return Call(obj["name"], arguments)


def parse_tool_calls(text: str, tools: Iterable[str] | None = None) -> list[Call] | CallError:
    """Every call of a turn, or the first thing wrong with them. ``tools``: the valid names (None: any)."""
    blocks = call_blocks(text)
    if isinstance(blocks, CallError):
        return blocks
    names = None if tools is None else tuple(tools)
    calls = []
    for block in blocks:
        call = parse_call(block, names)
        if isinstance(call, CallError):
            return call
        calls.append(call)
    return calls


def format_tool_calls(calls: Iterable[Call]) -> str:
    """The text of a turn making ``calls`` (as Qwen's template writes an assistant's tool calls)."""
    return "\n".join(
        f"{CALL_OPEN}\n{json.dumps({'name': c.name, 'arguments': c.arguments})}\n{CALL_CLOSE}" for c in calls
    )
