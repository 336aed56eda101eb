"""Static-shape batched decoding for Llama/Qwen-style models: one preallocated KV cache, one CUDA graph per step.

``HFEngine``'s dynamic loop grows a ``DynamicCache`` and goes back to the host after every token (sampling,
stop checks, a new mask). Here every buffer of a batch shape is allocated once -- KV cache
[B, kv_heads, prompt + new, head_dim] per layer, the sampled tokens and log-probs, a done flag per row -- and
one decode step (embed, every layer, the LM head, sampling, EOS bookkeeping, writing the outputs) only
touches those buffers. On CUDA that step is captured as a CUDA graph and replayed: one launch per token, no
host round-trip except a done check every ``sync_every`` tokens. On CPU the same step runs eagerly (the path
the tests compare with transformers' own forward).

Layout: prompts are left-padded to a width ``P`` rounded up to ``prompt_multiple`` (so steps with similar
prompt lengths reuse one shape); generated token ``s`` sits in cache column ``P + s``. A row's RoPE position
is its column minus its padding. Attention reads only the columns written so far, rounded up to
``attend_bucket``: one graph per bucket, so a step never reads the whole cache.

The forward is this module's own, over the model's modules (embedding, norms, projections, MLPs, RoPE): the
projections are whatever the model holds -- ``nn.Linear`` or the packed FP4 linears of ``rl.fp4.packed``
(the Triton W4A16 kernel on GPU).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from rl.rollout.sampling import exponential_race, sample_tokens
from rl.types import SamplingParams

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
# padded prompt tokens per prefill chunk (bounds the attention mask, the scores and a matmul's M)
PREFILL_TOKENS = 32768


def supports(model: torch.nn.Module) -> str | None:
    """None when ``model`` can be decoded here, else why not."""
    config: Any = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model_type {model_type!r} is not one of {', '.join(SUPPORTED_MODEL_TYPES)}"
    windowed = getattr(config, "use_sliding_window", getattr(config, "sliding_window", None) is not None)
    if windowed:
        return "sliding-window attention is not supported"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"hidden_act {config.hidden_act!r} is not silu"
    return None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama/Qwen RMSNorm (float32 statistics, cast back, then the weight), as transformers computes it."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def add_rms_norm(
    x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual add and the next norm: (x + delta, rms_norm(x + delta))."""
    x = x + delta
    return x, rms_norm(x, weight, eps)


def qk_rope(
    q: torch.Tensor, k: torch.Tensor, q_norm: torch.Tensor | None, k_norm: torch.Tensor | None,
    eps: float, cos: torch.Tensor, sin: torch.Tensor, head_dim: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """[B, T, H*D] projections -> per-head (Qwen3: RMS-normed) rotated q [B, Hq, T, D], k [B, Hkv, T, D]."""
    B, T = q.shape[:2]
    q, k = q.view(B, T, -1, head_dim), k.view(B, T, -1, head_dim)
    if q_norm is not None and k_norm is not None:
        q, k = rms_norm(q, q_norm, eps), rms_norm(k, k_norm, eps)
    return apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)


def masked_softmax(scores: torch.Tensor, valid_BL: torch.Tensor, scaling: float) -> torch.Tensor:
    """softmax(scores * scaling) over the valid cache columns, computed in float32, in the scores' dtype."""
    probs = (scores.float() * scaling).masked_fill(~valid_BL[:, None, None], float("-inf")).softmax(-1)
    return probs.to(scores.dtype)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.silu(gate) * up


GLUE = {"rms_norm": rms_norm, "add_rms_norm": add_rms_norm, "qk_rope": qk_rope,
        "masked_softmax": masked_softmax, "silu_mul": silu_mul}  # fmt: skip


def compiled_glue() -> dict[str, Any]:
    """The glue functions through ``torch.compile`` (each a fused Triton kernel or two on GPU: ~60 launches per
    layer become ~18, which is what a captured decode step is made of)."""
    return {name: torch.compile(fn, fullgraph=True) for name, fn in GLUE.items()}


def fuse_linears(modules: list[torch.nn.Module]) -> torch.nn.Module | None:
    """One linear computing ``cat([m(x) for m in modules], -1)`` whose weights are the modules' own storage.

    The fused weight (nn.Linear) or packed codes and scales (MXFP4 ``PackedFP4Linear``) are concatenated along
    the output features once, and each module's tensors are re-pointed at its rows of them, so a weight
    update that writes into the modules in place (``load_state_dict``, ``load_quantized``) updates the fused
    layer too, and no memory is added. None where the modules cannot share one launch (biases, NVFP4's
    per-tensor scales, other module types).
    """
    from rl.fp4.formats import MXFP4Tensor
    from rl.fp4.packed import PackedFP4Linear

    linears = [m for m in modules if type(m) is torch.nn.Linear and m.bias is None]
    if len(linears) == len(modules):
        fused_w = torch.cat([m.weight.detach() for m in linears])
        start = 0
        for m in linears:
            rows = m.weight.shape[0]
            m.weight = torch.nn.Parameter(fused_w[start : start + rows], requires_grad=False)
            start += rows
        fused = torch.nn.Linear(fused_w.shape[1], fused_w.shape[0], bias=False, device=fused_w.device)
        fused.weight = torch.nn.Parameter(fused_w, requires_grad=False)
        return fused
    packed: list[PackedFP4Linear] = [m for m in modules if isinstance(m, PackedFP4Linear) and m.bias is None]
    if len(packed) == len(modules) and all(isinstance(m.quantized(), MXFP4Tensor) for m in packed):
        qs = [m.quantized() for m in packed]
        fused_q = MXFP4Tensor(packed=torch.cat([q.packed for q in qs]), scales=torch.cat([q.scales for q in qs]),
                              shape=(sum(q.shape[0] for q in qs), qs[0].shape[1]))  # fmt: skip
        start = 0
        for m, q in zip(packed, qs, strict=True):
            rows = q.shape[0]
            m.packed = fused_q.packed[start : start + rows]  # buffers: assignment re-registers them
            m.scales = fused_q.scales[start : start + rows]
            start += rows
        return PackedFP4Linear(fused_q, None)
    return None


def _graph_key(params: SamplingParams) -> tuple[Any, ...]:
    """What a captured step bakes in (the rest -- seed, prompts -- lives in buffers)."""
    return (params.temperature, params.top_k, params.top_p, params.ignore_eos)


@dataclass
class Session:
    """Every buffer of one (batch, prompt width, new tokens) shape; kept across calls so graphs stay valid."""

    batch: int
    width: int  # padded prompt width P
    new_tokens: int  # S
    k: list[torch.Tensor]  # per layer [B, kv_heads, P + S, head_dim]
    v: list[torch.Tensor]
    cos: torch.Tensor  # [P + S, head_dim] RoPE tables by position
    sin: torch.Tensor
    columns: torch.Tensor  # arange(P + S)
    pad_B: torch.Tensor  # left padding per row
    token_B: torch.Tensor  # the last sampled token (fed at the next step)
    column: torch.Tensor  # [1] cache column of token_B
    step: torch.Tensor  # [1] index of the next output
    done_B: torch.Tensor  # EOS sampled
    tokens_BS: torch.Tensor  # outputs
    logprobs_BS: torch.Tensor
    generator: torch.Generator
    graphs: dict[tuple[Any, ...], Any] = field(default_factory=dict)  # (attend, sampling) -> CUDAGraph


class StaticDecoder:
    """Generates with static buffers (and CUDA graphs on GPU) from a transformers Llama/Qwen-style model.

    One decoder per model: it re-points the model's q/k/v and gate/up weights at fused tensors (``fuse_linears``)."""

    def __init__(
        self,
        model: torch.nn.Module,
        pad_id: int,
        eos_ids: set[int],
        use_graphs: bool | None = None,
        compile_glue: bool | None = None,
        prompt_multiple: int = 64,
        attend_bucket: int = 64,
        sync_every: int = 16,
        max_sessions: int = 2,
    ):
        reason = supports(model)
        if reason:
            raise ValueError(f"static decoding: {reason}")
        causal_lm: Any = (
            model  # a transformers *ForCausalLM: .model (embeddings, layers, norm, RoPE), .lm_head
        )
        inner, config = causal_lm.model, causal_lm.config
        self.model, self.embed, self.layers, self.norm = model, inner.embed_tokens, inner.layers, inner.norm
        self.rotary, self.lm_head = inner.rotary_emb, causal_lm.lm_head
        self.q_heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.q_heads
        self.scaling = self.head_dim**-0.5
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.use_graphs = self.device.type == "cuda" if use_graphs is None else use_graphs
        if self.use_graphs and self.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        self.glue = compiled_glue() if (self.use_graphs if compile_glue is None else compile_glue) else GLUE
        self.eps = self.layers[0].input_layernorm.variance_epsilon
        # q/k/v and gate/up as one launch each where the weights allow (7 -> 4 matmuls a layer)
        self.qkv = [
            fuse_linears([la.self_attn.q_proj, la.self_attn.k_proj, la.self_attn.v_proj])
            for la in self.layers
        ]
        self.gate_up = [fuse_linears([la.mlp.gate_proj, la.mlp.up_proj]) for la in self.layers]
        self.pad_id = pad_id
        self.eos_B = torch.tensor(sorted(eos_ids), device=self.device)
        self.prompt_multiple, self.attend_bucket, self.sync_every = prompt_multiple, attend_bucket, sync_every
        self.sessions: OrderedDict[tuple[int, int, int], Session] = OrderedDict()
        self.max_sessions = max_sessions
        self.pool: Any = torch.cuda.graph_pool_handle() if self.use_graphs else None

    # ------------------------------------------------------------------------------------------ buffers

    def session(self, batch: int, width: int, new_tokens: int) -> Session:
        """The buffers of this shape (made once; the least recently used shape is dropped past the limit)."""
        key = (batch, width, new_tokens)
        if key in self.sessions:
            self.sessions.move_to_end(key)
            return self.sessions[key]
        while len(self.sessions) >= self.max_sessions:
            self.sessions.popitem(last=False)
        total, dev = width + new_tokens, self.device
        cache_shape = (batch, self.kv_heads, total, self.head_dim)
        positions = torch.arange(total, device=dev)
        probe = torch.zeros(1, dtype=self.dtype, device=dev)
        cos, sin = self.rotary(probe, positions[None])
        gen = torch.Generator(device=dev)
        sess = Session(
            batch=batch, width=width, new_tokens=new_tokens,
            k=[torch.zeros(cache_shape, dtype=self.dtype, device=dev) for _ in self.layers],
            v=[torch.zeros(cache_shape, dtype=self.dtype, device=dev) for _ in self.layers],
            cos=cos[0], sin=sin[0], columns=positions,
            pad_B=torch.zeros(batch, dtype=torch.long, device=dev),
            token_B=torch.zeros(batch, dtype=torch.long, device=dev),
            column=torch.zeros(1, dtype=torch.long, device=dev),
            step=torch.zeros(1, dtype=torch.long, device=dev),
            done_B=torch.zeros(batch, dtype=torch.bool, device=dev),
            tokens_BS=torch.zeros(batch, new_tokens, dtype=torch.long, device=dev),
            logprobs_BS=torch.zeros(batch, new_tokens, dtype=torch.float32, device=dev),
            generator=gen,
        )  # fmt: skip
        self.sessions[key] = sess
        return sess

    def padded_width(self, longest_prompt: int) -> int:
        return -(-longest_prompt // self.prompt_multiple) * self.prompt_multiple

    # ------------------------------------------------------------------------------------------ forward

    def _prefill(self, sess: Session, ids_BP: torch.Tensor) -> torch.Tensor:
        """Run the padded prompts, fill cache columns [0, P); the last position's logits [B, V]. Rows go through
        in chunks of about ``PREFILL_TOKENS`` tokens: one long prompt pads every row of its batch to its width,
        and the attention mask and scores of a whole batch at once grow with B * P * P."""
        B, P = ids_BP.shape
        rows = max(1, PREFILL_TOKENS // P)
        return torch.cat([self._prefill_rows(sess, ids_BP[r : r + rows], r) for r in range(0, B, rows)])

    def _prefill_rows(self, sess: Session, ids_BP: torch.Tensor, first: int) -> torch.Tensor:
        """``_prefill`` of the batch rows ``first ..`` (``ids_BP`` holds them)."""
        B, P = ids_BP.shape
        at = slice(first, first + B)
        cols = sess.columns[:P]
        pad_B = sess.pad_B[at]
        positions_BP = (cols[None] - pad_B[:, None]).clamp_min(0)
        cos, sin = sess.cos[positions_BP], sess.sin[positions_BP]
        key_ok_BP = cols[None] >= pad_B[:, None]
        causal_PP = cols[:, None] >= cols[None]
        # a padding query sees only itself (finite values; never attended to by real tokens)
        mask = (causal_PP[None] & key_ok_BP[:, None]) | torch.eye(P, dtype=torch.bool, device=self.device)
        x = self.embed(ids_BP)
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            q, k, v = self._project(i, attn, layer.input_layernorm(x))
            q, k = qk_rope(q, k, *self._qk_norms(attn), self.eps, cos, sin, self.head_dim)
            v = v.view(B, P, -1, self.head_dim).transpose(1, 2)
            sess.k[i][at, :, :P] = k
            sess.v[i][at, :, :P] = v
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask[:, None], scale=self.scaling, enable_gqa=True
            )
            x = x + attn.o_proj(out.transpose(1, 2).reshape(B, P, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.lm_head(self.norm(x[:, -1:]))[:, 0]

    def _attend(self, q_BH1D: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid_BL: torch.Tensor):
        """One query per row against the first L cache columns (GQA without copying the cache)."""
        B = q_BH1D.shape[0]
        q = q_BH1D.view(B, self.kv_heads, -1, self.head_dim)  # query head h uses kv head h // group
        probs = self.glue["masked_softmax"](torch.matmul(q, k.transpose(-1, -2)), valid_BL, self.scaling)
        return torch.matmul(probs, v).reshape(B, 1, -1)  # [B, Hkv, G, D] -> [B, 1, Hq * D]

    def _project(self, i: int, attn: Any, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q, k, v projections of layer ``i`` (one fused launch where possible), each [B, T, heads * D]."""
        fused = self.qkv[i]
        if fused is None:
            return attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
        kv = self.kv_heads * self.head_dim
        return fused(h).split([self.q_heads * self.head_dim, kv, kv], dim=-1)

    @staticmethod
    def _qk_norms(attn: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Qwen3's per-head q/k RMSNorm weights (None, None for Llama-style attention)."""
        q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        return (q_norm.weight, k_norm.weight) if q_norm is not None and k_norm is not None else (None, None)

    def _decode_step(self, sess: Session, attend: int, params: SamplingParams) -> None:
        """Feed ``token_B`` at ``column``, sample the next token into the outputs, advance (buffers only)."""
        g, eps = self.glue, self.eps
        positions_B1 = (sess.column - sess.pad_B)[:, None]
        cos, sin = sess.cos[positions_B1], sess.sin[positions_B1]
        cols = sess.columns[:attend]
        valid_BL = (cols[None] >= sess.pad_B[:, None]) & (cols[None] <= sess.column)
        x = self.embed(sess.token_B[:, None])
        h = g["rms_norm"](x, self.layers[0].input_layernorm.weight, eps)
        for i, layer in enumerate(self.layers):
            attn, mlp = layer.self_attn, layer.mlp
            q, k, v = self._project(i, attn, h)
            q, k = g["qk_rope"](q, k, *self._qk_norms(attn), eps, cos, sin, self.head_dim)
            sess.k[i].index_copy_(2, sess.column, k)
            sess.v[i].index_copy_(2, sess.column, v.view(k.shape[0], 1, -1, self.head_dim).transpose(1, 2))
            a = self._attend(q, sess.k[i][:, :, :attend], sess.v[i][:, :, :attend], valid_BL)
            x, h = g["add_rms_norm"](x, attn.o_proj(a), layer.post_attention_layernorm.weight, eps)
            fused = self.gate_up[i]
            gate, up = fused(h).chunk(2, dim=-1) if fused is not None else (mlp.gate_proj(h), mlp.up_proj(h))
            down = mlp.down_proj(g["silu_mul"](gate, up))
            norm = self.layers[i + 1].input_layernorm if i + 1 < len(self.layers) else self.norm
            x, h = g["add_rms_norm"](x, down, norm.weight, eps)
        self._emit(sess, self.lm_head(h)[:, 0], params)
        sess.column.add_(1)

    def _emit(self, sess: Session, logits_BV: torch.Tensor, params: SamplingParams) -> None:
        """Sample, write token and log-prob at ``step`` (pad / 0 on finished rows), update done, advance."""
        token_B, logprob_B = sample_tokens(logits_BV, params, sess.generator, draw=exponential_race)
        token_B = token_B.masked_fill(sess.done_B, self.pad_id)
        logprob_B = logprob_B.masked_fill(sess.done_B, 0.0)
        sess.tokens_BS.index_copy_(1, sess.step, token_B[:, None])
        sess.logprobs_BS.index_copy_(1, sess.step, logprob_B[:, None])
        if not params.ignore_eos:
            sess.done_B |= torch.isin(token_B, self.eos_B)
        sess.token_B.copy_(token_B)
        sess.step.add_(1)

    # ------------------------------------------------------------------------------------------ graphs

    def _step_fn(self, sess: Session, attend: int, params: SamplingParams):
        """The decode step for this attention length: a replayed CUDA graph, or the eager step."""
        if not self.use_graphs:
            return lambda: self._decode_step(sess, attend, params)
        key = (attend, *_graph_key(params))
        if key not in sess.graphs:
            sess.graphs[key] = self._capture(sess, attend, params)
        return sess.graphs[key].replay

    def _capture(self, sess: Session, attend: int, params: SamplingParams) -> Any:
        """Warm up (compiles, Triton tuning, allocator) on a side stream, then capture one step. Both write
        into the session's buffers; ``generate`` captures before it sets them up for the real run."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                sess.column.fill_(attend - 1)
                sess.step.zero_()
                self._decode_step(sess, attend, params)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(sess.generator)
        sess.column.fill_(attend - 1)
        sess.step.zero_()
        with torch.cuda.graph(graph, pool=self.pool):
            self._decode_step(sess, attend, params)
        return graph

    # ------------------------------------------------------------------------------------------ generate

    @torch.no_grad()
    def generate(
        self, prompts: list[list[int]], params: SamplingParams, stop_check: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens [B, n] and log-probs [B, n] (CPU), n <= ``max_new_tokens`` steps.

        Rows that sampled EOS are padded with ``pad_id`` / 0 after it. ``stop_check(tokens_Bn)``, if given,
        is called at each host sync with the tokens so far and returns rows to mark finished (stop strings);
        generation ends early once every row is finished.
        """
        S = params.max_new_tokens
        width = self.padded_width(max(len(p) for p in prompts))
        sess = self.session(len(prompts), width, S)
        buckets = sorted({self._attend_len(width + s - 1, width + S) for s in range(1, S)})
        steps_fn = {attend: self._step_fn(sess, attend, params) for attend in buckets}  # captures first
        ids_BP = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids_BP[row, width - len(prompt) :] = torch.tensor(prompt)
        sess.pad_B.copy_(torch.tensor([width - len(p) for p in prompts]))
        sess.done_B.zero_()
        sess.step.zero_()
        sess.tokens_BS.fill_(self.pad_id)
        sess.logprobs_BS.zero_()
        sess.generator.manual_seed(params.seed)
        self._emit(sess, self._prefill(sess, ids_BP.to(self.device)), params)
        sess.column.fill_(width)
        steps = 1
        while steps < S:
            if steps % self.sync_every == 0 and self._all_done(sess, steps, stop_check):
                break
            steps_fn[self._attend_len(width + steps - 1, width + S)]()
            steps += 1
        return sess.tokens_BS[:, :steps].cpu(), sess.logprobs_BS[:, :steps].cpu()

    def _attend_len(self, column: int, total: int) -> int:
        """Cache columns a step at ``column`` reads: through ``column``, rounded up to the bucket."""
        return min(-(-(column + 1) // self.attend_bucket) * self.attend_bucket, total)

    def _all_done(self, sess: Session, steps: int, stop_check: Any) -> bool:
        if stop_check is not None:
            rows = stop_check(sess.tokens_BS[:, :steps].cpu())
            if rows:
                sess.done_B[torch.tensor(rows, device=self.device)] = True
        return bool(sess.done_B.all())
