"""Bad input for the specialist job, each one clear line naming the problem and exit code 2 before any work
(through jobs.cli.user_errors, in process: the error is raised before Ray starts; the subprocess path of
the same wrapper is covered by tests/test_job_e2e.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from jobs.cli import user_errors
from jobs.train_specialist import run
from rl.config import ModelConfig, SpecialistConfig, SpecialistRunConfig


def run_once(capsys: pytest.CaptureFixture, cfg: SpecialistRunConfig) -> str:
    with pytest.raises(SystemExit) as stopped, user_errors():
        run(cfg)
    err = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert not list(Path(cfg.runs_root).glob("*/summary.json"))  # nothing written as a result
    return err[0]


def gsm8k(tmp_path: Path, path: Path) -> SpecialistRunConfig:
    spec = SpecialistConfig(domain="math", train_data="gsm8k", train_path=str(path))
    return SpecialistRunConfig(specialist=spec, runs_root=str(tmp_path / "runs"), steps=1)


def test_dataset_files_that_are_missing_empty_or_not_json(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope.jsonl"
    assert f"{missing}: not found" in run_once(capsys, gsm8k(tmp_path, missing))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert f"{empty}: no rows" in run_once(capsys, gsm8k(tmp_path, empty))
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text('{"question": "1+1?", "answer": "#### 2"}\nnot json at all\n')
    assert f"{garbage} line 2: not valid JSON" in run_once(capsys, gsm8k(tmp_path, garbage))


def test_model_directories_without_weights_or_tokenizer(tiny_base: Path, tmp_path: Path, capsys) -> None:
    no_weights = tmp_path / "no_weights"
    shutil.copytree(tiny_base, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    cfg = SpecialistRunConfig(model=ModelConfig(path=str(no_weights)), runs_root=str(tmp_path / "runs"))
    assert f"model path {no_weights} has no weights" in run_once(capsys, cfg)
    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(tiny_base, no_tokenizer, ignore=shutil.ignore_patterns("tokenizer*", "chat_template*"))
    cfg = SpecialistRunConfig(model=ModelConfig(path=str(no_tokenizer)), runs_root=str(tmp_path / "runs"))
    assert f"model path {no_tokenizer} has no tokenizer" in run_once(capsys, cfg)
