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
    prompt: str, tools_json: str, tokenizer: Any
) -> tuple[list[dict[str, str]], list[Any] | None]:
    """The chat messages and the ``tools=`` argument for a user ``prompt`` with tools (a JSON list of
    function schemas; "" for none)."""
    if not tools_json:
        return [{"role": "user", "content": prompt}], None
    tools = json.loads(tools_json)
    if template_takes_tools(tokenizer):
        return [{"role": "user", "content": prompt}], tools
    return [{"role": "user", "content": tools_preamble(tools) + prompt}], None


_RESULT = "distillery-tool-result"
_CALL = f'{CALL_OPEN}\n{{"name": "distillery_probe_tool", "arguments": {{}}}}\n{CALL_CLOSE}'
_RESULT_FORMS: dict[str, tuple[str, str]] = {}  # chat template text -> the text around a tool result
FALLBACK_RESULT_FORM = ("\n<tool_response>\n", "\n</tool_response>\n")


def tool_result_form(tokenizer: Any) -> tuple[str, str]:
    """What the chat template writes between an assistant turn's tool calls and the tool's result, and after the
    result up to the next assistant turn (Qwen2.5: ``<|im_end|>\\n<|im_start|>user\\n<tool_response>\\n`` and
    ``\\n</tool_response><|im_end|>\\n<|im_start|>assistant\\n``), read off the template once per template; a
    template that cannot render a ``tool`` message gets ``FALLBACK_RESULT_FORM``."""
    template = str(getattr(tokenizer, "chat_template", "") or "")
    if template not in _RESULT_FORMS:
        messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _CALL},
                    {"role": "tool", "content": _RESULT}]  # fmt: skip
        try:
            text = str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        except Exception:  # a template that raises on a tool message
            text = ""
        at = text.rfind(_CALL)
        tail = text[at + len(_CALL) :] if at >= 0 else ""
        before, found, after = tail.partition(_RESULT)
        _RESULT_FORMS[template] = (before, after) if found else FALLBACK_RESULT_FORM
    return _RESULT_FORMS[template]


def tool_result_text(tokenizer: Any, result: str, turn_ended: bool) -> str:
    """The text that follows a model turn of tool calls: ``result`` as the template's tool message, then the
    next assistant turn's header. ``turn_ended``: the turn already holds its end-of-turn token (it stopped at
    EOS), which the template's form would otherwise write a second time."""
    before, after = tool_result_form(tokenizer)
    eos = str(getattr(tokenizer, "eos_token", "") or "")
    if turn_ended and eos and before.startswith(eos):
        before = before[len(eos) :]
    return f"{before}{result}{after}"
