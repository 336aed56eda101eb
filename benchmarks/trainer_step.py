"""Tokens/s of one RL training step: the torch backend vs DeepSpeed ZeRO, same model, batch and settings, one run.

    python -m benchmarks.trainer_step                                   # CPU: tiny Qwen3, 1 rank, torch vs ZeRO-2
    python -m benchmarks.trainer_step --model qwen3-0.6b --ranks 2 --zero-stages 2,3 --fp4 mxfp4 \\
        --dtype bfloat16 --batch 16 --seq-len 1024 --out $OUT/trainer_step.json     # 2 GPUs

No Ray: each rank is a process (``torch.multiprocessing``) running the plain trainer class -- the same code a
TrainerWorker actor runs -- with gloo on CPU or NCCL on GPU. The model is built from a config with random weights
(no hub); the batch is random tokens with GRPO-style advantages, split across ranks as ``TrainerGroup`` does.
Per backend it reports the median step time over ``--steps`` timed steps after one warm-up, tokens/s (every
position of the global batch through forward + backward), peak memory per rank (CUDA allocator peak on GPU,
max RSS on CPU), and the time and size of one FP4 weight export (ZeRO-3 gathers the full weights for it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from rl.algorithms.objective import PolicyObjective
from rl.config import AlgorithmConfig, TrainerConfig, fp4_of
from rl.fp4.qat import payload_nbytes
from rl.models import tiny_qwen3_config
from rl.trainer.spec import TrainerSpec
from rl.trainer.torch_backend import free_port
from rl.types import LossNormalizer, TrainBatch

# Qwen3-0.6B's shape (config.json of Qwen/Qwen3-0.6B), random weights
QWEN3_0_6B = {
    "vocab_size": 151936, "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
    "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960,
    "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
}  # fmt: skip


@dataclass(frozen=True)
class Case:
    backend: str  # torch | deepspeed
    zero_stage: int  # 0 for the torch backend


def build_model_dir(model: str, dtype: str, out: Path) -> Path:
    """A random-weight model of the named shape saved as an HF directory (what trainers load)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = tiny_qwen3_config(vocab_size=512) if model == "tiny" else Qwen3Config(**QWEN3_0_6B)
    if model not in ("tiny", "qwen3-0.6b"):
        raise ValueError(f"unknown --model {model!r}; valid: tiny, qwen3-0.6b")
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).to(getattr(torch, dtype)).save_pretrained(out)
    return out


def random_batch(batch: int, seq_len: int, vocab: int, seed: int = 0) -> TrainBatch:
    """Random tokens; the second half of each row is the "response" with advantage +-1 by row."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq_len), generator=gen)
    loss_mask = torch.zeros(batch, seq_len)
    loss_mask[:, seq_len // 2 :] = 1.0
    signs = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(batch)])[:, None]
    return TrainBatch(ids, torch.ones_like(ids), loss_mask, loss_mask * signs, -2.0 * loss_mask)


def shard(batch: TrainBatch, rank: int, world: int) -> TrainBatch:
    n = batch.num_sequences
    return batch.select(slice(n * rank // world, n * (rank + 1) // world))


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_trainer(case: Case, args: argparse.Namespace, model_dir: Path, rank: int, port: int) -> Any:
    from rl.trainer.backends import BACKENDS
    from rl.trainer.torch_backend import DistInfo

    cfg = TrainerConfig(backend=case.backend, num_ranks=args.ranks, lr=1e-6, micro_batch_size=args.micro_batch,
                        zero_stage=max(case.zero_stage, 1))  # fmt: skip
    dist_info = DistInfo(rank=rank, world_size=args.ranks, master_port=port)
    spec = TrainerSpec(
        str(model_dir), cfg, total_steps=args.steps + 1, dtype=args.dtype, fp4=fp4_of(args.fp4)
    )
    return BACKENDS[case.backend](spec, PolicyObjective(AlgorithmConfig()), dist_info=dist_info)


def rank_main(rank: int, case: Case, args: argparse.Namespace, model_dir: Path, port: int, out: str) -> None:
    """One rank: warm up, time ``args.steps`` train steps, then one export; rank 0 writes the result."""
    trainer = make_trainer(case, args, model_dir, rank, port)
    full = random_batch(args.batch, args.seq_len, trainer.model.config.vocab_size)
    mine = shard(full, rank, args.ranks)
    norm = LossNormalizer(full.num_tokens, full.num_sequences, args.seq_len // 2)
    trainer.train_step(mine, norm)  # warm-up (allocator, NCCL/gloo buffers, DeepSpeed hooks)
    times = []
    for _ in range(args.steps):
        sync(trainer.device)
        start = time.perf_counter()
        metrics = trainer.train_step(mine, norm)
        sync(trainer.device)
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    exported = trainer.export_weights()
    export_s = time.perf_counter() - start
    roundtrip = check_export(trainer, exported, args) if args.check_export else {}
    memory = torch.tensor([peak_memory_gib(trainer.device)], device=trainer.device)
    gathered = [torch.zeros_like(memory) for _ in range(args.ranks)] if args.ranks > 1 else [memory]
    if args.ranks > 1:
        torch.distributed.all_gather(gathered, memory)
    if rank == 0:
        step_s = statistics.median(times)
        result = {
            "backend": case.backend, "zero_stage": case.zero_stage, "ranks": args.ranks, "step_s": step_s,
            "tokens_per_s": args.batch * args.seq_len / step_s, "peak_gib_per_rank": [float(m) for m in gathered],
            "export_s": export_s, "export_mb": payload_nbytes(exported) / 1e6, "loss": metrics["train/loss"],
            "grad_norm": metrics["train/grad_norm"], "step_times_s": times, **roundtrip,
        }  # fmt: skip
        Path(out).write_text(json.dumps(result))
    trainer.shutdown()


def check_export(trainer: Any, exported: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Write the export as a compressed-tensors W4A16 checkpoint, decompress it with compressed-tensors itself
    and compare with the trainer's fake-quantized weights (collective: every rank gathers; rank 0 checks)."""
    from rl.fp4.compressed import load_compressed_dequantized, save_compressed_state

    fake = trainer.fake_quant_weights()
    if trainer.dist.rank != 0 or args.fp4 == "none":
        return {}
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        save_compressed_state(out, exported, trainer.model, trainer.qat_names, args.fp4,
                              dense_dtype=torch.bfloat16, allow_unshared_global_scales=True)  # fmt: skip
        loaded = load_compressed_dequantized(out)
        seconds = time.perf_counter() - start
    equal = sum(torch.equal(loaded[k].float(), fake[k]) for k in fake)
    worst = max(float((loaded[k].float() - fake[k]).abs().max()) for k in fake)
    return {
        "ct_linears": len(fake),
        "ct_bitwise_equal": equal,
        "ct_max_abs_diff": worst,
        "ct_roundtrip_s": seconds,
    }


def run_case(case: Case, args: argparse.Namespace, model_dir: Path, scratch: Path) -> dict[str, Any]:
    out = scratch / f"{case.backend}-{case.zero_stage}.json"
    port = free_port()
    mp.start_processes(rank_main, args=(case, args, model_dir, port, str(out)), nprocs=args.ranks,
                       start_method="spawn")  # fmt: skip
    return json.loads(out.read_text())


def table(rows: list[dict[str, Any]]) -> str:
    base = rows[0]["tokens_per_s"]
    lines = [
        "| backend | ZeRO | ranks | step s | tokens/s | vs torch | peak GiB per rank | export s | export MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        peaks = " / ".join(f"{m:.2f}" for m in r["peak_gib_per_rank"])
        lines.append(
            f"| {r['backend']} | {r['zero_stage'] or '-'} | {r['ranks']} | {r['step_s']:.3f} | "
            f"{r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base:.2f}x | {peaks} | {r['export_s']:.2f} | "
            f"{r['export_mb']:.1f} |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny", help="tiny | qwen3-0.6b")
    parser.add_argument("--dtype", default="float32", help="master-weight dtype: float32 | bfloat16")
    parser.add_argument("--fp4", default="mxfp4", help="QAT format: mxfp4 | nvfp4 | none")
    parser.add_argument("--ranks", type=int, default=1, help="data-parallel ranks (GPUs on a GPU machine)")
    parser.add_argument("--zero-stages", default="2", help="DeepSpeed stages to time, e.g. 2,3")
    parser.add_argument("--batch", type=int, default=16, help="sequences in the global batch")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (half of them trained)")
    parser.add_argument("--micro-batch", type=int, default=4, help="sequences per forward/backward")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    parser.add_argument("--check-export", action="store_true",
                        help="round-trip each export through compressed-tensors (needs the package)")  # fmt: skip
    parser.add_argument("--out", default="", help="write the rows as JSON here")
    args = parser.parse_args()
    if torch.cuda.is_available() and args.ranks > torch.cuda.device_count():
        parser.error(
            f"--ranks {args.ranks} needs {args.ranks} GPUs, this machine has {torch.cuda.device_count()}"
        )
    if args.batch % args.ranks:
        parser.error(f"--batch {args.batch} must split evenly over --ranks {args.ranks}")
    return args


def main() -> None:
    args = parse_args()
    cases = [Case("torch", 0)] + [Case("deepspeed", int(s)) for s in args.zero_stages.split(",")]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = build_model_dir(args.model, args.dtype, Path(scratch) / "model")
        rows = []
        for case in cases:
            rows.append(run_case(case, args, model_dir, Path(scratch)))
            print(
                f"{case.backend} ZeRO-{case.zero_stage}: {rows[-1]['tokens_per_s']:.0f} tokens/s", flush=True
            )
    print(f"\n{args.model} ({args.dtype}, fp4={args.fp4}), batch {args.batch} x {args.seq_len}, "
          f"micro-batch {args.micro_batch}, on {device}\n")  # fmt: skip
    print(table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps({"device": device, "args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
