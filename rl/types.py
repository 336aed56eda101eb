"""Frozen dataclasses that cross process boundaries (controller <-> Ray actors).

Token-aligned tensors follow one convention: index ``t`` of a ``*_BT`` tensor describes token
``input_ids_BT[b, t]``; a log-prob at ``t`` is ``log pi(input_ids[t] | input_ids[:t])`` and is 0 at ``t = 0``
and on padding. Masks are 1 where a token is trained (generated response tokens) and 0 elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rewards.types import Reward as Reward  # defined below rl/, so the graders need no torch


@dataclass(frozen=True)
class Task:
    """One prompt together with what its reward needs."""

    uid: str  # stable id, e.g. "gsm8k/test/17" or "synthetic/train/3"
    domain: str  # "math" | "code" | "agent": routes the reward (and, in OPD, the teacher)
    prompt: str  # the user message, without chat formatting
    answer: str  # reference the reward checks against (a math answer, tests, a goal)
    source: str  # dataset name, e.g. "synthetic", "gsm8k", "math500"
    level: int = 0  # difficulty level where the source has one (synthetic: 1..3)
    # function-calling tasks: a JSON list of the tools' schemas, declared by the chat template
    tools: str = ""
    # a system message before the user's (environments that bring their own: verifiers')
    system: str = ""


@dataclass(frozen=True)
class SamplingParams:
    """How a rollout engine samples. ``temperature == 0`` means greedy."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0  # nucleus mass kept; 1.0 = off
    top_k: int = 0  # keep the k most likely tokens; 0 = off
    stop: tuple[str, ...] = ()  # stop strings (checked on decoded text); EOS always stops
    seed: int = 0  # seeds the engine's sampling generator for this call
    ignore_eos: bool = False  # generate exactly max_new_tokens (benchmarks); stop strings still stop
    record_routing: bool = False  # MoE models: each rollout carries its tokens' experts (training rollouts)


@dataclass(frozen=True)
class Rollout:
    """One sampled completion of one prompt."""

    prompt_ids: tuple[int, ...]  # chat-formatted prompt tokens
    response_ids: tuple[int, ...]  # generated tokens, EOS included when it was sampled
    logprobs: tuple[float, ...]  # sampling policy's log-prob of each response token (temperature-scaled)
    finish_reason: str  # "eos" | "stop" | "length" | "turn_limit" (multi-turn)
    text: str  # decoded response, special tokens removed
    # Multi-turn episodes (rl/rollout/multiturn.py): the response interleaves the policy's tokens with
    # environment observations, which carry log-prob 0 and loss_mask 0 (never trained).
    loss_mask: tuple[int, ...] = ()  # per response token, 1 = sampled by the policy; () = all 1
    turns: int = 1  # model turns in the episode
    tool_calls: int = 0  # turns that ended in a tool call
    tool_errors: int = 0  # tool calls the environment answered with an error
    # the environment's own verdict on the episode (its last StepResult): the reward, and why (``turn_limit``
    # or ``length`` where the episode was cut before the environment ended it); None for single-turn samples
    env_reward: float | None = None
    env_reason: str = ""
    # MoE models: the experts the rollout routed each position to, [prompt + response, MoE layers, top-k] int16,
    # -1 where it routed none (the last sampled token); None for dense models and engines that do not record
    routing: torch.Tensor | None = field(default=None, compare=False)

    def trained_mask(self) -> tuple[int, ...]:
        """``loss_mask``, with the single-turn default (every response token trained) spelled out."""
        return self.loss_mask or (1,) * len(self.response_ids)


@dataclass(frozen=True)
class TrainBatch:
    """Right-padded token sequences with per-token training signals, shape [B, T] unless noted."""

    input_ids_BT: torch.Tensor  # int64 prompt + response tokens, right padded with pad_id
    attention_mask_BT: torch.Tensor  # int64, 1 on real tokens
    loss_mask_BT: torch.Tensor  # float32, 1 on response tokens that are trained
    advantages_BT: torch.Tensor  # float32, the sequence's advantage broadcast over its response tokens
    rollout_logprobs_BT: torch.Tensor  # float32, sampler's log-probs on response tokens, 0 elsewhere
    old_logprobs_BT: torch.Tensor | None = None  # trainer's log-probs before this step's first update;
    # None = fully on-policy (one optimizer step per batch): the current forward, detached, is used
    routing_BTLK: torch.Tensor | None = None  # int16 [B, T, MoE layers, top-k]: the rollout's experts per
    # token (Rollout.routing), -1 on padding and unrouted positions; None for dense models

    @property
    def num_sequences(self) -> int:
        return int(self.input_ids_BT.shape[0])

    @property
    def num_tokens(self) -> int:
        """Trained (response) tokens in the batch."""
        return int(self.loss_mask_BT.sum().item())

    def to(self, device: torch.device | str) -> TrainBatch:
        """Every field on ``device`` (no copy where it is there already)."""
        return TrainBatch(
            input_ids_BT=self.input_ids_BT.to(device),
            attention_mask_BT=self.attention_mask_BT.to(device),
            loss_mask_BT=self.loss_mask_BT.to(device),
            advantages_BT=self.advantages_BT.to(device),
            rollout_logprobs_BT=self.rollout_logprobs_BT.to(device),
            old_logprobs_BT=None if self.old_logprobs_BT is None else self.old_logprobs_BT.to(device),
            routing_BTLK=None if self.routing_BTLK is None else self.routing_BTLK.to(device),
        )

    def select(self, index: slice | torch.Tensor) -> TrainBatch:
        """Rows ``index`` of every field (a micro-batch or a rank's shard)."""
        return TrainBatch(
            input_ids_BT=self.input_ids_BT[index],
            attention_mask_BT=self.attention_mask_BT[index],
            loss_mask_BT=self.loss_mask_BT[index],
            advantages_BT=self.advantages_BT[index],
            rollout_logprobs_BT=self.rollout_logprobs_BT[index],
            old_logprobs_BT=None if self.old_logprobs_BT is None else self.old_logprobs_BT[index],
            routing_BTLK=None if self.routing_BTLK is None else self.routing_BTLK[index],
        )

    def trimmed(self) -> TrainBatch:
        """The columns up to the longest row's last real token: a micro-batch of short rows drops the padding
        its batch has for longer ones (rows are right padded), which the forward would otherwise run on."""
        width = int(self.attention_mask_BT.sum(1).max()) if self.num_sequences else 0
        if width == self.input_ids_BT.shape[1]:
            return self
        cut = slice(None, width)
        return TrainBatch(
            input_ids_BT=self.input_ids_BT[:, cut],
            attention_mask_BT=self.attention_mask_BT[:, cut],
            loss_mask_BT=self.loss_mask_BT[:, cut],
            advantages_BT=self.advantages_BT[:, cut],
            rollout_logprobs_BT=self.rollout_logprobs_BT[:, cut],
            old_logprobs_BT=None if self.old_logprobs_BT is None else self.old_logprobs_BT[:, cut],
            routing_BTLK=None if self.routing_BTLK is None else self.routing_BTLK[:, cut],
        )


@dataclass(frozen=True)
class LossNormalizer:
    """Global counts over the whole optimizer-step batch (all ranks, all micro-batches).

    Aggregations divide by these instead of per-micro-batch counts, so summing micro-batch losses over
    gradient accumulation and ranks gives exactly the loss of the full batch.
    """

    num_tokens: int  # trained tokens in the global batch
    num_sequences: int  # sequences in the global batch
    max_response_tokens: int  # the constant of seq-mean-token-sum (Dr. GRPO): the generation limit


@dataclass(frozen=True)
class DistillPart:
    """The student's rollouts routed to one teacher, for one trainer rank (on-policy distillation).

    The teacher's hidden states for these rows travel beside it (a separate argument, so Ray hands them from
    the teacher actor to the trainer without passing through the controller): [N, D], one row per position
    ``t`` with ``loss_mask_BT[b, t + 1] == 1`` (the state that predicts a trained token), rows in order.
    """

    teacher: str  # registry name of the teacher (metrics are keyed by it)
    batch: TrainBatch  # the sequences; advantages_BT unused (zeros)
    weight: float  # the teacher's loss weight w_e


def predicting_mask(loss_mask_BT: torch.Tensor) -> torch.Tensor:
    """[B, T-1] bool: positions whose hidden state predicts a trained token (the OPD positions)."""
    return loss_mask_BT[:, 1:] > 0
