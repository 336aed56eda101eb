"""The ``hf`` rollout engine: batched sampling from a transformers causal LM with a KV cache.

One decode loop, written here rather than ``model.generate`` so that the per-token log-prob of the
sampling policy is taken at each step (no [steps x vocab] score tensor is ever kept) and so the loop can
later run packed-FP4 linears and a static cache. The log-prob recorded for a sampled token is
``log_softmax(logits / temperature)[token]`` -- the distribution the trainer's forward computes at the same
temperature -- before top-k/top-p truncation (which only decides what may be sampled).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase

from rl.models import token_id
from rl.types import Rollout, SamplingParams


def filter_logits(logits_BV: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf (the most likely token is kept)."""
    if top_k > 0 and top_k < logits_BV.shape[-1]:
        kth = torch.topk(logits_BV, top_k, dim=-1).values[..., -1:]
        logits_BV = logits_BV.masked_fill(logits_BV < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits_BV, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the mass before it already reaches top_p
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits_BV = logits_BV.masked_fill(drop, float("-inf"))
    return logits_BV


def sample_tokens(
    logits_BV: torch.Tensor, params: SamplingParams, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens [B] and their log-probs [B] under ``logits / temperature`` (greedy at temperature 0)."""
    logits_BV = logits_BV.float()
    if params.temperature == 0:
        tokens_B = logits_BV.argmax(-1)
        return tokens_B, logits_BV.log_softmax(-1).gather(-1, tokens_B[:, None])[:, 0]
    scaled_BV = logits_BV / params.temperature
    probs_BV = filter_logits(scaled_BV, params.top_k, params.top_p).softmax(-1)
    tokens_B = torch.multinomial(probs_BV, 1, generator=generator)[:, 0]
    return tokens_B, scaled_BV.log_softmax(-1).gather(-1, tokens_B[:, None])[:, 0]


class HFEngine:
    """Samples completions from a transformers model held in this process."""

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, max_batch_size: int = 64):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.eos_ids = {token_id(tokenizer, "eos")}
        config_eos = getattr(model.config, "eos_token_id", None)
        self.eos_ids |= set(
            config_eos if isinstance(config_eos, list) else [config_eos] if config_eos else []
        )
        self.pad_id = (
            token_id(tokenizer, "pad") if tokenizer.pad_token_id is not None else token_id(tokenizer, "eos")
        )

    def load_weights(
        self, state_dict: dict[str, torch.Tensor], packed_modules: frozenset[str] | set[str] = frozenset()
    ) -> None:
        """Replace the model's weights in place (names as in ``model.state_dict()``); the buffers of
        ``packed_modules`` (FP4 linears, updated separately) may be absent."""
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        missing = [k for k in missing if k.rpartition(".")[0] not in packed_modules]
        if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:
            raise ValueError(
                f"weight update does not match the model: missing={missing}, unexpected={unexpected}"
            )

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Rollout]:
        """One completion per prompt, in order; prompts are chat-formatted token ids."""
        generator = torch.Generator().manual_seed(params.seed)
        rollouts: list[Rollout] = []
        for start in range(0, len(prompts), self.max_batch_size):
            rollouts += self._generate_batch(prompts[start : start + self.max_batch_size], params, generator)
        return rollouts

    def _generate_batch(
        self, prompts: list[list[int]], params: SamplingParams, generator: torch.Generator
    ) -> list[Rollout]:
        batch, width = len(prompts), max(len(p) for p in prompts)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((batch, width), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding keeps every row's last token at the end
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
            attention[row, width - len(prompt) :] = 1
        positions = (attention.cumsum(-1) - 1).clamp_min(0)
        cache = DynamicCache()
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        tokens: list[list[int]] = [[] for _ in range(batch)]
        logprobs: list[list[float]] = [[] for _ in range(batch)]
        finish = ["length"] * batch
        done = torch.zeros(batch, dtype=torch.bool)
        next_pos = positions[:, -1:] + 1
        for _ in range(params.max_new_tokens):
            next_B, logprob_B = sample_tokens(out.logits[:, -1], params, generator)
            for row in (~done).nonzero()[:, 0].tolist():
                tokens[row].append(int(next_B[row]))
                logprobs[row].append(float(logprob_B[row]))
                reason = self._stop_reason(tokens[row], params.stop)
                if reason:
                    finish[row], done[row] = reason, True
            if bool(done.all()):
                break
            next_B = next_B.masked_fill(done, self.pad_id)
            attention = torch.cat([attention, (~done).long()[:, None]], dim=1)
            out = self.model(
                input_ids=next_B[:, None],
                attention_mask=attention,
                position_ids=next_pos,
                past_key_values=cache,
                use_cache=True,
            )
            next_pos = next_pos + 1
        return [
            self._rollout(p, t, lp, f) for p, t, lp, f in zip(prompts, tokens, logprobs, finish, strict=True)
        ]

    def _stop_reason(self, tokens: list[int], stop: tuple[str, ...]) -> str | None:
        if tokens[-1] in self.eos_ids:
            return "eos"
        if stop:
            tail = str(self.tokenizer.decode(tokens[-16:], skip_special_tokens=True))
            if any(s in tail for s in stop):
                return "stop"
        return None

    def _rollout(self, prompt: list[int], tokens: list[int], logprobs: list[float], finish: str) -> Rollout:
        return Rollout(
            prompt_ids=tuple(prompt),
            response_ids=tuple(tokens),
            logprobs=tuple(logprobs),
            finish_reason=finish,
            text=str(self.tokenizer.decode(tokens, skip_special_tokens=True)),
        )
