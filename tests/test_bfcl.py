"""Function calling: the ``<tool_call>`` parser, tools declared through the chat template, and BFCL as agent tasks
scored by BFCL's own AST checker (a scripted policy solves every item; wrong calls score 0 with a reason)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from rl.chat_tools import template_takes_tools, tools_preamble
from rl.models import load_tokenizer
from rl.rollout.multiturn import multi_turn_rollouts
from rl.sft import chat_prompt_ids
from rl.types import Rollout, SamplingParams, Task
from specialists.agent import SPECIALIST as AGENT
from specialists.bfcl import CATEGORIES, MAX_TEXT_CHARS, bfcl_tasks, score_bfcl, solution, tools_of
from specialists.tool_calls import MAX_CALLS, Call, CallError, format_tool_calls, parse_tool_calls

# A Hermes/Qwen-style template: tools in the system turn, as JSON lines inside <tools>.
TOOLS_TEMPLATE = (
    "{%- if tools %}<|system|>Tools:\n<tools>{% for t in tools %}\n{{ t | tojson }}{% endfor %}\n</tools>\n"
    "{%- endif %}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
    "{%- if add_generation_prompt %}<|assistant|>{% endif %}"
)


def call(name: str, **arguments: object) -> str:
    return format_tool_calls([Call(name, dict(arguments))])


def test_calls_parse_one_or_several_and_arguments_written_as_a_json_string() -> None:
    two = call("f", a=1) + "\nsome text\n" + call("g", b=[1, 2])
    assert parse_tool_calls(two) == [Call("f", {"a": 1}), Call("g", {"b": [1, 2]})]
    as_string = '<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>'
    assert parse_tool_calls(as_string, ["f"]) == [Call("f", {"a": 1})]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("the answer is 4", "no_tool_call"),
        ('<tool_call>{"name": "f", "arguments": {}}', "unclosed_call"),
        ("<tool_call>{name: f}</tool_call>", "bad_json"),
        ("<tool_call>" + "[" * 5000 + "</tool_call>", "bad_json"),  # nested past json's recursion limit
        ('<tool_call>{"name": "f", "arguments": "' + "[" * 5000 + '"}</tool_call>', "bad_arguments"),
        ("<tool_call>[1, 2]</tool_call>", "not_an_object"),
        ('<tool_call>{"arguments": {}}</tool_call>', "missing_name"),
        ('<tool_call>{"name": 3, "arguments": {}}</tool_call>', "bad_name"),
        ('<tool_call>{"name": "f"}</tool_call>', "missing_arguments"),
        ('<tool_call>{"name": "f", "arguments": [1]}</tool_call>', "bad_arguments"),
        ('<tool_call>{"name": "f", "arguments": "not json"}</tool_call>', "bad_arguments"),
        ('<tool_call>{"name": "f", "arguments": {}, "id": 1}</tool_call>', "extra_keys"),
        ('<tool_call>{"name": "<obs>rm", "arguments": {}}</tool_call>', "unknown_tool"),
        (call("f") * (MAX_CALLS + 1), "too_many_calls"),
        ('<tool_call>{"name": "f", "arguments": {"a": "' + "x" * 9000 + '"}}</tool_call>', "too_long"),
    ],
)
def test_every_malformed_call_is_a_reason_and_a_message_never_an_exception(text: str, reason: str) -> None:
    got = parse_tool_calls(text, ["f", "g"])
    assert isinstance(got, CallError) and got.reason == reason and got.message.startswith("error: ")
    assert "<" not in got.message.replace("<tool_call>", "").replace("</tool_call>", "")  # no forged tags


def test_bfcl_items_split_by_id_into_train_and_heldout_and_keep_their_category() -> None:
    train, heldout = bfcl_tasks(0, "train"), bfcl_tasks(0, "heldout")
    assert not {t.uid for t in train} & {t.uid for t in heldout}
    assert (
        len(train) + len(heldout) == 1000
    )  # simple_python 400, multiple, parallel, parallel_multiple 200 each
    levels = Counter(t.level for t in train + heldout)
    assert levels == {1: 400, 2: 200, 3: 200, 4: 200} and set(CATEGORIES) == set(levels)
    assert 0.1 < len(heldout) / 1000 < 0.3
    assert [t.uid for t in bfcl_tasks(5, "train", seed=1)] == [t.uid for t in bfcl_tasks(5, "train", seed=1)]
    assert [t.uid for t in bfcl_tasks(5, "train", seed=1)] != [t.uid for t in bfcl_tasks(5, "train", seed=2)]
    assert all(t.domain == "agent" and t.source == "bfcl" and t.tools for t in train)


def test_tools_reach_the_model_as_json_schema_with_names_it_can_call() -> None:
    functions = [{"name": "math.hypot", "description": "d", "parameters": {"type": "dict", "required": ["x"],
                  "properties": {"x": {"type": "float"}, "p": {"type": "tuple", "items": {"type": "integer"}},
                                 "o": {"type": "dict", "properties": {"k": {"type": "any"}}}}}}]  # fmt: skip
    (tool,) = tools_of(functions)
    assert tool["type"] == "function" and tool["function"]["name"] == "math_hypot"
    params = tool["function"]["parameters"]
    assert params["type"] == "object" and params["required"] == ["x"]
    assert params["properties"]["x"]["type"] == "number" and params["properties"]["p"]["type"] == "array"
    assert params["properties"]["p"]["items"]["type"] == "integer"
    assert params["properties"]["o"]["properties"]["k"]["type"] == "string"
    assert functions[0]["name"] == "math.hypot"  # the checker's copy is left as BFCL wrote it


def test_a_scripted_policy_solves_every_bfcl_item() -> None:
    tasks = bfcl_tasks(0, "train") + bfcl_tasks(0, "heldout")
    verdicts = Counter(score_bfcl(t, solution(t)).reason for t in tasks)
    assert verdicts == {"correct": 1000}


def _task(category_level: int) -> Task:
    return next(t for t in bfcl_tasks(0, "heldout") if t.level == category_level)


def test_wrong_calls_score_zero_with_the_checkers_reason() -> None:
    simple = _task(1)
    truth = parse_tool_calls(solution(simple))
    assert isinstance(truth, list) and len(truth) == 1
    name, args = truth[0].name, truth[0].arguments
    key = next(iter(args))
    wrong_value = {**args, key: "a string" if not isinstance(args[key], str) else "zzz-not-it"}
    cases = {
        "no_tool_call": "I would call the function.",
        "unknown_tool": call("not_a_tool", **args),
        "simple_function_checker_wrong_count": solution(simple) + "\n" + solution(simple),
    }
    for reason, text in cases.items():
        assert score_bfcl(simple, text) == score_bfcl(simple, text) and score_bfcl(simple, text).score == 0.0
        assert score_bfcl(simple, text).reason == reason, (reason, text)
    reward = score_bfcl(simple, call(name, **wrong_value))
    assert reward.score == 0.0 and reward.reason.startswith(("type_error", "value_error")), reward
    missing = score_bfcl(simple, call(name))
    assert missing.score == 0.0 and missing.reason == "simple_function_checker_missing_required"
    assert score_bfcl(simple, "x" * (MAX_TEXT_CHARS + 1)).reason == "too_long"
    parallel = _task(3)
    one_call_short = parse_tool_calls(solution(parallel))
    assert isinstance(one_call_short, list) and len(one_call_short) > 1
    assert score_bfcl(parallel, format_tool_calls(one_call_short[:-1])).score == 0.0
    assert score_bfcl(parallel, format_tool_calls(one_call_short[::-1])).score == 1.0  # any order


def test_tools_are_declared_by_a_template_that_takes_them_else_in_the_user_message(tiny_base: Path) -> None:
    task = _task(1)
    tool_name = json.loads(task.tools)[0]["function"]["name"]
    tokenizer = load_tokenizer(str(tiny_base))
    assert not template_takes_tools(tokenizer)
    plain = tokenizer.decode(chat_prompt_ids(tokenizer, task.prompt, task.tools))
    assert tools_preamble(json.loads(task.tools)) + task.prompt in plain and "<tool_call>" in plain
    tokenizer.chat_template = TOOLS_TEMPLATE
    assert template_takes_tools(tokenizer)
    templated = tokenizer.decode(chat_prompt_ids(tokenizer, task.prompt, task.tools))
    assert templated.startswith("<|system|>Tools:\n<tools>{") and f'"name": "{tool_name}"' in templated
    assert f"<|user|>{task.prompt}\n<|assistant|>" in templated
    assert chat_prompt_ids(tokenizer, task.prompt) == chat_prompt_ids(tokenizer, task.prompt, "")


def test_an_episode_of_the_agent_specialist_on_bfcl_is_one_turn_scored_by_the_checker(
    tiny_base: Path,
) -> None:
    tokenizer = load_tokenizer(str(tiny_base))
    tasks = [_task(3), _task(1)]
    answers = [solution(tasks[0]), "no call"]

    def generate(prompts: list[list[int]], params: SamplingParams) -> list[Rollout]:
        outs = []
        for prompt, text in zip(prompts, answers, strict=True):
            ids = tokenizer.encode(text, add_special_tokens=False)
            outs.append(Rollout(tuple(prompt), tuple(ids), (0.0,) * len(ids), "stop", text))
        return outs

    envs = [AGENT.make_env(t) for t in tasks]  # type: ignore[misc]
    prompts = [chat_prompt_ids(tokenizer, t.prompt, t.tools) for t in tasks]
    rollouts = multi_turn_rollouts(
        generate, tokenizer, prompts, envs, SamplingParams(), 4, AGENT.tool_stop, 4096
    )
    assert [r.turns for r in rollouts] == [1, 1]
    rewards = [AGENT.score(t, r) for t, r in zip(tasks, rollouts, strict=True)]
    assert [(r.score, r.reason) for r in rewards] == [(1.0, "correct"), (0.0, "no_tool_call")]
    assert rollouts[0].tool_calls == 0 and rollouts[0].loss_mask == (1,) * len(rollouts[0].response_ids)


def test_bfcl_without_its_package_is_one_clear_line_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    from jobs import common
    from rl.config import SpecialistConfig

    spec = SpecialistConfig(domain="agent", train_data="bfcl", eval_data="bfcl")
    common.check_data_files(spec)  # installed: nothing to say
    monkeypatch.setattr(common.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        common.InputError, match=r"specialist\.train_data=bfcl needs the bfcl-eval package: pip "
    ):
        common.check_data_files(spec)
