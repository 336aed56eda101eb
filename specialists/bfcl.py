"""BFCL, the Berkeley Function Calling Leaderboard (Apache-2.0; data, possible answers and the AST checker from the
``bfcl-eval`` wheel), as agent tasks: ``specialist=bfcl``.

Each item is a user request and the functions (JSON schemas) the model may call; the answer is one or more calls.
Categories, as task levels: 1 ``simple_python`` (one call of the one function), 2 ``multiple`` (one call, the
right function among several), 3 ``parallel`` (several calls in one turn), 4 ``parallel_multiple``. Items are split
train / held-out by a hash of their id (``specialists.synthetic.split_of``), so the two never share an item.

The tools reach the model through its chat template (``rl.chat_tools``: Qwen's ``<tool_call>`` format; names with
dots written with underscores, BFCL's own types as JSON-schema types, as BFCL's function-calling handlers do), and
the model answers in one turn. The reward is BFCL's own AST checker on the parsed calls (function names, required
arguments, types, allowed values; parallel calls in any order): 1.0 when it accepts them, else 0.0 with BFCL's error
type as the reason, or the parser's (``specialists.tool_calls``) when the turn holds no valid call. Nothing the
model writes is executed. BFCL's checker module imports its model table, which imports some 40 API clients; that
one module is replaced by a table in which every model reads names with underscores (``_checker``), so the wheel
is installed without its dependencies (``make``'s ``pip install --no-deps bfcl-eval``).
"""

from __future__ import annotations

import collections
import copy
import functools
import importlib
import importlib.resources
import json
import random
import sys
import types
from collections.abc import Callable
from typing import Any

from rl.types import Reward, Task
from specialists.agent_env import StepResult
from specialists.synthetic import split_of
from specialists.tool_calls import Call, CallError, format_tool_calls, parse_tool_calls

DOMAIN = "agent"
SOURCE = "bfcl"
CATEGORIES = {1: "simple_python", 2: "multiple", 3: "parallel", 4: "parallel_multiple"}
MAX_TEXT_CHARS = 20_000  # a turn longer than this scores 0 ("too_long") before any parsing
INSTALL_HINT = "pip install --no-deps bfcl-eval==2026.3.23 (make does it)"


@functools.cache
def _checker() -> tuple[Callable[..., dict[str, Any]], Any]:
    """BFCL's ``ast_checker`` and its Python language tag, without importing BFCL's API clients."""
    table = "bfcl_eval.constants.model_config"
    if table not in sys.modules:
        shim = types.ModuleType(table)
        shim.MODEL_CONFIG_MAPPING = collections.defaultdict(  # type: ignore[attr-defined]
            lambda: types.SimpleNamespace(underscore_to_dot=True)
        )
        sys.modules[table] = shim
    try:
        checker = importlib.import_module("bfcl_eval.eval_checker.ast_eval.ast_checker")
        enums = importlib.import_module("bfcl_eval.constants.enums")
    except ImportError as err:
        raise RuntimeError(f"specialist=bfcl needs the bfcl-eval package: {INSTALL_HINT}") from err
    return checker.ast_checker, enums.Language.PYTHON


def _data_file(name: str) -> list[dict[str, Any]]:
    try:
        root = importlib.resources.files("bfcl_eval") / "data"
    except ModuleNotFoundError as err:
        raise RuntimeError(f"specialist=bfcl needs the bfcl-eval package: {INSTALL_HINT}") from err
    return [json.loads(line) for line in (root / name).read_text().splitlines() if line.strip()]


@functools.cache
def load_items(category: str) -> tuple[dict[str, Any], ...]:
    """A category's items, each with its ``ground_truth`` (the possible answers) beside the question."""
    questions = _data_file(f"BFCL_v4_{category}.json")
    answers = {a["id"]: a["ground_truth"] for a in _data_file(f"possible_answer/BFCL_v4_{category}.json")}
    if {q["id"] for q in questions} != set(answers):
        raise RuntimeError(f"BFCL {category}: questions and possible answers do not match")
    return tuple(q | {"ground_truth": answers[q["id"]]} for q in questions)


def _json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """BFCL's parameter schema with its Python-flavoured types (dict, float, tuple, any) as JSON-schema types."""
    mapping = importlib.import_module("bfcl_eval.constants.type_mappings").GORILLA_TO_OPENAPI
    out = dict(schema)
    out["type"] = mapping.get(schema.get("type", "string"), "string")
    if isinstance(schema.get("properties"), dict):
        out["properties"] = {k: _json_schema(v) for k, v in schema["properties"].items()}
    if isinstance(schema.get("items"), dict):
        out["items"] = _json_schema(schema["items"])
    return out


def tool_name(name: str) -> str:
    """A function's name as the model sees and calls it (dots are not allowed in tool names)."""
    return name.replace(".", "_")


def tools_of(functions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """BFCL's function docs as chat-template tools (``{"type": "function", "function": {...}}``)."""
    tools = []
    for function in copy.deepcopy(functions):
        function["name"] = tool_name(function["name"])
        function["parameters"] = _json_schema(function["parameters"]) | {"type": "object"}
        tools.append({"type": "function", "function": function})
    return tools


def _question(item: dict[str, Any]) -> str:
    messages = item["question"][0]
    users = [m["content"] for m in messages if m.get("role") == "user"]
    if len(users) != 1 or len(messages) != 1:
        raise ValueError(f"BFCL item {item['id']}: expected one user message, got {len(messages)} messages")
    return str(users[0])


def bfcl_tasks(n: int, split: str, seed: int = 0) -> list[Task]:
    """``n`` items of ``split`` (0: all of them) from every category, shuffled by ``seed``."""
    tasks = []
    for level, category in CATEGORIES.items():
        for item in load_items(category):
            if split_of(item["id"]) != split:
                continue
            answer = {
                "category": category,
                "functions": item["function"],
                "ground_truth": item["ground_truth"],
            }
            tasks.append(Task(uid=f"{SOURCE}/{item['id']}", domain=DOMAIN, prompt=_question(item),
                              answer=json.dumps(answer), source=SOURCE, level=level,
                              tools=json.dumps(tools_of(item["function"]))))  # fmt: skip
    random.Random(seed).shuffle(tasks)
    return tasks[:n] if n else tasks


def _spec(task: Task) -> dict[str, Any]:
    if task.source != SOURCE:
        raise ValueError(f"task {task.uid} is not a BFCL task")
    return json.loads(task.answer)


def score_bfcl(task: Task, text: str) -> Reward:
    """BFCL's AST verdict on the calls of ``text`` (one model turn)."""
    return _scored(task, text)[0]


def _scored(task: Task, text: str) -> tuple[Reward, int]:
    """The reward of ``text`` and how many well-formed calls it made."""
    if len(text) > MAX_TEXT_CHARS:
        return Reward(0.0, "too_long"), 0
    spec = _spec(task)
    names = [tool["function"]["name"] for tool in json.loads(task.tools)]
    calls = parse_tool_calls(text, names)
    if isinstance(calls, CallError):
        return Reward(0.0, calls.reason), 0
    ast_checker, python = _checker()
    output = [{call.name: call.arguments} for call in calls]
    try:
        verdict = ast_checker(
            spec["functions"], output, spec["ground_truth"], python, spec["category"], SOURCE
        )
    except Exception as err:  # the checker meeting a shape it does not expect is the model's miss
        return Reward(0.0, f"checker_error: {type(err).__name__}"), len(calls)
    if verdict.get("valid"):
        return Reward(1.0, "correct"), len(calls)
    return Reward(0.0, str(verdict.get("error_type", "invalid")).replace(":", "_")), len(calls)


def _first_allowed(options: list[Any], required: bool) -> Any:
    """The first allowed value of an argument, or ``_OMITTED`` where it may be left out (BFCL's "" among the
    options; a few items list such an argument that the function does not even declare, so a solution leaves
    them all out); the keys of a dict value (and of a list of dicts) list their allowed values the same way."""
    given = [v for v in options if v != ""]
    if not given or ("" in options and not required):
        return _OMITTED
    return _resolved(given[0], ())


def _resolved(value: Any, required: tuple[str, ...]) -> Any:
    if isinstance(value, dict):
        picked = {key: _first_allowed(options, key in required) for key, options in value.items()}
        return {key: v for key, v in picked.items() if v is not _OMITTED}
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [_resolved(v, ()) for v in value]
    return value


_OMITTED = object()


def solution(task: Task) -> str:
    """A correct turn: each ground-truth call with the first allowed value of each argument it needs."""
    spec = _spec(task)
    required = {f["name"]: tuple(f["parameters"].get("required", ())) for f in spec["functions"]}
    calls = []
    for truth in spec["ground_truth"]:
        ((name, options),) = truth.items()
        calls.append(Call(tool_name(name), _resolved(options, required.get(name, ()))))
    return format_tool_calls(calls)


class BFCLEnv:
    """One BFCL item as a one-turn episode: the model's turn is its answer, scored by ``score_bfcl``."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def reset(self) -> str:
        return self.task.prompt

    def step(self, action: str) -> StepResult:
        reward, made = _scored(self.task, action)
        error = reward.reason if reward.score == 0 else ""
        info = {"turn": 1, "tool": None, "tool_error": False, "error": error, "reason": reward.reason,
                "format_reward": 0.0, "tool_calls": made, "tool_errors": 0}  # fmt: skip
        return StepResult("", done=True, reward=reward.score, info=info)
