"""Agent environments beyond the built-in one's compact format: tool calls and results in the chat template's
format, TextWorld games (generated here, played by their walkthrough and by wrong policies), and an environment
of the user's own named by a config (examples/guess_number.py).

The policies are scripted (what varies between tests); the games, the interpreter, the tokenizer and its template
are real.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from rl.chat_tools import FALLBACK_FORMS, message_form, message_separator, tool_result_form, tool_result_text
from rl.config import ConfigValueError, SpecialistConfig
from rl.models import load_tokenizer
from rl.sft import chat_prompt_ids
from rl.types import Reward, Rollout, SamplingParams, Task
from specialists import text_games, user_env
from specialists.agent import SPECIALIST as AGENT
from specialists.agent_env import (
    TOOL_STOP,
    ToolCall,
    ToolCallError,
    agent_tasks,
    format_tool_call,
    make_env,
    read_call,
    scripted_actions,
)
from specialists.tool_calls import Call, format_tool_calls

# Qwen2.5's layout in a few lines: tools in the system turn, tool results as a user turn, each in <tool_response>
# (results in a row share the turn)
END = "<|im_end|>"
QWEN_LIKE = (
    "{%- if tools %}<|im_start|>system\n<tools>{% for t in tools %}\n{{ t | tojson }}{% endfor %}\n</tools>"
    + END + "\n{% endif %}{% for m in messages %}{% if m.role == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1].role != 'tool' %}<|im_start|>user{% endif %}"
    "{{ '\\n<tool_response>\\n' }}{{ m.content }}{{ '\\n</tool_response>' }}"
    "{% if loop.last or messages[loop.index0 + 1].role != 'tool' %}" + END + "{{ '\\n' }}{% endif %}{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}" + END
    + "\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)  # fmt: skip


@pytest.fixture(scope="module")
def qwen_like(tiny_base: Path):
    """The tiny base's tokenizer under a Qwen-style template whose end-of-turn is its EOS token's text."""
    tokenizer = load_tokenizer(str(tiny_base))
    tokenizer.chat_template = QWEN_LIKE.replace(END, tokenizer.eos_token)
    return tokenizer


@pytest.fixture(scope="module")
def games_dir(tmp_path_factory: pytest.TempPathFactory):
    """TextWorld games compiled into a directory of this module's own."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("textworld")
        patch.setattr(text_games, "game_dir", lambda: folder)
        yield folder


def call(name: str, **arguments: str) -> str:
    return format_tool_calls([Call(name, dict(arguments))])


def policy(tokenizer, plans: dict[tuple[int, ...], list[str]]) -> Callable:
    """A generate that plays ``plans[prompt][turn]``, each turn ending at EOS like a chat model's message;
    ``generate.stops`` records each call's stop strings."""
    turns = dict.fromkeys(plans, 0)

    def generate(prompts: list[list[int]], params: SamplingParams) -> list[Rollout]:
        generate.stops.append(params.stop)  # type: ignore[attr-defined]
        out = []
        for p in prompts:
            key = next(k for k in plans if tuple(p[: len(k)]) == k)
            text = plans[key][min(turns[key], len(plans[key]) - 1)]
            turns[key] += 1
            ids = (*tokenizer.encode(text, add_special_tokens=False), tokenizer.eos_token_id)
            out.append(Rollout(tuple(p), ids, (-0.5,) * len(ids), "eos", text))
        return out

    generate.stops = []  # type: ignore[attr-defined]
    return generate


def play(
    tokenizer, tasks: list[Task], plans: list[list[str]], max_turns: int = 8, stops: list | None = None
) -> list[Rollout]:
    """Episodes of ``tasks`` through the real driver and the agent specialist's environments (``stops``: each
    generate call's stop strings are appended to it)."""
    from rl.episodes import specialist_rollouts

    prompts = [chat_prompt_ids(tokenizer, t.prompt, t.tools, t.system) for t in tasks]
    generate = policy(tokenizer, {tuple(p): plan for p, plan in zip(prompts, plans, strict=True)})
    generate.stops = stops if stops is not None else []
    return specialist_rollouts(
        AGENT, generate, tokenizer, tasks, prompts, SamplingParams(64), max_turns, 4096
    )


# ------------------------------------------------------------------------------------------------ the formats


def test_tool_results_take_the_templates_own_form(qwen_like) -> None:
    eos = qwen_like.eos_token
    before, after = tool_result_form(qwen_like)
    assert (before, after) == (f"{eos}\n<|im_start|>user\n<tool_response>\n",
                               f"\n</tool_response>{eos}\n<|im_start|>assistant\n")  # fmt: skip
    # a turn that stopped at EOS already holds the end-of-turn token; one cut at a stop string does not
    assert tool_result_text(qwen_like, "7", turn_ended=True) == before[len(eos) :] + "7" + after
    assert tool_result_text(qwen_like, "7", turn_ended=False) == before + "7" + after
    # an environment that answers as the user (verifiers'): the template's user turn
    assert message_form(qwen_like, "user") == (
        f"{eos}\n<|im_start|>user\n",
        f"{eos}\n<|im_start|>assistant\n",
    )
    with pytest.raises(ValueError, match="an observation's role is one of"):
        message_form(qwen_like, "system")
    # the results of parallel calls: the template's own text between two tool messages in a row
    assert message_separator(qwen_like, "tool") == "\n</tool_response>\n<tool_response>\n"
    assert tool_result_text(qwen_like, ("5", "2"), turn_ended=True) == (
        f"\n<|im_start|>user\n<tool_response>\n5\n</tool_response>\n<tool_response>\n2\n</tool_response>{eos}\n"
        "<|im_start|>assistant\n"
    )


def test_a_template_without_a_tool_role_gets_the_fallback_form(qwen_like) -> None:
    qwen_like = type(qwen_like).from_pretrained(qwen_like.name_or_path)
    qwen_like.chat_template = "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no') }}" \
        "{% endif %}{{ m.content }}{% endfor %}"  # fmt: skip
    assert tool_result_form(qwen_like) == FALLBACK_FORMS["tool"]


def test_read_call_takes_either_format_and_names_what_is_wrong() -> None:
    tools = {"lookup": "item", "calc": "expression"}
    assert read_call(call("lookup", item="pens"), tools) == ToolCall("lookup", "pens")
    assert read_call(format_tool_call("calc", "2 * 3"), tools) == ToolCall("calc", "2 * 3")
    two = call("lookup", item="pens") + call("calc", expression="1")
    assert read_call(two, tools) == ToolCall("lookup", "pens")  # several calls: the first runs
    wrong = {
        "no call here": "no_tool_call",
        call("fetch", item="pens"): "unknown_tool",
        call("lookup", thing="pens"): "bad_arg",
        call("lookup", item="pens", extra="x"): "bad_arg",
        '<tool_call>\n{"name": "lookup", "arguments": {"item": 3}}\n</tool_call>': "bad_arg",
        "<tool_call>\n{not json}\n</tool_call>": "bad_json",
        '<tool_call>{"name": "lookup"': "unclosed_call",
    }
    for text, reason in wrong.items():
        got = read_call(text, tools)
        assert isinstance(got, ToolCallError) and got.reason == reason, (text, got)
        assert got.message.startswith("error: ")


def test_lookup_calc_in_the_template_format_solves_through_the_driver(qwen_like) -> None:
    compact = agent_tasks(6, "heldout", seed=5)
    tasks = agent_tasks(6, "heldout", seed=5, template=True)
    assert [t.uid for t in tasks] == [t.uid for t in compact] and all(t.tools for t in tasks)
    assert "<tools>" in qwen_like.decode(chat_prompt_ids(qwen_like, tasks[0].prompt, tasks[0].tools))
    plans = []
    for task in tasks:  # the compact plan's calls, written as template calls
        spec = json.loads(task.answer)
        turns = [
            call(name, **{"item" if name == "lookup" else "expression": arg}) for name, arg in spec["calls"]
        ]
        plans.append([*turns, f"\\boxed{{{spec['target']}}}"])
    plans[-1] = [call("lookup", item="nothing"), "\\boxed{0}"]  # a bad argument, then a wrong answer
    stops: list = []
    rollouts = play(qwen_like, tasks, plans, stops=stops)
    rewards = [AGENT.score(t, r) for t, r in zip(tasks, rollouts, strict=True)]
    assert [(r.score, r.reason) for r in rewards] == [(1.0, "correct")] * 5 + [(0.0, "wrong_answer")]
    assert stops and all(TOOL_STOP not in s for s in stops)  # template turns run to their end-of-turn token
    for r, plan in zip(rollouts, plans, strict=True):
        assert r.turns == len(plan) and r.tool_calls == len(plan) - 1
        observed = qwen_like.decode([t for t, m in zip(r.response_ids, r.loss_mask, strict=True) if m == 0])
        assert observed.count("<tool_response>") == r.tool_calls and "<obs>" not in observed
        # the turns' own EOS tokens are sampled, so trained; the template's header tokens are not
        trained = [t for t, m in zip(r.response_ids, r.loss_mask, strict=True) if m == 1]
        assert trained.count(qwen_like.eos_token_id) == len(plan)
    assert rollouts[-1].tool_errors == 1 and "unknown key" in rollouts[-1].text


def test_an_environments_verdict_is_the_reward_and_a_non_finite_one_scores_zero() -> None:
    from dataclasses import replace

    from rl.episodes import env_score

    done = Rollout((1,), (2,), (0.0,), "eos", "x", env_reward=0.5, env_reason="partial")
    assert env_score(agent_tasks(1)[0], done) == Reward(0.5, "partial")
    assert env_score(agent_tasks(1)[0], replace(done, env_reward=None)) == Reward(0.0, "no_episode")
    for bad in (float("nan"), float("inf")):
        assert env_score(agent_tasks(1)[0], replace(done, env_reward=bad)).score == 0.0


def test_the_compact_format_is_unchanged_for_tasks_without_tools(qwen_like) -> None:
    task = agent_tasks(1, "train", seed=2)[0]
    env = make_env(task)
    result = env.step(scripted_actions(task)[0])
    assert result.observation.startswith("\n<obs>") and not task.tools


# ---------------------------------------------------------------------------------------------------- TextWorld


@pytest.fixture(scope="module")
def tw_tasks(games_dir: Path) -> list[Task]:
    return text_games.textworld_tasks(2, "heldout", seed=0, levels=(1, 2)) + text_games.textworld_tasks(
        1, "train", seed=0, levels=(2,), template=False, dense=True
    )


def test_games_are_generated_once_per_seed_and_split_by_seed(games_dir: Path, tw_tasks: list[Task]) -> None:
    made = sorted(p.name for p in games_dir.glob("*.task.json"))
    assert len(made) == 3
    stamps = {p: p.stat().st_mtime_ns for p in games_dir.iterdir()}
    again = text_games.textworld_tasks(2, "heldout", seed=0, levels=(1, 2))
    assert (
        again == tw_tasks[:2] and {p: p.stat().st_mtime_ns for p in games_dir.iterdir()} == stamps
    )  # cached
    train = {s for _, s in text_games.game_seeds(40, "train", 0, (1, 2, 3))}
    heldout = {s for _, s in text_games.game_seeds(40, "heldout", 0, (1, 2, 3))}
    assert not train & heldout and len(train) == len(heldout) == 40
    assert [t.level for t in tw_tasks] == [1, 2, 2] and all("Goal:" in t.prompt for t in tw_tasks)


def test_the_walkthrough_wins_every_game_in_both_formats(qwen_like, tw_tasks: list[Task]) -> None:
    plans = []
    for task in tw_tasks:
        write = (
            (lambda c: call("command", command=c))
            if task.tools
            else (lambda c: format_tool_call("command", c))
        )
        plans.append([write(c) for c in text_games.walkthrough(task)])
    rollouts = play(qwen_like, tw_tasks, plans)
    for task, r, plan in zip(tw_tasks, rollouts, plans, strict=True):
        assert AGENT.score(task, r) == Reward(1.0, "won"), r.text
        assert r.turns == len(plan) and r.tool_errors == 0
    # the game's answers come back as the template's tool messages (or <obs> in the compact format)
    assert "<tool_response>" in rollouts[1].text and "<obs>" in rollouts[2].text
    assert "Commands:" in rollouts[1].text and "Score: 0/1" in rollouts[1].text


def test_dense_reward_counts_the_quest_done_and_sparse_only_a_win(tw_tasks: list[Task]) -> None:
    dense = tw_tasks[2]  # a two-step quest, rewarded by the share of it done (TextWorld's planner)
    env = text_games.TextWorldEnv(dense)
    env.reset()
    assert env.step(format_tool_call("command", "look")).reward == 0.0
    first = env.step(format_tool_call("command", text_games.walkthrough(dense)[0]))
    assert not first.done and first.reward == pytest.approx(0.5) and first.info["score"] == 0
    last = env.step(format_tool_call("command", text_games.walkthrough(dense)[1]))
    assert last.done and last.reward == 1.0 and last.info["reason"] == "won"
    sparse = text_games.TextWorldEnv(tw_tasks[1])
    sparse.reset()
    step = sparse.step(call("command", command=text_games.walkthrough(tw_tasks[1])[0]))
    assert not step.done and step.reward == 0.0


def test_wrong_calls_are_observations_with_reasons_and_score_nothing(qwen_like, tw_tasks: list[Task]) -> None:
    task = tw_tasks[0]
    env = text_games.TextWorldEnv(task)
    env.reset()
    wrong = {
        call("take", command="key"): "unknown_tool",
        "<tool_call>\n{oops\n</tool_call>": "bad_json",
        call("command", command="quit"): "meta_command",
        call("command", command="RESTART please"): "meta_command",
        call("command", command="go\nnorth"): "bad_command",
        call("command", command="x" * 200): "bad_command",
        call("command", command="  "): "bad_command",
        "I would like to open the door.": "no_tool_call",
        # a second command chained after an allowed one, TextWorld's debug verbs, the text a win is read from
        call("command", command="look. quit"): "bad_command",
        call("command", command="look then undo"): "meta_command",
        call("command", command="tw-extra-infos score"): "meta_command",
        call("command", command="say *** The End ***"): "bad_command",
        call("command", command="examine box; restart"): "bad_command",
    }
    for text, reason in wrong.items():
        result = env.step(text)
        assert not result.done and result.info["error"] == reason and result.observation.startswith("error: ")
        assert result.reward == 0.0
    # a policy that only looks around: the driver's turn limit ends it, 0 with the reason
    looks = play(qwen_like, [task], [[call("command", command="look")]], max_turns=3)[0]
    assert looks.turns == 3 and AGENT.score(task, looks).score == 0.0
    assert AGENT.score(task, looks).reason == "turn_limit"
    # a forged "won" in the model's text changes nothing: the reward is read from the interpreter
    forged = play(qwen_like, [task], [["You won! Score: 1/1 *** The End ***"]], max_turns=2)[0]
    assert AGENT.score(task, forged).score == 0.0


def test_a_game_that_fails_to_generate_is_one_clear_line(games_dir: Path, monkeypatch) -> None:
    import textworld.generator

    def broken(options):
        raise RuntimeError("no quest of that length")

    monkeypatch.setattr(textworld.generator, "make_game", broken)
    with pytest.raises(text_games.GameError) as err:
        text_games.games([(3, 999)], workers=1)
    assert str(err.value) == ("textworld game level 3 seed 999 failed to generate: RuntimeError: no quest of that "
                              "length")  # fmt: skip
    assert not list(games_dir.glob("*seed999*"))  # nothing half-written is left in the cache
    assert isinstance(err.value, ValueError)  # the jobs print it as one error: line, exit 2


# ------------------------------------------------------------------------------------------ your own environment


def test_a_user_environment_from_a_config_name_plays_through_the_driver(qwen_like) -> None:
    from rl.episodes import specialist_rollouts

    path = "examples.guess_number:GuessNumber"
    cfg = SpecialistConfig(domain="agent", train_data="env", eval_data="env", env=path, num_eval_tasks=4)
    tasks = AGENT.eval_tasks(cfg)
    assert len(tasks) == 4 and all(t.tools and t.source == "env" for t in tasks)
    train = {t.uid for t in user_env.env_tasks(path, 50, "train")}
    assert not train & {t.uid for t in user_env.env_tasks(path, 50, "heldout")}

    def binary_search(prompts: list[list[int]], params: SamplingParams) -> list[Rollout]:
        """A policy that reads its context: the hints so far narrow the range."""
        out = []
        for p in prompts:
            low, high = 1, 100
            for guess, hint in re.findall(
                r'"number": "(\d+)".*?<tool_response>\n(\w+)', qwen_like.decode(p), re.S
            ):
                low, high = (int(guess) + 1, high) if hint == "higher" else (low, int(guess) - 1)
            text = call("guess", number=str((low + high) // 2))
            ids = (*qwen_like.encode(text, add_special_tokens=False), qwen_like.eos_token_id)
            out.append(Rollout(tuple(p), ids, (-0.5,) * len(ids), "eos", text))
        return out

    prompts = [chat_prompt_ids(qwen_like, t.prompt, t.tools) for t in tasks]
    rollouts = specialist_rollouts(
        AGENT, binary_search, qwen_like, tasks, prompts, SamplingParams(64), 8, 4096
    )
    rewards = [AGENT.score(t, r) for t, r in zip(tasks, rollouts, strict=True)]
    assert [(r.score, r.reason) for r in rewards] == [(1.0, "found")] * 4
    assert all(1 <= r.turns <= 7 and r.tool_errors == 0 for r in rollouts)
    # never a whole number: error observations until the driver's turn limit
    fifty = play(qwen_like, tasks[:1], [[call("guess", number="fifty")]], max_turns=8)[0]
    assert AGENT.score(tasks[0], fifty) == Reward(0.0, "turn_limit") and fifty.tool_errors == 8


def test_a_bad_environment_name_is_one_clear_line_before_any_work() -> None:
    from jobs import common

    with pytest.raises(ConfigValueError, match=r"specialist\.env must name your environment class"):
        SpecialistConfig(domain="agent", train_data="env", eval_data="env")
    for path, says in (("examples.nowhere:Env", "cannot import Env from examples.nowhere"),
                       ("examples.guess_number:GUESS", "GUESS has no reset or step method")):  # fmt: skip
        spec = SpecialistConfig(domain="agent", train_data="env", eval_data="env", env=path)
        with pytest.raises(common.InputError, match=says):
            common.check_data_files(spec)
    assert os.path.exists("examples/guess_number.py")


# ------------------------------------------------------------------------------- environments written for verifiers


def sum_of(task: Task) -> int:
    a, b = re.findall(r"\d+", task.prompt)
    return int(a) + int(b)


def test_a_verifiers_environment_plays_through_the_driver_and_its_rubric_scores_it(qwen_like) -> None:
    # examples/vf_arithmetic.py: a verifiers MultiTurnEnv (a second try after "not quite"), dataset + eval_dataset
    cfg = SpecialistConfig(domain="agent", train_data="verifiers", eval_data="verifiers",
                           env="examples.vf_arithmetic", num_eval_tasks=3)  # fmt: skip
    tasks = AGENT.eval_tasks(cfg)
    assert [t.source for t in tasks] == ["verifiers"] * 3 and not any(t.tools for t in tasks)
    assert len(AGENT.train_tasks(cfg)) == 500  # its dataset; the eval_dataset is held out
    prompt = qwen_like.decode(chat_prompt_ids(qwen_like, tasks[0].prompt, tasks[0].tools, tasks[0].system))
    assert prompt.startswith("<|im_start|>system\nAnswer with the number alone in <answer></answer> tags.")
    plans = [
        [f"<answer>{sum_of(tasks[0])}</answer>"],  # right at once: the env ends it (final_env_response)
        ["<answer>1</answer>", f"<answer>{sum_of(tasks[1])}</answer>"],  # right at the second try
        ["<answer>1</answer>", "<answer>2</answer>", "never asked"],  # wrong twice: its max_turns=2 ends it
    ]
    rollouts = play(qwen_like, tasks, plans)
    rewards = [AGENT.score(t, r) for t, r in zip(tasks, rollouts, strict=True)]
    assert [(r.score, r.reason) for r in rewards] == [
        (1.0, "has_final_env_response"), (0.8, "max_turns_reached"), (0.0, "max_turns_reached"),
    ]  # fmt: skip
    assert [r.turns for r in rollouts] == [1, 2, 2]
    # the environment's reply is a user turn of the template, not trained; the model's turns and their EOS are
    second = rollouts[1]
    observed = qwen_like.decode(
        [t for t, m in zip(second.response_ids, second.loss_mask, strict=True) if not m]
    )
    reply = "Not quite. Answer again in <answer> tags."
    assert observed == f"\n<|im_start|>user\n{reply}{qwen_like.eos_token}\n<|im_start|>assistant\n"
    trained = [t for t, m in zip(second.response_ids, second.loss_mask, strict=True) if m == 1]
    assert trained.count(qwen_like.eos_token_id) == 2


def test_a_single_turn_verifiers_environment_splits_its_one_dataset_by_row(qwen_like) -> None:
    from specialists.verifiers_env import verifiers_tasks

    train = verifiers_tasks("tests.vf_envs", {}, 0, "train")
    heldout = verifiers_tasks("tests.vf_envs", {}, 0, "heldout")
    assert train and heldout and len(train) + len(heldout) == 12
    assert not {t.prompt for t in train} & {t.prompt for t in heldout}
    tasks = heldout[:3]
    words = [re.findall(r"'(\w+)'", t.prompt)[0][::-1] for t in tasks]
    plans = [[f"<answer>{words[0]}</answer>"], ["<answer>x</answer>"], [words[2]]]  # right, wrong, untagged
    rollouts = play(qwen_like, tasks, plans)
    rewards = [AGENT.score(t, r) for t, r in zip(tasks, rollouts, strict=True)]
    # its rubric's own sum: exact (1.0) + 0.2 x XMLParser's format reward (1.0 tagged; 0.2 for a bare word)
    assert [r.score for r in rewards] == [pytest.approx(1.2), pytest.approx(0.2), pytest.approx(0.04)]
    assert [r.reason for r in rewards] == ["max_turns_reached"] * 3
    assert [r.turns for r in rollouts] == [1, 1, 1]


def test_a_verifiers_tool_environment_gets_calls_and_results_in_the_templates_format(qwen_like) -> None:
    from specialists.verifiers_env import verifiers_tasks

    tasks = verifiers_tasks("examples.vf_calculator", {}, 3, "heldout")  # a vf.ToolEnv: add(a, b)
    assert [t["function"]["name"] for t in json.loads(tasks[0].tools)] == ["add"]
    prompt = qwen_like.decode(chat_prompt_ids(qwen_like, tasks[0].prompt, tasks[0].tools, tasks[0].system))
    assert '"name": "add"' in prompt  # declared by the template
    pairs = [tuple(map(int, re.findall(r"\d+", t.prompt))) for t in tasks]

    def add(a: int, b: int) -> str:
        return format_tool_calls([Call("add", {"a": a, "b": b})])

    plans = [
        [add(*pairs[0]), f"<answer>{sum(pairs[0])}</answer>"],  # a call, its result, the answer
        [
            f"Two at once.\n{add(*pairs[1])}\n{add(1, 1)}",
            f"<answer>{sum(pairs[1])}</answer>",
        ],  # parallel calls
        ['<tool_call>\n{"name": "add", "arguments": {"a": 1,}}\n</tool_call>'],  # bad JSON: no call, the end
    ]
    rollouts = play(qwen_like, tasks, plans)
    rewards = [AGENT.score(t, r) for t, r in zip(tasks, rollouts, strict=True)]
    assert [(r.score, r.reason) for r in rewards] == [(1.0, "no_tools_called")] * 2 + [
        (0.0, "no_tools_called")
    ]
    assert [(r.turns, r.tool_calls, r.tool_errors) for r in rollouts] == [(2, 1, 0), (2, 1, 0), (1, 1, 1)]
    # the tools' results are the template's tool messages, two in a row for the parallel calls, not trained
    eos = qwen_like.eos_token
    observed = [qwen_like.decode([t for t, m in zip(r.response_ids, r.loss_mask, strict=True) if not m])
                for r in rollouts[:2]]  # fmt: skip
    assert (
        observed[0]
        == f"\n<|im_start|>user\n<tool_response>\n{sum(pairs[0])}\n</tool_response>{eos}\n<|im_start|>assistant\n"
    )
    assert observed[1] == (
        f"\n<|im_start|>user\n<tool_response>\n{sum(pairs[1])}\n</tool_response>\n<tool_response>\n2\n"
        f"</tool_response>{eos}\n<|im_start|>assistant\n"
    )


def test_a_verifiers_environment_that_raises_ends_its_episode_not_the_run(qwen_like) -> None:
    from specialists.verifiers_env import verifiers_tasks

    task = verifiers_tasks("tests.vf_envs", {"kind": "broken"}, 1, "heldout")[0]
    rollout = play(qwen_like, [task], [["<answer>x</answer>"]])[0]
    reward = AGENT.score(task, rollout)
    assert reward == Reward(0.0, "reward_error: environment raised RuntimeError: the environment's own bug")
    from rewards.guard import RewardErrorRateError, check_error_rate

    with pytest.raises(
        RewardErrorRateError, match="1 of 1 rewards failed"
    ):  # a broken environment stops the run
        check_error_rate([reward], 0.25, "step 1")
    assert rollout.turns == 1


def test_loading_a_verifiers_environment_keeps_the_jobs_signal_handlers() -> None:
    import signal
    import threading

    from specialists import verifiers_env

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    verifiers_env.load_env("tests.vf_envs", {"kind": "reverse"})  # not yet loaded with these arguments
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    failed: list[BaseException] = []
    thread = threading.Thread(
        target=_catch, args=(failed, verifiers_env.load_env, "tests.vf_envs", {"kind": "tools"})
    )
    thread.start()
    thread.join()
    assert isinstance(failed[0], verifiers_env.VerifiersEnvError) and "main thread" in str(failed[0])


def _catch(into: list[BaseException], fn: Callable, *args: object) -> None:
    try:
        fn(*args)
    except BaseException as err:
        into.append(err)


def test_a_verifiers_environment_we_cannot_run_is_one_clear_line_before_any_work() -> None:
    from jobs import common

    with pytest.raises(
        ConfigValueError, match=r"specialist\.env must name the verifiers environment's module"
    ):
        SpecialistConfig(domain="agent", train_data="verifiers", eval_data="verifiers", env="a:b")
    for env, args, says in (
        ("examples.nowhere", {}, "specialist.env=examples.nowhere: cannot import it (No module named "
                                 "'examples.nowhere')"),
        ("tests.vf_envs", {"kind": "fewshot"}, "a prompt must be an optional system message and one user message of "
                                               "text (few-shot prompts are not supported), got roles ['user', "
                                               "'assistant', 'user']"),
        ("tests.vf_envs", {"kind": "nope"}, "specialist.env=tests.vf_envs: load_environment(kind='nope') raised ValueError: no such kind 'nope'"),
        ("tests.vf_envs", {"colour": 1}, "raised TypeError: load_environment() got an unexpected keyword argument "
                                         "'colour'"),
    ):  # fmt: skip
        spec = SpecialistConfig(
            domain="agent", train_data="verifiers", eval_data="verifiers", env=env, env_args=args
        )
        with pytest.raises(common.InputError) as err:
            common.check_data_files(spec)
        assert says in str(err.value) and "\n" not in str(err.value)
