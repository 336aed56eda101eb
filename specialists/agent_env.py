"""Multi-turn tool-use environments: the interface, the text formats, and a built-in lookup-and-calc task.

**The interface.** An environment is any object with ``reset() -> str`` (the task prompt, the user message
text) and ``step(action) -> StepResult`` (see ``Environment``). The rollout driver calls ``reset`` once, then
``step`` with the text of each model turn; it appends ``StepResult.observation`` to the context (as tokens
masked out of the loss) and continues generating until ``done``. A user brings their own environment by
writing these two methods; ``parse_tool_call``, ``format_tool_call`` and ``format_observation`` give them the
same text formats as the built-in one.

**The formats (a contract shared with the rollout driver and the SFT demonstrations).**

- A tool call is a model turn that ends with ``<tool>{"name": "<tool>", "arg": "<string>"}</tool>``: a JSON
  object with exactly the keys ``name`` and ``arg`` (both strings). The driver stops generation at
  ``TOOL_STOP`` and passes the turn's text, cut right after the first ``</tool>``, to ``step``. Text before
  ``<tool>`` (a thought) is allowed.
- The observation is the exact text appended after the call: ``"\\n<obs>RESULT</obs>\\n"``, RESULT being the
  tool's output or ``error: ...`` for a malformed call, an unknown tool or a bad argument (never an
  exception).
- A turn without ``</tool>`` ends the episode: it is the final answer, the last ``\\boxed{N}`` in it.
  Without a boxed answer the reward is 0 with reason "no_answer".

**The built-in environment** (``LookupCalcEnv``) makes tools necessary: every episode has its own small shop
of 3-6 items with random integer prices, read with ``lookup`` ("pens" -> "7"), and the arithmetic is done with
``calc`` ("2 * 7 + 3 * 4" -> "26"). Levels: 1 asks a price (one lookup), 2 the cost of several of one item
(lookup, calc), 3 the total for two items (two lookups, calc). The reward is 1.0 for the right integer,
else 0. A small format reward (``FORMAT_REWARD`` when the episode ends in a boxed answer and no tool call
failed) is reported in ``info["format_reward"]`` only, never added to the reward.

**Task spec.** ``Task.answer`` is a JSON object that rebuilds the episode deterministically::

    {"store": {"pens": 7, "cups": 4, "hats": 12},   # item -> price, in the order lookup errors list them
     "target": 26,                                   # the correct final answer
     "calls": [["lookup", "pens"], ["lookup", "cups"], ["calc", "2 * 7 + 3 * 4"]]}  # a correct tool plan

Train and held-out tasks are disjoint by a hash of the question text, as in ``specialists.synthetic``.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import operator
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from rewards.math import extract_boxed
from rl.chat_tools import CALL_OPEN, observation_text
from rl.types import Reward, Task
from specialists.synthetic import check_generator_args, split_of
from specialists.tool_calls import CallError, echo, model_json, parse_tool_calls

TOOL_OPEN = "<tool>"
TOOL_STOP = "</tool>"
OBS_OPEN = "<obs>"
OBS_CLOSE = "</obs>"

DOMAIN = "agent"
SPLITS = ("train", "heldout")
LEVELS = (1, 2, 3)
MAX_TURNS = 6  # level 3 needs 4 (three tool calls and the answer); two spare turns to recover from an error
FORMAT_REWARD = 0.1
INSTRUCTION = "Tools: lookup, calc. Put the final answer in \\boxed{}."
# tool_prompt=full, for a pretrained model new to the environment, before the question (benchmarks.agent_prompt:
# Qwen2.5-Coder-0.5B-Instruct, greedy, 16 held-out tasks: 0/16 with INSTRUCTION, 5/16 with this worked episode).
FULL_INSTRUCTION = (
    "Answer the question with the help of two tools: lookup gives an item's price (prices are known only "
    "through it) and calc evaluates arithmetic. Write one tool call at a time; its result comes back as "
    "<obs>...</obs>. When you know the answer, write it as \\boxed{N}. For example:\n"
    "Question: What do 2 pens and 3 cups cost?\n"
    '<tool>{"name": "lookup", "arg": "pens"}</tool>\n<obs>7</obs>\n'
    '<tool>{"name": "lookup", "arg": "cups"}</tool>\n<obs>4</obs>\n'
    '<tool>{"name": "calc", "arg": "2 * 7 + 3 * 4"}</tool>\n<obs>26</obs>\n\\boxed{26}\n\n'
    "Question: "
)
TOOL_PROMPTS = ("short", "full")  # specialist.tool_prompt: INSTRUCTION after the question, or this
# specialist.tool_format=template: the tools declared by the chat template, the calls in its format
TEMPLATE_TOOLS = {"lookup": ("The price of one item, e.g. 'pens'.", "item"),
                  "calc": ("Integer arithmetic with + - * / and parentheses, e.g. '2 * 7 + 3 * 4'.", "expression")}  # fmt: skip
TEMPLATE_INSTRUCTION = "Prices are known only through the lookup tool. Put the final answer in \\boxed{}."
# Every final reason of an episode (StepResult.info["reason"]) and of score_agent.
REASONS = ("correct", "wrong_answer", "unparsable_answer", "no_answer", "turn_limit", "transcript_mismatch")

CALC_MAX_CHARS = 100
CALC_MAX_ABS = 10**12  # bound on every literal and intermediate result: no huge numbers, no slow arithmetic

_NAMES = ("Ann", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jade")
_ITEMS = (
    "pens", "cups", "hats", "books", "bags", "balls", "cards", "socks", "shoes", "lamps",
    "kites", "maps", "bells", "boxes", "jars", "eggs", "plates", "forks", "mugs", "toys",
)  # fmt: skip
_PRICES = (1, 20)
_QUANTITIES = (2, 9)
_STORE_SIZE = (3, 6)

Segment = tuple[str, bool]  # (text, is_model): a model turn, or an environment observation


# ------------------------------------------------------------------------------------------------- interface


@dataclass(frozen=True)
class StepResult:
    """What an environment answers to one model turn."""

    # text appended to the context after the turn ("" when done); a tuple: several messages of the environment's
    # observation role in a row (the results of parallel tool calls), written as the chat template writes them
    observation: str | tuple[str, ...]
    done: bool
    reward: float  # task reward; 0 until done
    info: dict[str, Any] = field(default_factory=dict)  # LookupCalcEnv: turn, tool, tool_error, error;
    # when done also reason, format_reward, tool_calls, tool_errors


@runtime_checkable
class Environment(Protocol):
    """A multi-turn environment driven by model text.

    ``reset`` starts an episode and returns the prompt (the user message, without chat formatting).
    ``step`` takes one model turn's text (a tool call cut after ``TOOL_STOP``, or a final answer) and returns
    the observation to append, whether the episode is over, and the reward. Malformed actions are answered
    with an error observation, never an exception.
    """

    def reset(self) -> str: ...

    def step(self, action: str) -> StepResult: ...


@dataclass(frozen=True)
class ToolCall:
    name: str
    arg: str


@dataclass(frozen=True)
class ToolCallError:
    """Why a turn's text is not a valid tool call; ``message`` is the observation the model sees."""

    reason: str  # no_tool_call | no_open_tag | bad_json | not_an_object | missing_name | missing_arg
    # | bad_name | bad_arg | extra_keys | unknown_tool
    message: str


def format_tool_call(name: str, arg: str) -> str:
    """The exact text of a tool call turn (what the demonstrations teach)."""
    return f"{TOOL_OPEN}{json.dumps({'name': name, 'arg': arg})}{TOOL_STOP}"


def format_observation(result: str) -> str:
    """The exact text appended to the context after a tool call."""
    return f"\n{OBS_OPEN}{result}{OBS_CLOSE}\n"


def parse_tool_call(text: str, tools: Iterable[str] | None = None) -> ToolCall | ToolCallError:
    """The tool call in ``text`` (up to its first ``</tool>``), or why there is none.

    ``tools``: the valid tool names (None accepts any name). Text before ``<tool>`` and after ``</tool>``
    is ignored.
    """
    end = text.find(TOOL_STOP)
    if end < 0:
        return ToolCallError("no_tool_call", "error: no tool call")
    start = text.rfind(TOOL_OPEN, 0, end)
    if start < 0:
        return ToolCallError("no_open_tag", f"error: a tool call is {TOOL_OPEN}{{...}}{TOOL_STOP}")
    try:
        obj = model_json(text[start + len(TOOL_OPEN) : end])
    except json.JSONDecodeError as e:
        return ToolCallError("bad_json", f"error: bad JSON in tool call: {e.msg}")
    if not isinstance(obj, dict):
        return ToolCallError("not_an_object", 'error: a tool call is a JSON object {"name": ..., "arg": ...}')
    return _check_call(obj, None if tools is None else tuple(tools))


def _check_call(obj: dict[str, Any], tools: tuple[str, ...] | None) -> ToolCall | ToolCallError:
    for key in ("name", "arg"):
        if key not in obj:
            return ToolCallError(f"missing_{key}", f"error: tool call has no {key!r}")
        if not isinstance(obj[key], str):
            return ToolCallError(f"bad_{key}", f"error: {key!r} must be a string")
    if extra := sorted(set(obj) - {"name", "arg"}):
        return ToolCallError("extra_keys", f"error: unexpected keys {', '.join(map(echo, extra))}")
    if tools is not None and obj["name"] not in tools:
        known = ", ".join(tools)
        return ToolCallError("unknown_tool", f"error: unknown tool {echo(obj['name'])}; tools: {known}")
    return ToolCall(obj["name"], obj["arg"])


def read_call(text: str, tools: dict[str, str]) -> ToolCall | ToolCallError:
    """The first tool call of a turn in either format: the chat template's ``<tool_call>`` blocks (where the
    turn has one) or the compact ``<tool>`` call. ``tools``: each tool's name -> the name of its one string
    argument (the template format's ``arguments`` key; the compact format's ``arg``). A turn of several template
    calls runs its first."""
    if CALL_OPEN not in text:
        return parse_tool_call(text, tuple(tools))
    calls = parse_tool_calls(text, tuple(tools))
    if isinstance(calls, CallError):
        return ToolCallError(calls.reason, calls.message)
    name, arguments = calls[0].name, calls[0].arguments
    value = arguments.get(tools[name])
    if set(arguments) != {tools[name]} or not isinstance(value, str):
        return ToolCallError("bad_arg", f"error: {name} takes one string argument, {tools[name]!r}")
    return ToolCall(name, value)


def tool_schemas(tools: dict[str, tuple[str, str]]) -> str:
    """JSON schemas (``Task.tools``) of tools that take one string argument: name -> (description, argument)."""
    return json.dumps([
        {"type": "function", "function": {"name": name, "description": about, "parameters": {
            "type": "object", "properties": {arg: {"type": "string"}}, "required": [arg]}}}
        for name, (about, arg) in tools.items()
    ])  # fmt: skip


# ------------------------------------------------------------------------------------------------------ tools


class ToolError(ValueError):
    """A tool refused its argument; the message (after "error: ") is the observation."""


_BINARY_OPS: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
}


def calc(expression: str) -> int:
    """Evaluate integer arithmetic (``+ - *``, exact ``/``, unary minus, parentheses) without ``eval``.

    The expression is parsed with ``ast`` and only those nodes are interpreted, so names, calls, attributes
    and powers are refused; every number is bounded by ``CALC_MAX_ABS``. Raises ``ToolError``.
    """
    if not expression.strip():
        raise ToolError("empty expression")
    if len(expression) > CALC_MAX_CHARS:
        raise ToolError(f"expression longer than {CALC_MAX_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError):  # ValueError: null bytes
        raise ToolError(f"invalid expression {echo(expression)}") from None
    return _eval(tree.body)


def _eval(node: ast.expr) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        return _divide(_eval(node.left), _eval(node.right))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
        return _bounded(_BINARY_OPS[type(node.op)](_eval(node.left), _eval(node.right)))
    if isinstance(node, ast.Name):
        raise ToolError(f"names are not allowed: {echo(node.id)}")
    raise ToolError("only integers, + - * / and parentheses are allowed")


def _divide(a: int, b: int) -> int:
    if b == 0:
        raise ToolError("division by zero")
    if a % b:
        raise ToolError(f"{a} / {b} is not a whole number")
    return a // b


def _bounded(value: int) -> int:
    if abs(value) > CALC_MAX_ABS:
        raise ToolError(f"number too large (limit {CALC_MAX_ABS})")
    return value


def lookup(store: dict[str, int], key: str) -> int:
    """The value of ``key`` (case and surrounding spaces ignored); ``ToolError`` naming the keys if absent."""
    normalized = key.strip().lower()
    if normalized not in store:
        raise ToolError(f"unknown key {echo(key)}; keys: {', '.join(store)}")
    return store[normalized]


# ---------------------------------------------------------------------------------------------- environment


def parse_answer(text: str) -> int | None:
    """The integer in ``text``'s last ``\\boxed{}`` (commas, spaces ignored); None if none or not an int."""
    boxed = extract_boxed(text)
    if boxed is None:
        return None
    digits = boxed.replace(",", "").replace(" ", "")
    return int(digits) if digits.lstrip("-").isdigit() and len(digits) < 20 else None


def _judge(text: str, target: int) -> tuple[float, str]:
    if extract_boxed(text) is None:
        return 0.0, "no_answer"
    answer = parse_answer(text)
    if answer is None:
        return 0.0, "unparsable_answer"
    return (1.0, "correct") if answer == target else (0.0, "wrong_answer")


class LookupCalcEnv:
    """One episode of the built-in task: answer ``prompt`` using ``lookup`` into ``store`` and ``calc``.
    ``template``: calls come in the chat template's format and observations are the bare results (the rollout
    driver writes them as the template's tool messages)."""

    TOOLS: ClassVar = {"lookup": "item", "calc": "expression"}  # tool -> its argument in the template format

    def __init__(
        self,
        prompt: str,
        store: dict[str, int],
        target: int,
        max_turns: int = MAX_TURNS,
        template: bool = False,
    ) -> None:
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.prompt, self.store, self.target, self.max_turns = prompt, dict(store), target, max_turns
        self.template = template
        self.reset()

    def reset(self) -> str:
        self.turn, self.tool_calls, self.tool_errors, self.done = 0, 0, 0, False
        return self.prompt

    def step(self, action: str) -> StepResult:
        if self.done:
            raise RuntimeError("step() after the episode ended; call reset() first")
        self.turn += 1
        if TOOL_STOP not in action and CALL_OPEN not in action:
            return self._finish(*_judge(action, self.target), answered=True)
        if self.turn >= self.max_turns:  # a tool call on the last turn: no turn is left to answer
            return self._finish(0.0, "turn_limit", answered=False)
        return self._call(action)

    def _call(self, action: str) -> StepResult:
        self.tool_calls += 1
        call = read_call(action, self.TOOLS)
        name = call.name if isinstance(call, ToolCall) else None
        if isinstance(call, ToolCallError):
            result, error = call.message, call.reason
        else:
            try:
                value = lookup(self.store, call.arg) if call.name == "lookup" else calc(call.arg)
                result, error = str(value), ""
            except ToolError as e:
                result, error = f"error: {e}", "bad_arg"
        self.tool_errors += bool(error)
        info = {"turn": self.turn, "tool": name, "tool_error": bool(error), "error": error}
        observation = result if self.template else format_observation(result)
        return StepResult(observation, done=False, reward=0.0, info=info)

    def _finish(self, reward: float, reason: str, answered: bool) -> StepResult:
        self.done = True
        well_formed = answered and reason != "no_answer" and self.tool_errors == 0
        info = {
            "turn": self.turn,
            "tool": None,
            "tool_error": False,
            "error": "",
            "reason": reason,
            "format_reward": FORMAT_REWARD if well_formed else 0.0,
            "tool_calls": self.tool_calls,
            "tool_errors": self.tool_errors,
        }
        return StepResult("", done=True, reward=reward, info=info)


def _spec(task: Task) -> dict[str, Any]:
    if task.domain != DOMAIN:
        raise ValueError(f"task {task.uid} is a {task.domain!r} task, not {DOMAIN!r}")
    try:
        spec = json.loads(task.answer)
        store = {str(k): int(v) for k, v in spec["store"].items()}
        return {"store": store, "target": int(spec["target"]), "calls": [tuple(c) for c in spec["calls"]]}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"task {task.uid}: bad agent answer spec {task.answer!r}: {e}") from e


def make_env(task: Task, max_turns: int = MAX_TURNS) -> LookupCalcEnv:
    """The episode ``task`` describes (its answer JSON); the same task always gives the same episode."""
    spec = _spec(task)
    return LookupCalcEnv(task.prompt, spec["store"], spec["target"], max_turns, template=bool(task.tools))


def scripted_actions(task: Task) -> list[str]:
    """The model turns of a correct solution: the task's tool plan, then ``\\boxed{target}``."""
    spec = _spec(task)
    return [*(format_tool_call(name, arg) for name, arg in spec["calls"]), f"\\boxed{{{spec['target']}}}"]


def play(env: Environment, actions: Iterable[str]) -> tuple[list[Segment], StepResult]:
    """Reset ``env`` and step it through ``actions`` until done: the transcript's segments, the last result.

    Raises ``ValueError`` if the actions run out first.
    """
    env.reset()
    segments: list[Segment] = []
    for action in actions:
        result = env.step(action)
        segments.append((action, True))
        if result.done:
            return segments, result
        segments.append((observation_text(result.observation), False))
    raise ValueError("the actions ran out before the episode ended")


def score_agent(task: Task, text: str, max_turns: int = MAX_TURNS) -> Reward:
    """The episode's reward from its full response text (model turns and observations, no prompt).

    The text is replayed through ``make_env(task)``: each turn runs up to a ``</tool>`` and must be followed
    by exactly the observation the environment gives ("transcript_mismatch" otherwise); the rest is the
    final turn. So this equals the environment's own final reward. Model text between ``</tool>`` and the
    observation (a stop string decoded mid-token) is skipped, as ``step`` ignores it too. A text that ends
    after a tool call without its observation (the driver's turn or length limit) scores 0, "turn_limit".
    """
    env, rest = make_env(task, max_turns), text
    while True:
        end = rest.find(TOOL_STOP)
        result = env.step(rest if end < 0 else rest[: end + len(TOOL_STOP)])
        if result.done:
            return Reward(result.reward, result.info["reason"])
        rest = rest[end + len(TOOL_STOP) :]
        at = rest.find(observation_text(result.observation))
        if at < 0 and OBS_OPEN not in rest:
            return Reward(0.0, "turn_limit")
        if at < 0 or OBS_OPEN in rest[:at]:
            return Reward(0.0, "transcript_mismatch")
        rest = rest[at + len(result.observation) :]


# ------------------------------------------------------------------------------------------- procedural tasks


@dataclass(frozen=True)
class AgentDemo:
    """A task with a worked multi-turn transcript (the SFT target): model turns and the env's observations."""

    task: Task
    segments: tuple[Segment, ...]  # (text, is_model); observations are exactly what the env returns

    @property
    def text(self) -> str:
        """The whole response: model turns and observations, in order."""
        return "".join(text for text, _ in self.segments)


def _question(rng: random.Random, level: int) -> tuple[str, list[tuple[int, str]]]:
    """A question and its (quantity, item) terms; quantity 0 means "the price itself"."""
    if level == 1:
        item = rng.choice(_ITEMS)
        return f"What is the price of {item}?", [(0, item)]
    name = rng.choice(_NAMES)
    if level == 2:
        qty, item = rng.randint(*_QUANTITIES), rng.choice(_ITEMS)
        return f"{name} buys {qty} {item}. How much does {name} pay?", [(qty, item)]
    (qa, a), (qb, b) = ((rng.randint(*_QUANTITIES), item) for item in rng.sample(_ITEMS, 2))
    return f"{name} buys {qa} {a} and {qb} {b}. How much does {name} pay in total?", [(qa, a), (qb, b)]


def _percent(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 100


def _store(rng: random.Random, items: list[str]) -> dict[str, int]:
    others = [i for i in _ITEMS if i not in items]
    keys = items + rng.sample(others, rng.randint(*_STORE_SIZE) - len(items))
    rng.shuffle(keys)
    return {key: rng.randint(*_PRICES) for key in keys}


def _answer_spec(store: dict[str, int], terms: list[tuple[int, str]]) -> dict[str, Any]:
    calls: list[list[str]] = [["lookup", item] for _, item in terms]
    if terms[0][0] == 0:
        return {"store": store, "target": store[terms[0][1]], "calls": calls}
    expression = " + ".join(f"{qty} * {store[item]}" for qty, item in terms)
    target = calc(expression)
    return {"store": store, "target": target, "calls": [*calls, ["calc", expression]]}


def make_agent_demo(
    rng: random.Random, level: int, index: int, split: str, boxed_share: float = 1.0
) -> AgentDemo:
    """Draw one task of ``level`` in ``split`` (redraws until the question's hash agrees) and solve it.

    Whether the final answer is boxed (else "The answer is N.", reward 0) is a hash of the question, so
    ``boxed_share`` never changes which tasks are drawn.
    """
    while True:
        question, terms = _question(rng, level)
        if split_of(question) == split:
            break
    spec = _answer_spec(_store(rng, [item for _, item in terms]), terms)
    task = Task(
        uid=f"{DOMAIN}/{split}/{index}",
        domain=DOMAIN,
        prompt=f"{question}\n{INSTRUCTION}",
        answer=json.dumps(spec),
        source="synthetic",
        level=level,
    )
    boxed = _percent(f"format/{question}") < round(boxed_share * 100)
    actions = scripted_actions(task)
    if not boxed:
        actions[-1] = f"The answer is {spec['target']}."
    segments, result = play(make_env(task), actions)
    assert result.reward == float(boxed), (task, result)
    return AgentDemo(task=task, segments=tuple(segments))


def agent_demos(
    n: int, split: str = "train", seed: int = 0, levels: tuple[int, ...] = LEVELS, boxed_share: float = 1.0
) -> list[AgentDemo]:
    """``n`` seeded tool-use tasks with worked transcripts, levels drawn uniformly from ``levels``; a
    ``boxed_share`` of them end in ``\\boxed{N}``, the rest in "The answer is N." (like ``math_demos``)."""
    check_generator_args("agent", split, levels, boxed_share)
    rng = random.Random(f"{DOMAIN}/{split}/{seed}")
    return [make_agent_demo(rng, rng.choice(levels), i, split, boxed_share) for i in range(n)]


def agent_tasks(
    n: int,
    split: str = "train",
    seed: int = 0,
    levels: tuple[int, ...] = LEVELS,
    tool_prompt: str = "short",
    template: bool = False,
) -> list[Task]:
    """``n`` seeded tool-use tasks (no transcripts) for RL and evaluation; ``tool_prompt=full`` puts
    FULL_INSTRUCTION before each question instead of INSTRUCTION after it; ``template``: the tools declared by
    the chat template (``TEMPLATE_TOOLS``) and TEMPLATE_INSTRUCTION after the question. The same tasks either way."""
    if tool_prompt not in TOOL_PROMPTS:
        raise ValueError(f"unknown tool_prompt {tool_prompt!r}; valid: {', '.join(TOOL_PROMPTS)}")
    tasks = [demo.task for demo in agent_demos(n, split, seed, levels)]
    if template:
        tools = tool_schemas(TEMPLATE_TOOLS)
        return [dataclasses.replace(t, prompt=f"{t.prompt.split(chr(10))[0]}\n{TEMPLATE_INSTRUCTION}", tools=tools)
                for t in tasks]  # fmt: skip
    if tool_prompt == "short":
        return tasks
    return [dataclasses.replace(t, prompt=FULL_INSTRUCTION + t.prompt.split("\n")[0]) for t in tasks]
