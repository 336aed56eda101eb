"""Rollout decode of a Qwen3-MoE layer stack with bf16 experts vs FP4 (packed) experts (``python -m benchmarks.moe_decode``).

GPU mode: a Qwen3-30B-A3B-shaped model (hidden 2048, 128 experts of width 768, top-8, 32 query / 4 KV heads;
random init, ``--layers`` of its 48 layers to fit the time), bf16. The same weights decode ``--new`` tokens for a
batch of ``--batch`` one-token prompts through ``rl.rollout.hf.HFEngine`` (greedy, EOS ignored), once with
transformers' experts in bf16 and once with the experts packed (``rl.fp4.packed.PackedFP4Experts``: codes +
scales, the Triton W4A16 kernel per expert); tokens/s of each, the experts' weight bytes of each, and how many
greedy tokens agree. Writes JSON.

``--cpu``: a tiny shape in float32 with the torch reference, so the script keeps running in CI (seconds).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from rl.fp4.packed import PackedFP4Experts, pack_linears
from rl.fp4.qat import qat_linear_names
from rl.moe import EXPERT_PARAMS, is_experts
from rl.rollout.hf import HFEngine
from rl.types import SamplingParams

A3B = {"hidden_size": 2048, "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
       "num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768, "intermediate_size": 6144,
       "vocab_size": 151936}  # fmt: skip  # Qwen3-30B-A3B's config.json
TINY = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "num_experts": 8,
        "num_experts_per_tok": 2, "moe_intermediate_size": 64, "intermediate_size": 128, "vocab_size": 256}  # fmt: skip


class Tokenizer:
    """What HFEngine reads from a tokenizer when nothing is decoded to text: the pad and EOS ids."""

    pad_token_id = 0
    eos_token_id = 1
    pad_token = "<pad>"
    eos_token = "<eos>"

    def convert_tokens_to_ids(self, token: str) -> int:
        return {"<pad>": 0, "<eos>": 1}.get(token, 1)

    def decode(self, ids: list[int], **_: object) -> str:
        return " ".join(map(str, ids))


def build(shape: dict, layers: int, dtype: torch.dtype, device: str) -> Qwen3MoeForCausalLM:
    torch.manual_seed(0)
    config = Qwen3MoeConfig(**shape, num_hidden_layers=layers, norm_topk_prob=True, tie_word_embeddings=False,
                            max_position_embeddings=4096)  # fmt: skip
    with torch.device(device):
        model = Qwen3MoeForCausalLM(config)
    return model.to(dtype=dtype).eval()  # type: ignore[return-value]


def decode(model: torch.nn.Module, batch: int, new: int) -> tuple[float, list[tuple[int, ...]]]:
    """Seconds to decode ``new`` tokens for ``batch`` prompts (after one warm-up run), and the tokens."""
    engine = HFEngine(model, Tokenizer(), max_batch_size=batch, decode="dynamic")  # type: ignore[arg-type]
    prompts = [[2 + i % 200] for i in range(batch)]
    params = SamplingParams(max_new_tokens=new, temperature=0.0, ignore_eos=True)
    engine.generate(prompts, SamplingParams(max_new_tokens=4, temperature=0.0, ignore_eos=True))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    out = engine.generate(prompts, params)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started, [r.response_ids for r in out]


def expert_bytes(model: torch.nn.Module) -> int:
    """Bytes of the experts' weights: dense 3-D tensors, or packed codes and scales."""
    dense = sum(t.numel() * t.element_size() for m in model.modules() if is_experts(m)
                for t in (getattr(m, name) for name in EXPERT_PARAMS))  # fmt: skip
    return dense + sum(m.weight_nbytes() for m in model.modules() if isinstance(m, PackedFP4Experts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cpu", action="store_true", help="a tiny shape in float32, torch reference (CI)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--fmt", default="nvfp4", choices=("mxfp4", "nvfp4"))
    parser.add_argument("--out", default="benchmarks/results/moe_decode.json")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu for the CPU smoke benchmark")
    device = "cpu" if args.cpu else "cuda"
    shape, dtype = (TINY, torch.float32) if args.cpu else (A3B, torch.bfloat16)
    model = build(shape, args.layers, dtype, device)
    bf16_bytes = expert_bytes(model)
    dense_s, dense_tokens = decode(model, args.batch, args.new)
    pack_linears(model, qat_linear_names(model, args.fmt), args.fmt)
    fp4_bytes = expert_bytes(model)
    fp4_s, fp4_tokens = decode(model, args.batch, args.new)
    tokens = args.batch * args.new
    agree = sum(
        a == b for x, y in zip(dense_tokens, fp4_tokens, strict=True) for a, b in zip(x, y, strict=False)
    )
    result = {
        "device": platform.processor() or platform.machine() if args.cpu else torch.cuda.get_device_name(),
        "torch": torch.__version__, "shape": shape, "layers": args.layers, "batch": args.batch, "new_tokens": args.new,
        "fmt": args.fmt, "dense_dtype": str(dtype).removeprefix("torch."),
        "dense_tokens_per_s": tokens / dense_s, "fp4_tokens_per_s": tokens / fp4_s, "fp4_speedup": dense_s / fp4_s,
        "dense_expert_bytes": bf16_bytes, "fp4_expert_bytes": fp4_bytes, "fp4_bytes_ratio": fp4_bytes / bf16_bytes,
        "greedy_tokens_agreeing": agree / tokens,
    }  # fmt: skip
    print(f"{result['device']}, {args.layers} layers, batch {args.batch} x {args.new} tokens: dense experts "
          f"{result['dense_tokens_per_s']:.0f} tok/s, {args.fmt} experts {result['fp4_tokens_per_s']:.0f} tok/s "
          f"({result['fp4_speedup']:.2f}x); expert bytes {result['fp4_bytes_ratio']:.3f} of dense; greedy tokens "
          f"agreeing {result['greedy_tokens_agreeing']:.2f}")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
