"""Tools declared the way real models were trained to see them: JSON schemas rendered by the tokenizer's chat
template (``apply_chat_template(messages, tools=[...])``), which for Qwen2.5/Qwen3 and Hermes-style templates lists
them in the system turn and asks for ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks.

A template that ignores ``tools`` (the embedded tiny base's, SmolLM2's) gets the same declaration and the same
call format written into the user message (``tools_preamble``), so one parser (``specialists.tool_calls``) reads
every model's calls.
"""

from __future__ import annotations

import json
from typing import Any

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_PROBE = {"type": "function", "function": {"name": "distillery_probe_tool", "description": "probe",
                                           "parameters": {"type": "object", "properties": {}}}}  # fmt: skip
_TAKES_TOOLS: dict[str, bool] = {}  # chat template text -> whether it renders tools


def template_takes_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders a ``tools=`` list (tried once per template)."""
    template = str(getattr(tokenizer, "chat_template", "") or "")
    if template not in _TAKES_TOOLS:
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": "hi"}],
                tools=[_PROBE],
                tokenize=False,
                add_generation_prompt=True,
            )
        except Exception:  # a template that raises on tools does not take them
            text = ""
        _TAKES_TOOLS[template] = "distillery_probe_tool" in str(text)
    return _TAKES_TOOLS[template]


def tools_preamble(tools: list[dict[str, Any]]) -> str:
    """The declaration a tool-capable template would have written, for a template that writes none (it goes
    before the user's question, in the same message)."""
    listed = "\n".join(json.dumps(tool) for tool in tools)
    return (
        "You may call one or more functions to assist with the user query. The function signatures:\n"
        f"<tools>\n{listed}\n</tools>\n"
        f"For each function call, return a JSON object with the function name and arguments within "
        f'{CALL_OPEN}{CALL_CLOSE} tags:\n{CALL_OPEN}\n{{"name": <function-name>, "arguments": <args-json-object>}}\n'
        f"{CALL_CLOSE}\n\n"
    )


def tool_messages(
    prompt: str, tools_json: str, tokenizer: Any, system: str = ""
) -> tuple[list[dict[str, str]], list[Any] | None]:
    """The chat messages and the ``tools=`` argument for a user ``prompt`` with tools (a JSON list of
    function schemas; "" for none), after a ``system`` message where there is one."""
    head = [{"role": "system", "content": system}] if system else []
    if not tools_json:
        return [*head, {"role": "user", "content": prompt}], None
    tools = json.loads(tools_json)
    if template_takes_tools(tokenizer):
        return [*head, {"role": "user", "content": prompt}], tools
    return [*head, {"role": "user", "content": tools_preamble(tools) + prompt}], None


_RESULT = "distillery-tool-result"
_CALL = f'{CALL_OPEN}\n{{"name": "distillery_probe_tool", "arguments": {{}}}}\n{CALL_CLOSE}'
_FORMS: dict[tuple[str, str], tuple[str, str]] = {}  # (chat template text, role) -> the text around a message
FALLBACK_FORMS = {"tool": ("\n<tool_response>\n", "\n</tool_response>\n"), "user": ("\n", "\n")}


def message_form(tokenizer: Any, role: str = "tool") -> tuple[str, str]:
    """What the chat template writes between an assistant turn and a ``role`` message that answers it, and after
    that message up to the next assistant turn, read off the template once per template and role. A tool
    result under Qwen2.5: ``<|im_end|>\\n<|im_start|>user\\n<tool_response>\\n`` and
    ``\\n</tool_response><|im_end|>\\n<|im_start|>assistant\\n``; a user message: ``<|im_end|>\\n<|im_start|>user\\n``
    and ``<|im_end|>\\n<|im_start|>assistant\\n``. A template that cannot render the message gets
    ``FALLBACK_FORMS[role]``."""
    if role not in FALLBACK_FORMS:
        raise ValueError(f"an observation's role is one of {sorted(FALLBACK_FORMS)}, got {role!r}")
    template = str(getattr(tokenizer, "chat_template", "") or "")
    if (template, role) not in _FORMS:
        turn = _CALL if role == "tool" else "distillery-assistant-turn"
        messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": turn},
                    {"role": role, "content": _RESULT}]  # fmt: skip
        try:
            text = str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        except Exception:  # a template that raises on such a message
            text = ""
        at = text.rfind(turn)
        tail = text[at + len(turn) :] if at >= 0 else ""
        before, found, after = tail.partition(_RESULT)
        _FORMS[template, role] = (before, after) if found else FALLBACK_FORMS[role]
    return _FORMS[template, role]


def tool_result_form(tokenizer: Any) -> tuple[str, str]:
    """The text around a tool result (``message_form`` of a ``tool`` message)."""
    return message_form(tokenizer, "tool")


def observation_text(observation: str | tuple[str, ...]) -> str:
    """An observation as the compact format writes it (as the environment wrote it): several messages one per
    line."""
    return observation if isinstance(observation, str) else "\n".join(observation)


# (chat template text, role) -> the text between two such messages
_SEPARATORS: dict[tuple[str, str], str] = {}


def message_separator(tokenizer: Any, role: str = "tool") -> str:
    """What the chat template writes between two ``role`` messages in a row (the results of parallel tool calls):
    under Qwen2.5 ``\\n</tool_response>\\n<tool_response>\\n`` for tool results, read off the template once per
    template and role; one message's end and the next one's start where the template cannot render two."""
    before, after = message_form(tokenizer, role)
    template = str(getattr(tokenizer, "chat_template", "") or "")
    if (template, role) not in _SEPARATORS:
        turn = _CALL if role == "tool" else "distillery-assistant-turn"
        first, second = _RESULT + "-1", _RESULT + "-2"
        messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": turn},
                    {"role": role, "content": first}, {"role": role, "content": second}]  # fmt: skip
        try:
            text = str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        except Exception:  # a template that raises on such messages
            text = ""
        start, end = text.find(first), text.find(second)
        found = start >= 0 and start + len(first) <= end
        _SEPARATORS[template, role] = text[start + len(first) : end] if found else after + before
    return _SEPARATORS[template, role]


def tool_result_text(
    tokenizer: Any, result: str | tuple[str, ...], turn_ended: bool, role: str = "tool"
) -> str:
    """The text that follows a model turn: ``result`` as the template's ``role`` message (a tool's result, or an
    environment's reply as a user message; several in a row where it is a tuple: the results of parallel calls),
    then the next assistant turn's header. ``turn_ended``: the turn already holds its end-of-turn token (it stopped
    at EOS), which the template's form would otherwise write a second time."""
    before, after = message_form(tokenizer, role)
    if isinstance(result, tuple):
        result = message_separator(tokenizer, role).join(result)
    eos = str(getattr(tokenizer, "eos_token", "") or "")
    if turn_ended and eos and before.startswith(eos):
        before = before[len(eos) :]
    return f"{before}{result}{after}"
