"""Multi-turn rollouts: the policy acts, an environment answers, until the episode ends or the turn limit.

The driver only calls an engine's ``generate(prompts, params) -> list[Rollout]``, so it works with every
rollout engine (``hf``, ``vllm``) and with ``RolloutGroup`` across workers. Each turn it generates for all
unfinished episodes at once, stopping at the tool-call stop string; each turn's text goes to its episode's
``env.step``; an observation is tokenized and appended to the context with log-prob 0 and ``loss_mask`` 0, so
it conditions later turns but is never trained. The context is built from token ids (never re-tokenized), so
the trainer's forward sees exactly the tokens the sampler saw.

Two formats. Compact (the embedded base's): a turn stops at the tool-call stop string and the observation is the
environment's text as is (``<obs>...</obs>``). Template (``render``; tasks whose tools the chat template declares):
a turn runs to its end-of-turn token like any assistant message, and the observation is written as the template's
tool message followed by the next assistant header (``rl.chat_tools.tool_result_text``). Each rollout carries
the environment's last reward and reason (``Rollout.env_reward``), the verdict of environments scored by their
own episode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
from transformers import PreTrainedTokenizerBase

from rl.chat_tools import observation_text
from rl.moe import pad_routing
from rl.types import Rollout, SamplingParams


class StepLike(Protocol):
    observation: str | tuple[str, ...]  # several: messages of the observation's role in a row
    done: bool
    reward: float
    info: dict[str, Any]


class EnvLike(Protocol):
    """What the driver needs of an environment (``specialists/agent_env.py`` defines the full interface)."""

    def step(self, action: str) -> StepLike: ...


Generate = Callable[[list[list[int]], SamplingParams], list[Rollout]]
# (tool result(s), the turn ended at EOS) -> the observation's text
Render = Callable[[str | tuple[str, ...], bool], str]


@dataclass
class Episode:
    """One episode's growing response: policy tokens (trained) interleaved with observation tokens."""

    env: EnvLike
    prompt: list[int]
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    finish: str = ""
    routing: torch.Tensor | None = None  # MoE: the last turn's (its prefill covers the earlier turns)
    render: Render | None = None  # template format: how a tool result is written; None: as the env wrote it
    last: StepLike | None = None  # the environment's last answer

    @property
    def done(self) -> bool:
        return bool(self.finish)

    def act(self, out: Rollout, tokenizer: PreTrainedTokenizerBase, room: int) -> None:
        """Take one model turn, step the environment, append its observation (if the episode goes on)."""
        self.tokens += out.response_ids
        self.routing = out.routing
        self.logprobs += out.logprobs
        self.mask += [1] * len(out.response_ids)
        self.turns += 1
        result = self.last = self.env.step(out.text)
        if result.info.get("tool") is not None or result.info.get("tool_error"):
            self.tool_calls += 1
            self.tool_errors += int(bool(result.info.get("tool_error")))
        if result.done:
            self.finish = out.finish_reason if out.finish_reason != "stop" else "eos"
            return
        if self.render is not None:
            text = self.render(result.observation, out.finish_reason == "eos")
        else:
            text = observation_text(result.observation)
        observation = tokenizer.encode(text, add_special_tokens=False)
        if out.finish_reason == "length" or len(observation) >= room:
            self.finish = "length"  # no room left for the observation and another turn
            return
        self.tokens += observation
        self.logprobs += [0.0] * len(observation)
        self.mask += [0] * len(observation)

    def reason(self) -> str:
        """Why the episode ended: the environment's reason, or where the driver cut it."""
        if self.last is not None and self.last.done:
            return str(self.last.info.get("reason", "done"))
        return "length" if self.finish == "length" else "turn_limit"

    def rollout(self, tokenizer: PreTrainedTokenizerBase) -> Rollout:
        return Rollout(
            prompt_ids=tuple(self.prompt),
            response_ids=tuple(self.tokens),
            logprobs=tuple(self.logprobs),
            finish_reason=self.finish or "turn_limit",
            text=str(tokenizer.decode(self.tokens, skip_special_tokens=True)),
            loss_mask=tuple(self.mask),
            turns=self.turns,
            tool_calls=self.tool_calls,
            tool_errors=self.tool_errors,
            env_reward=None if self.last is None else float(self.last.reward),
            env_reason=self.reason(),
            routing=None
            if self.routing is None
            else pad_routing(self.routing, len(self.prompt) + len(self.tokens)),
        )


def multi_turn_rollouts(
    generate: Generate,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    envs: list[EnvLike],
    params: SamplingParams,
    max_turns: int,
    tool_stop: str,
    max_response_tokens: int,
    renders: Sequence[Render | None] | None = None,
) -> list[Rollout]:
    """One episode per (prompt, env), in order. ``params.max_new_tokens`` bounds each turn and
    ``max_response_tokens`` the whole response (policy and observation tokens together). ``tool_stop``: where a
    turn stops to call a tool (compact episodes); ``renders``: per episode, how the template format writes its
    observations (None: a compact episode)."""
    if len(prompts) != len(envs):
        raise ValueError(f"{len(prompts)} prompts but {len(envs)} environments")
    renders = renders or [None] * len(prompts)
    episodes = [Episode(env, list(p), render=r) for p, env, r in zip(prompts, envs, renders, strict=True)]
    stop = (
        (tool_stop,) if tool_stop and None in renders else ()
    )  # template turns end at their end-of-turn token
    for turn in range(max_turns):
        for episode in episodes:
            if not episode.done and len(episode.tokens) >= max_response_tokens:
                episode.finish = "length"
        active = [e for e in episodes if not e.done]
        if not active:
            break
        room = min(max_response_tokens - len(e.tokens) for e in active)
        turn_params = replace(
            params,
            max_new_tokens=max(1, min(params.max_new_tokens, room)),
            stop=(*params.stop, *stop),
            seed=params.seed * 7919 + turn,
        )
        outs = generate([e.prompt + e.tokens for e in active], turn_params)
        for episode, out in zip(active, outs, strict=True):
            episode.act(out, tokenizer, max_response_tokens - len(episode.tokens) - len(out.response_ids))
    return [e.rollout(tokenizer) for e in episodes]
