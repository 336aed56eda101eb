"""What a local model directory must hold, checked without importing torch or transformers, so the entry points
(``jobs.common.check_model_path``) reject a bad path within a second and the loaders (``rl.models``) give the
same message."""

from __future__ import annotations

from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# any one of these makes a directory's tokenizer loadable (fast tokenizer, its config, SentencePiece, BPE vocab)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


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
