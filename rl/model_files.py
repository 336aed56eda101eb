"""What a local model directory (or GGUF file) must hold, checked without importing torch or transformers, so the
entry points (``jobs.common.check_model_path``) reject a bad path within a second and the loaders (``rl.models``)
give the same message."""

from __future__ import annotations

import json
from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# any one of these makes a directory's tokenizer loadable (fast tokenizer, its config, SentencePiece, BPE vocab)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# a chat template in its own file; else tokenizer_config.json's chat_template
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
GGUF_MAGIC = b"GGUF"


class ModelLoadError(ValueError):
    """A model or tokenizer path that cannot be used, with what is wrong."""


def is_local(name_or_path: str) -> bool:
    """A path on this machine rather than a hub id."""
    return name_or_path.startswith(("/", ".", "~")) or Path(name_or_path).exists()


def check_model_dir(path: Path, tokenizer: bool = False) -> None:
    """``path`` is an HF model directory with its config and weights (and, if asked, a tokenizer)."""
    if not path.is_dir():
        raise ModelLoadError(f"model path {path} does not exist")
    if not (path / "config.json").exists():
        raise ModelLoadError(f"model path {path} has no config.json (not an HF model directory)")
    if not any((path / name).exists() for name in WEIGHT_FILES):
        raise ModelLoadError(f"model path {path} has no weights (looked for {', '.join(WEIGHT_FILES)})")
    if tokenizer and not any((path / name).exists() for name in TOKENIZER_FILES):
        raise ModelLoadError(f"model path {path} has no tokenizer (looked for {', '.join(TOKENIZER_FILES)})")
    if tokenizer and not has_chat_template(path):
        raise ModelLoadError(
            f"model path {path} has no chat template (prompts are chat-formatted): add chat_template.jinja or "
            "tokenizer_config.json's chat_template, or use a chat/instruct model"
        )


def has_chat_template(path: Path) -> bool:
    """A chat template saved beside the tokenizer, in any of the layouts transformers writes."""
    if any((path / name).exists() for name in CHAT_TEMPLATE_FILES):
        return True
    try:
        config = json.loads((path / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("chat_template"))


def gguf_source(path: str, gguf_file: str = "") -> Path | None:
    """The GGUF file a model config names (``model.path`` a ``.gguf`` file, or a directory with
    ``model.gguf_file``), or None for an HF directory or hub id."""
    if gguf_file:
        return Path(path).expanduser() / gguf_file
    return Path(path).expanduser() if path.endswith(".gguf") else None


def check_gguf_file(path: Path) -> None:
    """``path`` is a GGUF file (its magic bytes); whether transformers can read it is found by converting it."""
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} does not exist")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"{path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})")
