"""Supervised fine-tuning on (prompt, completion) demonstrations: what ``jobs.make_base`` uses.

Loss is the token-mean cross-entropy over completion tokens only (the prompt is context, not target).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from rl.chat_tools import tool_messages
from rl.models import token_id
from rl.types import Task


def chat_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: str, tools: str = "", system: str = ""
) -> list[int]:
    """Token ids of a user message under the tokenizer's chat template, ready for the assistant turn; ``tools``
    (a JSON list of function schemas) as the template declares them (``rl.chat_tools``); ``system``: a system
    message first, where the task has one."""
    messages, tool_list = tool_messages(prompt, tools, tokenizer, system)
    ids = tokenizer.apply_chat_template(
        messages, tools=tool_list, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return list(ids)  # type: ignore[arg-type]


def longest_prompt(tokenizer: PreTrainedTokenizerBase, tasks: Sequence[Task]) -> tuple[Task, int]:
    """The task with the longest text (question and tool schemas) and its chat prompt's length in tokens."""
    longest = max(tasks, key=lambda t: len(t.prompt) + len(t.tools) + len(t.system))
    return longest, len(chat_prompt_ids(tokenizer, longest.prompt, longest.tools, longest.system))


def encode_demo(
    tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str | list[tuple[str, bool]]
) -> tuple[list[int], list[int]]:
    """(input ids, loss mask) for one demonstration: the completion and its EOS are trained.

    A completion given as segments ``[(text, trained), ...]`` (a multi-turn transcript) is tokenized segment by
    segment, as the multi-turn rollout driver builds its context, and only ``trained`` segments are targets.
    """
    segments = [(completion, True)] if isinstance(completion, str) else completion
    ids = chat_prompt_ids(tokenizer, prompt)
    mask = [0] * len(ids)
    for text, trained in segments:
        piece = tokenizer.encode(text, add_special_tokens=False)
        ids += piece
        mask += [int(trained)] * len(piece)
    return [*ids, token_id(tokenizer, "eos")], [*mask, 1]


def _pad(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, ...]:
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.float32)
    for r, (row_ids, row_mask) in enumerate(rows):
        ids[r, : len(row_ids)] = torch.tensor(row_ids)
        attn[r, : len(row_ids)] = 1
        mask[r, : len(row_mask)] = torch.tensor(row_mask, dtype=torch.float32)
    return ids, attn, mask


def batch_order(order: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch of batches: ``order`` is shuffled in place and cut into batches; the remainder under a full
    batch is left out."""
    rng.shuffle(order)
    return [order[s : s + batch_size] for s in range(0, len(order) - batch_size + 1, batch_size)]


def batches(
    examples: Sequence[tuple[list[int], list[int]]], batch_size: int, pad_id: int, rng: random.Random
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Endless shuffled batches of right-padded (input_ids, attention_mask, loss_mask)."""
    order = list(range(len(examples)))
    while True:
        for rows in batch_order(order, batch_size, rng):
            yield _pad([examples[i] for i in rows], pad_id)


def sft_loss(
    model: torch.nn.Module, ids: torch.Tensor, attn: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Token-mean next-token cross-entropy over positions where ``mask`` marks the target token; an MoE model
    adds its router's load-balancing loss (``router_aux_loss_coef``), so SFT does not send every token to the
    same few experts."""
    config = getattr(model, "config", None)
    moe = bool(getattr(config, "num_experts", 0))
    out = model(input_ids=ids, attention_mask=attn, **({"output_router_logits": True} if moe else {}))
    logits = out.logits[:, :-1].float()
    target_mask = mask[:, 1:]
    nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    loss = (nll * target_mask).sum() / target_mask.sum().clamp_min(1)
    if moe and getattr(out, "aux_loss", None) is not None:
        loss = loss + config.router_aux_loss_coef * out.aux_loss  # type: ignore[union-attr]
    return loss


def sft_backward(
    model: torch.nn.Module, ids: torch.Tensor, attn: torch.Tensor, mask: torch.Tensor, micro_batches: int = 1
) -> float:
    """Backward of ``sft_loss`` over the batch, in ``micro_batches`` chunks of rows sorted by length, each cut
    to its own longest row: the same gradient (the token mean is over the whole batch) with far less padding
    when a batch mixes short and long demonstrations. Returns the loss."""
    lengths = attn.sum(dim=1)
    order = torch.argsort(lengths)
    total = mask[:, 1:].sum().clamp_min(1)
    loss = 0.0
    for rows in torch.tensor_split(order, micro_batches):
        if rows.numel() == 0:
            continue
        width = int(lengths[rows].max())
        part = sft_loss(model, ids[rows, :width], attn[rows, :width], mask[rows, :width])
        scaled = part * mask[rows, 1:width].sum().clamp_min(1) / total
        scaled.backward()
        loss += float(scaled.detach())
    return loss
