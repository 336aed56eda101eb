"""specialists.agent_env: tool-call parsing, safe tools, episodes, demos that replay, and the interface."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from rl.types import Reward
from specialists import agent_env
from specialists.agent_env import (
    OBS_CLOSE,
    OBS_OPEN,
    TOOL_STOP,
    Environment,
    StepResult,
    ToolCall,
    ToolCallError,
    ToolError,
    calc,
    format_observation,
    format_tool_call,
    lookup,
    make_env,
    parse_tool_call,
    play,
    score_agent,
    scripted_actions,
)

TOOLS = ("lookup", "calc")

# -------------------------------------------------------------------------------------------- tool parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('<tool>{"name": "lookup", "arg": "pens"}</tool>', ToolCall("lookup", "pens")),
        ('I need the price.\n<tool>{"name": "calc", "arg": "2 * 3"}</tool>', ToolCall("calc", "2 * 3")),
        ('<tool> {"arg": "1+1", "name": "calc"} </tool>\n<obs>', ToolCall("calc", "1+1")),  # text after stop
        (
            '<tool>{"name": "a"}</tool><tool>{"name": "calc", "arg": "1"}</tool>',
            ToolCallError,
        ),  # first call only
    ],
)
def test_parse_good_calls_with_text_around(text: str, expected: object) -> None:
    parsed = parse_tool_call(text, TOOLS)
    if expected is ToolCallError:
        assert isinstance(parsed, ToolCallError) and parsed.reason == "missing_arg"
    else:
        assert parsed == expected
    assert format_tool_call("lookup", "pens") == '<tool>{"name": "lookup", "arg": "pens"}</tool>'


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("\\boxed{3}", "no_tool_call"),
        ('<tool>{"name": "calc", "arg": "1"}', "no_tool_call"),  # never closed: not a call
        ('{"name": "calc", "arg": "1"}</tool>', "no_open_tag"),
        ('<tool>{"name": "calc", "arg": "1"</tool>', "bad_json"),
        ("<tool>{'name': 'calc', 'arg': '1'}</tool>", "bad_json"),
        # nested past json's recursion limit: bad_json, not a RecursionError out of the reward
        ("<tool>" + "[" * 5000 + "</tool>", "bad_json"),
        ('<tool>["calc", "1"]</tool>', "not_an_object"),
        ('<tool>{"arg": "1"}</tool>', "missing_name"),
        ('<tool>{"name": "calc"}</tool>', "missing_arg"),
        ('<tool>{"name": 3, "arg": "1"}</tool>', "bad_name"),
        ('<tool>{"name": "calc", "arg": 7}</tool>', "bad_arg"),
        ('<tool>{"name": "calc", "arg": "1", "why": "x"}</tool>', "extra_keys"),
        ('<tool>{"name": "search", "arg": "pens"}</tool>', "unknown_tool"),
    ],
)
def test_parse_errors_have_reasons_and_messages(text: str, reason: str) -> None:
    parsed = parse_tool_call(text, TOOLS)
    assert isinstance(parsed, ToolCallError) and parsed.reason == reason
    assert parsed.message.startswith("error: ")


def test_any_tool_name_is_accepted_without_a_tool_list() -> None:
    assert parse_tool_call('<tool>{"name": "search", "arg": "x"}</tool>') == ToolCall("search", "x")


# ---------------------------------------------------------------------------------------------------- tools


@pytest.mark.parametrize(
    ("expression", "value"),
    [("2 + 3 * 4", 14), ("(2 + 3) * 4", 20), ("10 - 2 - 3", 5), ("-3 + 5", 2), ("12 / 4 * 2", 6), (" 7 ", 7)],
)
def test_calc_follows_precedence(expression: str, value: int) -> None:
    assert calc(expression) == value


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os')", "only integers"),
        ("__import__('os').system('true')", "only integers"),
        ("(1).real", "only integers"),
        ("x + 1", "names are not allowed"),
        ("2 ** 999999", "only integers"),
        ("9" * 13, "too large"),
        ("1000000 * 1000000 * 10", "too large"),
        ("1 / 0", "division by zero"),
        ("7 / 2", "not a whole number"),
        ("1.5 + 1", "only integers"),
        ("True + 1", "only integers"),
        ("'a' * 3", "only integers"),
        ("[1] * 3", "only integers"),
        ("1 +", "invalid expression"),
        ("1\x00", "invalid expression"),
        ("", "empty expression"),
        ("1 + " * 30 + "1", "longer than"),
    ],
)
def test_calc_refuses_everything_else(expression: str, message: str) -> None:
    with pytest.raises(ToolError, match=message):
        calc(expression)


def test_lookup_finds_keys_and_names_them_when_missing() -> None:
    store = {"pens": 7, "cups": 4}
    assert lookup(store, " Pens ") == 7
    with pytest.raises(ToolError, match=r"unknown key 'price of pens'; keys: pens, cups"):
        lookup(store, "price of pens")


def test_tool_errors_are_observations_not_exceptions() -> None:
    env = agent_env.LookupCalcEnv("q", {"pens": 7}, target=7)
    calc_error = "error: only integers, + - * / and parentheses are allowed"
    for action, expected in [
        (format_tool_call("lookup", "cups"), "\n<obs>error: unknown key 'cups'; keys: pens</obs>\n"),
        (format_tool_call("calc", "__import__('os')"), format_observation(calc_error)),
        ('<tool>{"name": "calc"</tool>', None),
        (
            format_tool_call("search", "pens"),
            "\n<obs>error: unknown tool 'search'; tools: lookup, calc</obs>\n",
        ),
    ]:
        result = env.step(action)
        assert not result.done and result.reward == 0.0 and result.info["tool_error"]
        assert result.observation.startswith(f"\n{OBS_OPEN}error: ")
        assert result.observation.endswith(f"{OBS_CLOSE}\n")
        assert expected is None or result.observation == expected
    assert env.step(format_tool_call("lookup", "pens")).observation == "\n<obs>7</obs>\n"


def test_echoed_model_text_cannot_forge_an_observation() -> None:
    env = agent_env.LookupCalcEnv("q", {"pens": 7}, target=7)
    observation = env.step(format_tool_call("lookup", "</obs>\\boxed{7}<obs>" + "x" * 100)).observation
    assert observation.count(OBS_CLOSE) == 1 and "xxx..." in observation and len(observation) < 150


# ------------------------------------------------------------------------------------------------- episodes


@pytest.mark.parametrize("level", [1, 2, 3])
def test_scripted_policy_solves_every_level(level: int) -> None:
    for task in agent_env.agent_tasks(30, "train", seed=1, levels=(level,)):
        env = make_env(task)
        assert env.reset() == task.prompt
        segments, result = play(env, scripted_actions(task))
        assert (result.done, result.reward, result.info["reason"]) == (True, 1.0, "correct")
        assert result.info["format_reward"] == agent_env.FORMAT_REWARD
        assert result.info["tool_calls"] == level and result.info["tool_errors"] == 0
        assert result.observation == ""
        assert len(segments) == 2 * level + 1 and segments[-1] == (
            f"\\boxed{{{json.loads(task.answer)['target']}}}",
            True,
        )


def test_wrong_missing_and_unparsable_answers_score_zero_with_reasons() -> None:
    task = agent_env.agent_tasks(1, levels=(3,))[0]
    target = json.loads(task.answer)["target"]
    calls = scripted_actions(task)[:-1]
    for final, reason, format_reward in [
        (f"\\boxed{{{target + 1}}}", "wrong_answer", agent_env.FORMAT_REWARD),
        (f"The answer is {target}.", "no_answer", 0.0),
        ("\\boxed{lots}", "unparsable_answer", agent_env.FORMAT_REWARD),
        (f"\\boxed{{{target}}}", "correct", agent_env.FORMAT_REWARD),
    ]:
        _, result = play(make_env(task), [*calls, final])
        assert (result.reward, result.info["reason"]) == (float(reason == "correct"), reason)
        assert result.info["format_reward"] == format_reward


def test_a_failed_tool_call_keeps_the_reward_but_loses_the_format_reward() -> None:
    task = agent_env.agent_tasks(1, levels=(2,))[0]
    segments, result = play(make_env(task), ['<tool>{"name": "lookup"}</tool>', *scripted_actions(task)])
    assert segments[1][0].startswith("\n<obs>error: tool call has no 'arg'")
    assert (result.reward, result.info["format_reward"], result.info["tool_errors"]) == (1.0, 0.0, 1)


def test_turn_limit_ends_the_episode_and_reset_restarts_it() -> None:
    task = agent_env.agent_tasks(1, levels=(3,))[0]
    env = make_env(task, max_turns=2)
    segments, result = play(env, scripted_actions(task))
    assert len(segments) == 3 and (result.done, result.reward, result.info["reason"]) == (
        True,
        0.0,
        "turn_limit",
    )
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step("\\boxed{1}")
    env.max_turns = agent_env.MAX_TURNS
    assert play(env, scripted_actions(task))[1].reward == 1.0
    looping = [format_tool_call("lookup", "nothing")] * 10
    _, result = play(make_env(task), looping)
    assert result.info == result.info | {"reason": "turn_limit", "turn": agent_env.MAX_TURNS}


def test_bad_env_arguments_are_clear_errors() -> None:
    task = agent_env.agent_tasks(1)[0]
    with pytest.raises(ValueError, match="max_turns must be >= 1"):
        make_env(task, max_turns=0)
    with pytest.raises(ValueError, match="not 'agent'"):
        make_env(replace(task, domain="math"))
    with pytest.raises(ValueError, match="bad agent answer spec"):
        make_env(replace(task, answer='{"store": {"pens": 3}}'))
    with pytest.raises(ValueError, match="ran out"):
        play(make_env(task), [])


# -------------------------------------------------------------------------------------------- score_agent


def test_score_agent_replays_the_transcript_like_the_env() -> None:
    for demo in agent_env.agent_demos(60, "heldout", seed=2):
        assert score_agent(demo.task, demo.text) == Reward(1.0, "correct")
        model_turns = [text for text, is_model in demo.segments if is_model]
        segments, result = play(make_env(demo.task), [*model_turns[:-1], "\\boxed{-1}"])
        transcript = "".join(text for text, _ in segments)
        assert score_agent(demo.task, transcript) == Reward(result.reward, result.info["reason"])
        assert score_agent(demo.task, transcript).reason == "wrong_answer"


def test_score_agent_cut_transcripts_and_forged_observations() -> None:
    demo = agent_env.agent_demos(1, levels=(3,))[0]
    target = json.loads(demo.task.answer)["target"]
    first_call = demo.segments[0][0]
    assert score_agent(demo.task, first_call) == Reward(0.0, "turn_limit")  # the driver stopped here
    assert score_agent(demo.task, "") == Reward(0.0, "no_answer")
    price = json.loads(demo.task.answer)["store"][json.loads(first_call[6:-7])["arg"]]
    forged = f"{first_call}\n<obs>{price + 1}</obs>\n\\boxed{{{target}}}"  # not what the env observed
    assert score_agent(demo.task, forged) == Reward(0.0, "transcript_mismatch")
    honest = f"{first_call}\n<obs>{price}</obs>\n\\boxed{{{target}}}"
    assert score_agent(demo.task, honest) == Reward(1.0, "correct")
    assert score_agent(demo.task, f"\\boxed{{{target}}}") == Reward(1.0, "correct")  # a lucky guess
    skipping = f"{first_call}\n<obs>{price + 1}</obs>\n{demo.segments[1][0]}\\boxed{{{target}}}"
    assert score_agent(demo.task, skipping) == Reward(0.0, "transcript_mismatch")


def test_score_agent_skips_text_decoded_past_the_stop_string() -> None:
    """An engine that checks stop strings on decoded tokens can return a few characters after ``</tool>``;
    the env ignores them, and so does the replay."""
    demo = agent_env.agent_demos(1, levels=(2,))[0]
    overshoot = "".join(text + ("\n" if text.endswith(TOOL_STOP) else "") for text, _ in demo.segments)
    assert overshoot != demo.text and score_agent(demo.task, overshoot) == Reward(1.0, "correct")
    assert make_env(demo.task).step(demo.segments[0][0] + "\n").observation == demo.segments[1][0]


# ------------------------------------------------------------------------------------------ tasks and demos


def test_demos_replay_through_the_env() -> None:
    for demo in agent_env.agent_demos(100, "train", seed=5):
        env = make_env(demo.task)
        assert env.reset() == demo.task.prompt
        result: StepResult | None = None
        for i, (text, is_model) in enumerate(demo.segments):
            if not is_model:
                assert result is not None and text == result.observation
                continue
            result = env.step(text)
            assert result.done == (i == len(demo.segments) - 1)
        assert result is not None and result.reward == 1.0
        assert [seg[1] for seg in demo.segments] == [i % 2 == 0 for i in range(len(demo.segments))]
        assert all(text.endswith(TOOL_STOP) for text, is_model in demo.segments[:-1] if is_model)


def test_seeded_and_deterministic() -> None:
    tasks = agent_env.agent_tasks(50, "train", seed=3)
    assert tasks == agent_env.agent_tasks(50, "train", seed=3)
    assert tasks != agent_env.agent_tasks(50, "train", seed=4)
    for task in tasks[:10]:
        assert make_env(task).store == make_env(task).store == json.loads(task.answer)["store"]
    stores = {json.dumps(json.loads(t.answer)["store"]) for t in tasks}
    assert len(stores) == len(tasks)  # every episode has its own prices: nothing to memorise


def test_train_and_heldout_never_share_a_question() -> None:
    train = {t.prompt for t in agent_env.agent_tasks(2000, "train")}
    heldout = {t.prompt for t in agent_env.agent_tasks(500, "heldout")}
    assert train and heldout and not (train & heldout)
    for split in agent_env.SPLITS:
        assert {t.level for t in agent_env.agent_tasks(60, split)} == {1, 2, 3}


def test_answer_json_round_trips_and_describes_the_episode() -> None:
    for task in agent_env.agent_tasks(60, "train", seed=7):
        spec = json.loads(task.answer)
        assert set(spec) == {"store", "target", "calls"} and json.dumps(spec) == task.answer
        assert 3 <= len(spec["store"]) <= 6 and all(isinstance(v, int) for v in spec["store"].values())
        assert task.domain == "agent" and task.source == "synthetic" and task.uid.startswith("agent/train/")
        assert task.prompt.endswith("\n" + agent_env.INSTRUCTION) and len(task.prompt) < 140
        name, arg = spec["calls"][-1]
        last = lookup(spec["store"], arg) if name == "lookup" else calc(arg)
        assert last == spec["target"]
        rebuilt = agent_env.LookupCalcEnv(task.prompt, spec["store"], spec["target"])
        assert play(rebuilt, scripted_actions(task))[1].reward == 1.0


def test_boxed_share_mixes_final_formats_without_changing_the_tasks() -> None:
    mixed = agent_env.agent_demos(400, "train", boxed_share=0.5)
    assert [d.task for d in mixed] == agent_env.agent_tasks(400, "train")
    boxed = [d for d in mixed if "\\boxed{" in d.text]
    assert 140 < len(boxed) < 260
    for demo in mixed:
        expected = Reward(1.0, "correct") if demo in boxed else Reward(0.0, "no_answer")
        assert score_agent(demo.task, demo.text) == expected
    assert all("\\boxed{" not in d.text for d in agent_env.agent_demos(30, boxed_share=0.0))
    with pytest.raises(ValueError, match=r"format share must be in \[0, 1\]"):
        agent_env.agent_demos(1, boxed_share=1.5)


def test_levels_are_respected() -> None:
    assert {t.level for t in agent_env.agent_tasks(40, levels=(2,))} == {2}
    level3 = agent_env.agent_tasks(1, levels=(3,))[0]
    assert [c[0] for c in json.loads(level3.answer)["calls"]] == ["lookup", "lookup", "calc"]


def test_full_tool_prompt_spells_out_the_formats_for_the_same_tasks() -> None:
    """specialist.tool_prompt=full (a pretrained model): the same episodes, the formats and a worked example
    before the question; the scripted policy still solves them; an unknown name is a clear error (config and function)."""
    from rl.config import SpecialistConfig
    from specialists.agent import eval_tasks

    short = agent_env.agent_tasks(30, "heldout", seed=1)
    full = agent_env.agent_tasks(30, "heldout", seed=1, tool_prompt="full")
    assert [(t.uid, t.answer, t.level) for t in short] == [(t.uid, t.answer, t.level) for t in full]
    for s, f in zip(short, full, strict=True):
        question = s.prompt.removesuffix("\n" + agent_env.INSTRUCTION)
        assert f.prompt == agent_env.FULL_INSTRUCTION + question and question.endswith("?")
        _, result = play(make_env(f), scripted_actions(f))
        assert result.reward == 1.0
    assert '<tool>{"name": "lookup", "arg": "pens"}</tool>' in agent_env.FULL_INSTRUCTION
    assert "<obs>7</obs>" in agent_env.FULL_INSTRUCTION and "\\boxed{26}" in agent_env.FULL_INSTRUCTION
    cfg = SpecialistConfig(domain="agent", num_eval_tasks=5, tool_prompt="full")
    assert all(t.prompt.startswith(agent_env.FULL_INSTRUCTION) for t in eval_tasks(cfg))
    with pytest.raises(ValueError, match="tool_prompt"):
        SpecialistConfig(domain="agent", tool_prompt="long")
    with pytest.raises(ValueError, match="unknown tool_prompt 'long'"):
        agent_env.agent_tasks(1, tool_prompt="long")


def test_bad_split_and_level_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown split 'test'"):
        agent_env.agent_tasks(1, "test")
    with pytest.raises(ValueError, match=r"unknown agent levels \[4\]"):
        agent_env.agent_tasks(1, levels=(4,))


# ------------------------------------------------------------------------------- a user's own environment


class EchoEnv:
    """A toy user environment: one tool, ``echo``; the answer is the echoed word, boxed."""

    def __init__(self, word: str) -> None:
        self.word = word

    def reset(self) -> str:
        return f"Echo the secret word. Tools: echo.\n{self.word}"

    def step(self, action: str) -> StepResult:
        call = parse_tool_call(action, ("echo",))
        if isinstance(call, ToolCall):
            return StepResult(
                format_observation(call.arg.upper()), done=False, reward=0.0, info={"tool": "echo"}
            )
        if call.reason != "no_tool_call":
            return StepResult(
                format_observation(call.message), done=False, reward=0.0, info={"tool_error": True}
            )
        correct = f"\\boxed{{{self.word.upper()}}}" in action
        return StepResult(
            "", done=True, reward=float(correct), info={"reason": "correct" if correct else "wrong"}
        )


def test_a_user_environment_runs_through_a_minimal_loop() -> None:
    env: Environment = EchoEnv("owl")  # type-checks against the Protocol
    assert isinstance(env, Environment)
    policy = iter(["<tool>oops</tool>", format_tool_call("echo", "owl"), "\\boxed{OWL}"])
    context, result = env.reset(), None
    for _ in range(5):
        action = next(policy)
        result = env.step(action)
        context += action + result.observation
        if result.done:
            break
    assert result is not None and result.done and result.reward == 1.0
    assert context.endswith('"arg": "owl"}</tool>\n<obs>OWL</obs>\n\\boxed{OWL}')
    assert "<obs>error: bad JSON in tool call" in context
    assert play(EchoEnv("cat"), ["\\boxed{DOG}"])[1].reward == 0.0


def test_agent_prompt_benchmark_rejects_bad_input(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.agent_prompt import main

    assert main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: model path {tmp_path / 'missing'} does not exist"
    assert main([str(tmp_path), "--tasks", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --tasks must be at least 1, got 0"
