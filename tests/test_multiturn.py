"""The multi-turn rollout driver: observations masked and aligned, turn and length limits, any engine.

The scripted-policy tests drive it with a ``generate`` that plays the environment's correct plan (the policy
is what varies between tests, not a stand-in for an engine); the engine tests run the real hf engine.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from rl.batching import build_train_batch
from rl.config import RolloutConfig
from rl.models import load_tokenizer
from rl.rollout.hf import HFEngine
from rl.rollout.multiturn import multi_turn_rollouts
from rl.sft import chat_prompt_ids
from rl.types import Rollout, SamplingParams
from specialists.agent_env import TOOL_STOP, agent_tasks, make_env, score_agent, scripted_actions


@pytest.fixture(scope="module")
def tokenizer(tiny_base: Path):
    return load_tokenizer(str(tiny_base))


def scripted(tokenizer, plans: list[list[str]]):
    """A policy that plays ``plans[i][turn]`` for episode i (identified by its prompt) on every call."""
    turns: dict[tuple[int, ...], int] = {}
    by_prompt: dict[tuple[int, ...], list[str]] = {}

    def generate(prompts: list[list[int]], params: SamplingParams) -> list[Rollout]:
        assert TOOL_STOP in params.stop
        out = []
        for p in prompts:
            key = next(k for k in by_prompt if tuple(p[: len(k)]) == k)
            text = by_prompt[key][turns[key]]
            turns[key] += 1
            full = tokenizer.encode(text, add_special_tokens=False)
            ids = full[: params.max_new_tokens]
            finish = "length" if len(ids) < len(full) else "stop" if text.endswith(TOOL_STOP) else "eos"
            out.append(Rollout(tuple(p), tuple(ids), tuple([-0.5] * len(ids)), finish, tokenizer.decode(ids)))
        return out

    return generate, turns, by_prompt


def run(tokenizer, tasks, plans, max_turns=6, budget=400, max_new=64):
    generate, turns, by_prompt = scripted(tokenizer, plans)
    prompts = [chat_prompt_ids(tokenizer, t.prompt) for t in tasks]
    for p, plan in zip(prompts, plans, strict=True):
        by_prompt[tuple(p)], turns[tuple(p)] = plan, 0
    envs = [make_env(t) for t in tasks]
    params = SamplingParams(max_new_tokens=max_new, temperature=1.0)
    return multi_turn_rollouts(generate, tokenizer, prompts, envs, params, max_turns, TOOL_STOP, budget)


def test_correct_plans_score_one_with_observations_masked_out(tokenizer) -> None:
    tasks = [t for level in (1, 2, 3) for t in agent_tasks(2, "train", seed=3, levels=(level,))]
    rollouts = run(tokenizer, tasks, [scripted_actions(t) for t in tasks])
    for task, r in zip(tasks, rollouts, strict=True):
        assert score_agent(task, r.text).score == 1.0, r.text
        assert r.turns == len(scripted_actions(task)) and r.tool_calls == r.turns - 1 and r.tool_errors == 0
        assert r.finish_reason == "eos" and len(r.loss_mask) == len(r.response_ids) == len(r.logprobs)
        # masked spans are exactly the observations, with log-prob 0; policy tokens keep theirs
        observed = [tok for tok, m in zip(r.response_ids, r.loss_mask, strict=True) if m == 0]
        assert tokenizer.decode(observed).count("<obs>") == r.tool_calls
        assert all((lp == 0.0) == (m == 0) for lp, m in zip(r.logprobs, r.loss_mask, strict=True))
    batch = build_train_batch(rollouts, [1.0] * len(rollouts), int(tokenizer.pad_token_id))
    for b, r in enumerate(rollouts):  # the trainer's mask and advantages follow the policy tokens only
        start = len(r.prompt_ids)
        assert batch.loss_mask_BT[b, start : start + len(r.response_ids)].tolist() == list(
            map(float, r.loss_mask)
        )
        assert float(batch.advantages_BT[b].sum()) == sum(r.loss_mask)


def test_malformed_calls_get_error_observations_and_the_turn_limit_ends_the_episode(tokenizer) -> None:
    task = agent_tasks(1, "train", seed=5, levels=(2,))[0]
    bad = ['<tool>{"name": "lookup", "arg": }</tool>', '<tool>{"name": "search", "arg": "x"}</tool>']
    (r,) = run(tokenizer, [task], [bad * 3], max_turns=4)
    assert r.finish_reason == "turn_limit" and r.turns == 4
    assert r.tool_calls == 4 and r.tool_errors == 4 and "error:" in r.text
    assert score_agent(task, r.text).score == 0.0


def test_the_response_budget_bounds_the_episode(tokenizer) -> None:
    task = agent_tasks(1, "train", seed=7, levels=(3,))[0]
    (r,) = run(tokenizer, [task], [scripted_actions(task)], budget=40)
    assert r.finish_reason == "length" and len(r.response_ids) <= 40 + 64


def test_the_hf_engine_runs_episodes_whose_masks_align_with_its_tokens(tiny_base: Path, tokenizer) -> None:
    engine = HFEngine.from_path(str(tiny_base), RolloutConfig())
    tasks = agent_tasks(6, "heldout", seed=0)
    prompts = [chat_prompt_ids(tokenizer, t.prompt) for t in tasks]
    params = SamplingParams(max_new_tokens=24, temperature=1.0, seed=1)
    rollouts = multi_turn_rollouts(engine.generate, tokenizer, prompts, [make_env(t) for t in tasks], params,
                                   max_turns=3, tool_stop=TOOL_STOP, max_response_tokens=120)  # fmt: skip
    for r in rollouts:
        assert 1 <= r.turns <= 3 and len(r.loss_mask) == len(r.response_ids) <= 120 + 24
        assert r.finish_reason in {"eos", "length", "turn_limit"}
        assert sum(r.loss_mask) >= r.turns  # every turn produced at least one policy token


def test_moe_episodes_carry_the_experts_of_every_position_the_last_turn_routed(tokenizer) -> None:
    """The last turn's prefill routes every earlier turn and observation, so an episode keeps that turn's routing,
    padded with -1 over what came after it (the last token, a final observation). Here an engine's routing is
    coded by position: position t routed to expert t."""
    import torch

    generate, turns, by_prompt = scripted(tokenizer, [])
    task = agent_tasks(1, "train", seed=3, levels=(2,))[0]
    prompt = chat_prompt_ids(tokenizer, task.prompt)
    by_prompt[tuple(prompt)], turns[tuple(prompt)] = scripted_actions(task), 0
    fed: list[int] = []

    def with_routing(prompts: list[list[int]], params: SamplingParams) -> list[Rollout]:
        assert params.record_routing
        outs = generate(prompts, params)
        fed.append(len(prompts[0]) + len(outs[0].response_ids) - 1)  # positions this call routed
        routing = torch.arange(fed[-1] + 1, dtype=torch.int16)[:, None, None]
        return [
            replace(outs[0], routing=torch.cat([routing[:-1], torch.full((1, 1, 1), -1, dtype=torch.int16)]))
        ]

    params = SamplingParams(max_new_tokens=64, temperature=1.0, record_routing=True)
    (r,) = multi_turn_rollouts(with_routing, tokenizer, [prompt], [make_env(task)], params, 6, TOOL_STOP, 400)
    assert r.turns == len(fed) >= 2 and r.routing is not None
    assert len(r.routing) == len(r.prompt_ids) + len(r.response_ids)
    assert r.routing[: fed[-1], 0, 0].tolist() == list(range(fed[-1]))  # the last turn's routing, whole
    assert bool((r.routing[fed[-1] :] == -1).all())
