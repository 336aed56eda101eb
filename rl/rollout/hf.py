"""The ``hf`` rollout engine: batched sampling from a transformers causal LM with a KV cache.

Two decode loops, written here rather than ``model.generate`` so that the per-token log-prob of the
sampling policy is taken at each step (no [steps x vocab] score tensor is ever kept) and the linears can be
packed FP4:

* ``dynamic``: the model's own forward with a growing ``DynamicCache``, one host round-trip per token (CPU
  default; any causal LM).
* ``static``: ``rl.rollout.static_decode`` -- preallocated KV cache and, on GPU, one CUDA graph replay per
  token (GPU default for Llama/Qwen-style models).

Both sample through ``rl.rollout.sampling`` (filtering, the draw, the recorded log-prob).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase

from rl.config import FP4, RolloutConfig
from rl.fp4.packed import PackedFP4Experts, PackedFP4Linear, PackedModule, pack_linears
from rl.fp4.qat import qat_linear_names
from rl.models import load_model, load_tokenizer, token_id
from rl.moe import RoutingTap, decode_routing, routers
from rl.rollout.sampling import sample_tokens
from rl.rollout.static_decode import StaticDecoder, supports
from rl.types import Rollout, SamplingParams

DECODE_MODES = ("auto", "static", "dynamic")
STOP_TAIL = 16  # tokens decoded to look for stop strings after each new token


class HFEngine:
    """Samples completions from a transformers model held in this process.

    With FP4 (``from_path(..., fp4=...)``) the linears inside transformer blocks hold packed codes + scales
    only and compute with a dequantizing matmul (``fp4_mode == "packed"``). An MoE model's rollouts record the
    experts each token was routed to (``Rollout.routing``, for the trainer's routing replay) when asked
    (``SamplingParams.record_routing``: training rollouts, not evals).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        max_batch_size: int = 64,
        packed_names: list[str] | None = None,
        decode: str = "auto",
    ):
        self.model = model.eval()
        self.packed_names = packed_names or []
        self.fp4_mode = "packed" if self.packed_names else "none"
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
        self.decode = self._decode_mode(decode)
        self.records_routing = bool(routers(model))  # MoE: rollouts can carry their experts (routing replay)
        self.static = StaticDecoder(model, self.pad_id, self.eos_ids) if self.decode == "static" else None

    def _decode_mode(self, decode: str) -> str:
        """``auto`` is static on GPU where the architecture is supported, dynamic otherwise."""
        if decode not in DECODE_MODES:
            raise ValueError(f"unknown rollout.decode {decode!r}; valid: {', '.join(DECODE_MODES)}")
        unsupported = supports(self.model)
        if decode == "static" and unsupported:
            raise ValueError(f"rollout.decode=static: {unsupported}; use rollout.decode=dynamic")
        if decode == "auto":
            on_gpu = next(self.model.parameters()).is_cuda
            return "static" if on_gpu and not unsupported else "dynamic"
        return decode

    @classmethod
    def from_path(
        cls, model_path: str, cfg: RolloutConfig, dtype: str = "float32", fp4: FP4 | None = None
    ) -> HFEngine:
        """The engine for a model directory; with ``fp4`` its block linears are packed (no high-precision copy)."""
        model = load_model(model_path, dtype)
        if torch.cuda.is_available():
            model = model.cuda()
        names = qat_linear_names(model, fp4) if fp4 else []
        if fp4:
            pack_linears(model, names, fp4)
        return cls(model, load_tokenizer(model_path), max_batch_size=cfg.max_batch_size, packed_names=names,
                   decode=cfg.decode)  # fmt: skip

    def load_weights(self, state: dict[str, Any]) -> None:
        """Replace the weights in place: dense tensors by ``model.state_dict()`` name, FP4 entries (what the
        trainer exports for its QAT linears and MoE experts) into the packed modules."""
        dense = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        packed = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
        expected = {f"{n}.{p}" for n in self.packed_names for p in self._packed(n).params}
        if set(packed) != expected:
            raise ValueError(f"packed weights {sorted(packed)} do not match this engine's FP4 modules")
        for key, quantized in packed.items():
            name, _, param = key.rpartition(".")
            self._packed(name).load_quantized(quantized, param)
        missing, unexpected = self.model.load_state_dict(dense, strict=False)
        inside_packed = tuple(f"{n}." for n in self.packed_names)  # their codes and scales came above
        missing = [k for k in missing if not k.startswith(inside_packed)]
        if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:
            raise ValueError(
                f"weight update does not match the model: missing={missing}, unexpected={unexpected}"
            )

    def _packed(self, name: str) -> PackedModule:
        module = self.model.get_submodule(name)
        assert isinstance(module, PackedFP4Linear | PackedFP4Experts), name
        return module

    def served_weights(self) -> dict[str, torch.Tensor]:
        """What each FP4 module multiplies by (float32), keyed like the trainer's weights."""
        return {
            f"{n}.{p}": self._packed(n).served(p) for n in self.packed_names for p in self._packed(n).params
        }

    def memory_report(self) -> dict[str, int]:
        """Bytes held by the FP4 modules, and what the same weights would take in bf16."""
        modules = [self._packed(n) for n in self.packed_names]
        return {"packed_bytes": sum(m.weight_nbytes() for m in modules),
                "bf16_bytes": sum(m.bf16_nbytes() for m in modules)}  # fmt: skip

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Rollout]:
        """One completion per prompt, in order; prompts are chat-formatted token ids."""
        generator = torch.Generator(next(self.model.parameters()).device).manual_seed(params.seed)
        rollouts: list[Rollout] = []
        for start in range(0, len(prompts), self.max_batch_size):
            chunk = prompts[start : start + self.max_batch_size]
            if self.static is not None:
                rollouts += self._generate_static(chunk, replace(params, seed=params.seed + start))
            else:
                rollouts += self._generate_batch(chunk, params, generator)
        return rollouts

    def _generate_static(self, prompts: list[list[int]], params: SamplingParams) -> list[Rollout]:
        assert self.static is not None
        stops = StopScan(self, params, len(prompts))
        tokens_Bn, logprobs_Bn = self.static.generate(prompts, params, stops if params.stop else None)
        rollouts = []
        for row, prompt in enumerate(prompts):
            tokens = tokens_Bn[row].tolist()
            end, reason = stops.first_stop(row, tokens) or (len(tokens), "length")
            rollouts.append(self._rollout(prompt, tokens[:end], logprobs_Bn[row, :end].tolist(), reason))
        return rollouts

    def _generate_batch(
        self, prompts: list[list[int]], params: SamplingParams, generator: torch.Generator
    ) -> list[Rollout]:
        tap = RoutingTap(self.model) if self.records_routing and params.record_routing else None
        with tap or nullcontext():
            tokens, logprobs, finish = self._decode(prompts, params, generator)
        routing = (
            decode_routing(tap.calls, [len(p) for p in prompts], [len(t) for t in tokens])
            if tap
            else [None] * len(prompts)
        )
        return [
            self._rollout(p, t, lp, f, r)
            for p, t, lp, f, r in zip(prompts, tokens, logprobs, finish, routing, strict=True)
        ]

    def _decode(
        self, prompts: list[list[int]], params: SamplingParams, generator: torch.Generator
    ) -> tuple[list[list[int]], list[list[float]], list[str]]:
        """The dynamic loop: (tokens, log-probs, finish reason) per prompt."""
        batch, width = len(prompts), max(len(p) for p in prompts)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((batch, width), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding keeps every row's last token at the end
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
            attention[row, width - len(prompt) :] = 1
        device = next(self.model.parameters()).device
        input_ids, attention = input_ids.to(device), attention.to(device)
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
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        next_pos = positions[:, -1:] + 1
        for _ in range(params.max_new_tokens):
            next_B, logprob_B = sample_tokens(out.logits[:, -1], params, generator)
            for row in (~done).nonzero()[:, 0].tolist():
                tokens[row].append(int(next_B[row]))
                logprobs[row].append(float(logprob_B[row]))
                reason = self._stop_reason(tokens[row], params)
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
        return tokens, logprobs, finish

    def _stop_reason(self, tokens: list[int], params: SamplingParams) -> str | None:
        """Why a completion ends at its last token: EOS (unless ignored), a stop string, or not at all."""
        if tokens[-1] in self.eos_ids and not params.ignore_eos:
            return "eos"
        if params.stop:
            tail = str(self.tokenizer.decode(tokens[-STOP_TAIL:], skip_special_tokens=True))
            if any(s in tail for s in params.stop):
                return "stop"
        return None

    def _rollout(
        self,
        prompt: list[int],
        tokens: list[int],
        logprobs: list[float],
        finish: str,
        routing: torch.Tensor | None = None,
    ) -> Rollout:
        return Rollout(
            prompt_ids=tuple(prompt),
            response_ids=tuple(tokens),
            logprobs=tuple(logprobs),
            finish_reason=finish,
            text=str(self.tokenizer.decode(tokens, skip_special_tokens=True)),
            routing=routing,
        )


class StopScan:
    """Where each row of a static-decode batch ends, by the dynamic loop's per-token rule; scans each token
    once across the decoder's host syncs (the ``stop_check`` it calls) and the final cut."""

    def __init__(self, engine: HFEngine, params: SamplingParams, rows: int):
        self.engine, self.params = engine, params
        self.scanned = [0] * rows
        self.found: dict[int, tuple[int, str]] = {}

    def first_stop(self, row: int, tokens: list[int]) -> tuple[int, str] | None:
        """(tokens kept, reason) at the first token that ends the row, or None."""
        if row not in self.found:
            for i in range(self.scanned[row], len(tokens)):
                self.scanned[row] = i + 1
                reason = self.engine._stop_reason(tokens[: i + 1], self.params)
                if reason:
                    self.found[row] = (i + 1, reason)
                    break
        return self.found.get(row)

    def __call__(self, tokens_Bn: torch.Tensor) -> list[int]:
        """Rows that have ended by now (the decoder stops sampling them)."""
        return [row for row in range(len(self.scanned)) if self.first_stop(row, tokens_Bn[row].tolist())]
