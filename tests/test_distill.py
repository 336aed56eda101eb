"""Distillation parts without Ray: registry, routing checks, the teacher's hidden states, the trainer's OPD step."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from distill.config import DistillConfig, LossOptions
from distill.objective import OPDObjective
from distill.routing import CompatibilityError, build_routes, check_compatible, check_context
from distill.teacher import Teacher
from rl.batching import build_train_batch
from rl.config import TrainerConfig
from rl.fp4.qat import fake_quant_weights, qat_linear_names
from rl.models import load_model, load_tokenizer
from rl.rollout.hf import HFEngine
from rl.sft import chat_prompt_ids
from rl.trainer.spec import TrainerSpec
from rl.trainer.torch_backend import TorchTrainer
from rl.types import DistillPart, Rollout, SamplingParams, TrainBatch, predicting_mask
from specialists.registry import RegistryError, SpecialistEntry, load_registry, lookup, register
from specialists.synthetic import math_tasks


@pytest.fixture(scope="module")
def teacher_dir(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base with perturbed block weights: a teacher whose distribution differs from the student's."""
    out = tmp_path_factory.mktemp("teacher") / "t"
    shutil.copytree(tiny_base, out)
    model = load_model(str(out))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layers" in name and p.dim() == 2:
                p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def batch(tiny_base: Path) -> TrainBatch:
    tokenizer = load_tokenizer(str(tiny_base))
    engine = HFEngine(load_model(str(tiny_base)), tokenizer)
    prompts = [chat_prompt_ids(tokenizer, t.prompt) for t in math_tasks(6, "train")]
    rollouts = engine.generate(prompts, SamplingParams(max_new_tokens=10, seed=0))
    return build_train_batch(rollouts, [0.0] * 6, int(tokenizer.pad_token_id))  # type: ignore[arg-type]


def entry(tmp_path: Path, name: str, checkpoint: Path, domain: str = "math") -> SpecialistEntry:
    return SpecialistEntry(name=name, domain=domain, checkpoint=str(checkpoint), fp4="mxfp4", base="b",
                           eval={"eval/pass@1": 0.5}, config={"specialist": {"domain": domain}})  # fmt: skip


# ------------------------------------------------------------------------------------------------ registry


def test_registry_round_trip_replace_and_errors(tmp_path: Path, tiny_base: Path) -> None:
    path = tmp_path / "registry.json"
    register(path, entry(tmp_path, "m1", tiny_base))
    register(path, entry(tmp_path, "c1", tiny_base, "code"))
    register(
        path, SpecialistEntry(**{**entry(tmp_path, "m1", tiny_base).__dict__, "eval": {"eval/pass@1": 0.9}})
    )
    entries = load_registry(path)
    assert sorted(entries) == ["c1", "m1"] and entries["m1"].eval == {"eval/pass@1": 0.9}
    assert entries["m1"].created > 0 and lookup(path, "c1").domain == "code"
    with pytest.raises(RegistryError, match=r"no specialist 'x' in registry .*; registered: c1, m1"):
        lookup(path, "x")
    register(path, entry(tmp_path, "gone", tmp_path / "deleted"))
    with pytest.raises(RegistryError, match=r"points at checkpoint .*deleted, which no longer exists"):
        lookup(path, "gone")
    path.write_text("{not json")
    with pytest.raises(RegistryError, match="not valid JSON"):
        load_registry(path)


def test_routes_are_checked_before_any_work(tmp_path: Path, tiny_base: Path) -> None:
    path = tmp_path / "registry.json"
    register(
        path,
        SpecialistEntry("m", "math", str(tiny_base), "mxfp4", "b", config={"specialist": {"domain": "math"}}),
    )
    routes = build_routes(
        DistillConfig(teachers={"math": "m"}, weights={"math": 2.0}, num_eval_tasks=7), path
    )
    assert routes[0].weight == 2.0 and routes[0].tasks_cfg.num_eval_tasks == 7 and routes[0].max_turns == 1
    # the config is built inside the check: the typed schema refuses some of these itself, before any route
    cases = [
        ({}, "distill.teachers is empty"),
        ({"teachers": {"poetry": "m"}}, "unknown domain.* poetry .*valid: math, code, agent"),
        ({"teachers": {"math": "nope"}}, "no specialist 'nope'"),
        ({"teachers": {"code": "m"}}, "teacher 'm' is a math specialist, not code"),
        (
            {"teachers": {"math": "m"}, "weights": {"maths": 1.0}},
            r"unknown domain\(s\) maths in distill.weights",
        ),
    ]
    for fields, message in cases:
        with pytest.raises(ValueError, match=message):
            build_routes(DistillConfig(**fields), path)


def test_a_teacher_with_another_tokenizer_or_a_short_context_is_refused(
    tmp_path: Path, tiny_base: Path
) -> None:
    other = tmp_path / "other"
    shutil.copytree(tiny_base, other)
    (other / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    path = tmp_path / "registry.json"
    register(
        path,
        SpecialistEntry("m", "math", str(other), "mxfp4", "b", config={"specialist": {"domain": "math"}}),
    )
    routes = build_routes(DistillConfig(teachers={"math": "m"}), path)
    with pytest.raises(
        CompatibilityError, match=r"teacher 'm' .* different tokenizer .*: chat template differ"
    ):
        check_compatible(str(tiny_base), routes)
    tokenizer = load_tokenizer(str(tiny_base))
    with pytest.raises(
        CompatibilityError, match=r"needs .* tokens with its response budget, more than the student"
    ):
        check_context(str(tiny_base), tokenizer, routes[0], math_tasks(3, "heldout"), max_new_tokens=10**6)


# ------------------------------------------------------------------------------------------------- teacher


def test_teacher_returns_hidden_states_of_predicting_positions_and_serves_fp4(
    teacher_dir: Path, batch
) -> None:
    plain = Teacher(str(teacher_dir), fp4=None)
    hidden, seconds = plain.hidden_states(batch, micro_batch_size=4)  # two micro-batches
    mask = predicting_mask(batch.loss_mask_BT)
    assert hidden.shape == (int(mask.sum()), 128) and seconds > 0
    model = load_model(str(teacher_dir)).eval()
    with torch.no_grad():
        full = model.model(
            input_ids=batch.input_ids_BT, attention_mask=batch.attention_mask_BT
        ).last_hidden_state
    assert torch.allclose(hidden, full[:, :-1][mask], atol=1e-5)
    assert plain.head().shape == (model.config.vocab_size, 128)
    fp4 = Teacher(str(teacher_dir), fp4="mxfp4")  # the served weights are the FP4 grid, bitwise
    names = qat_linear_names(model, "mxfp4")
    state = fp4.model.state_dict()
    for key, value in fake_quant_weights(model, names, "mxfp4").items():
        assert torch.equal(state[key], value)
    assert not torch.allclose(fp4.hidden_states(batch)[0], hidden)


# ------------------------------------------------------------------------------------------- trainer step


def opd_trainer(base: Path, micro: int = 8, lr: float = 1e-3, loss: str = "reverse_kl") -> TorchTrainer:
    teacher_head = load_model(str(base)).get_output_embeddings().weight.detach()
    objective = OPDObjective(loss, LossOptions(vocab_chunk=200), {"t": teacher_head})
    return TorchTrainer(
        TrainerSpec(str(base), TrainerConfig(lr=lr, micro_batch_size=micro), total_steps=20), objective
    )


def naive_kl(student: torch.nn.Module, teacher: torch.nn.Module, batch: TrainBatch) -> float:
    """Token-mean full-vocabulary KL(student || teacher) at the predicting positions, from full logits."""
    mask = predicting_mask(batch.loss_mask_BT)
    with torch.no_grad():
        logits = [m(input_ids=batch.input_ids_BT, attention_mask=batch.attention_mask_BT).logits[:, :-1][mask]
                  for m in (student, teacher)]  # fmt: skip
    logp, logq = (x.float().log_softmax(-1) for x in logits)
    return float((logp.exp() * (logp - logq)).sum(-1).mean())


def test_opd_step_loss_is_the_naive_kl_and_training_lowers_it(
    tiny_base: Path, teacher_dir: Path, batch
) -> None:
    teacher = Teacher(str(teacher_dir))
    hidden, _ = teacher.hidden_states(batch)
    trainer = opd_trainer(tiny_base)
    trainer.objective.heads = {"t": teacher.head()}
    before = naive_kl(trainer.model, teacher.model, batch)
    metrics = trainer.train_step([DistillPart("t", batch, 1.0)], batch.num_tokens, hidden)
    assert metrics["train/loss"] == pytest.approx(before, rel=1e-4)
    assert metrics["opd/kl/t_sum"] / metrics["opd/tokens/t"] == pytest.approx(before, rel=1e-4)
    assert metrics["opd/tokens/t"] == batch.num_tokens and metrics["train/nonfinite"] == 0
    for _ in range(5):
        trainer.train_step([DistillPart("t", batch, 1.0)], batch.num_tokens, hidden)
    assert naive_kl(trainer.model, teacher.model, batch) < 0.7 * before


def test_opd_step_is_invariant_to_micro_batches_and_parts(tiny_base: Path, teacher_dir: Path, batch) -> None:
    teacher = Teacher(str(teacher_dir))
    hidden, _ = teacher.hidden_states(batch)
    grad_norms = []
    for micro, split in ((8, False), (2, False), (8, True)):
        trainer = opd_trainer(tiny_base, micro=micro)
        trainer.objective.heads = {"t": teacher.head(), "u": teacher.head()}
        if split:  # the same rows as two parts of two teachers with the same head
            a, b = batch.select(slice(0, 3)), batch.select(slice(3, 6))
            n_a = int(predicting_mask(a.loss_mask_BT).sum())
            metrics = trainer.train_step([DistillPart("t", a, 1.0), DistillPart("u", b, 1.0)], batch.num_tokens,
                                           hidden[:n_a], hidden[n_a:])  # fmt: skip
        else:
            metrics = trainer.train_step([DistillPart("t", batch, 1.0)], batch.num_tokens, hidden)
        grad_norms.append(metrics["train/grad_norm"])
    assert grad_norms[1] == pytest.approx(grad_norms[0], rel=1e-4)
    assert grad_norms[2] == pytest.approx(grad_norms[0], rel=1e-4)


def test_self_distillation_has_zero_loss(tiny_base: Path, batch) -> None:
    teacher = Teacher(str(tiny_base))
    trainer = opd_trainer(tiny_base)
    metrics = trainer.train_step(
        [DistillPart("t", batch, 1.0)], batch.num_tokens, teacher.hidden_states(batch)[0]
    )
    assert abs(metrics["train/loss"]) < 1e-5 and metrics["train/grad_norm"] < 1e-4


@pytest.mark.parametrize("loss", ["sampled_token", "gkd_jsd", "topk_forward_kl"])
def test_alternative_objectives_train_through_the_same_step(
    tiny_base: Path, teacher_dir: Path, batch, loss
) -> None:
    teacher = Teacher(str(teacher_dir))
    trainer = opd_trainer(tiny_base, loss=loss)
    trainer.objective.heads = {"t": teacher.head()}
    hidden = teacher.hidden_states(batch)[0]
    metrics = trainer.train_step([DistillPart("t", batch, 1.0)], batch.num_tokens, hidden)
    assert metrics["train/grad_norm"] > 0 and metrics["opd/kl/t_sum"] > 0


def test_recovery_table_by_hand(tmp_path: Path, tiny_base: Path) -> None:
    from distill.step import recovery_table

    path = tmp_path / "registry.json"
    for name, domain in (("m", "math"), ("c", "code")):
        register(
            path,
            SpecialistEntry(
                name, domain, str(tiny_base), "none", "b", config={"specialist": {"domain": domain}}
            ),
        )
    routes = build_routes(DistillConfig(teachers={"math": "m", "code": "c"}), path)
    base = {"eval/math/pass@1": 0.2, "eval/code/pass@1": 0.5}
    teachers = {
        "m": {"eval/math/pass@1": 0.6, "eval/code/pass@1": 0.1},
        "c": {"eval/math/pass@1": 0.2, "eval/code/pass@1": 0.4},
    }
    student = {"eval/math/pass@1": 0.5, "eval/code/pass@1": 0.45}
    table, recovered = recovery_table(base, teachers, student, routes)
    assert recovered == {
        "math": pytest.approx(0.75)
    }  # (0.5 - 0.2) / (0.6 - 0.2); code's teacher is behind the base
    assert "| math | 0.200 | 0.600 | 0.200 | 0.500 | 75% |" in table
    assert "| code | 0.500 | 0.100 | 0.400 | 0.450 | n/a (the teacher is not ahead of the base) |" in table


@pytest.mark.parametrize("parallel", [False, True])
def test_teacher_evals_side_by_side_equal_in_turn(tmp_path: Path, tiny_base: Path, parallel: bool,
                                                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """Each teacher served once and closed, scored on every domain; side by side (threads, a tokenizer each)
    the scores are the ones taken in turn, and a line per teacher says what it scored."""
    import threading

    from distill.step import DomainData, teacher_evals
    from rl.batching import TaskStream
    from rl.config import SpecialistConfig
    from rl.episodes import Prompts
    from specialists.code import eval_tasks as code_tasks

    path = tmp_path / "registry.json"
    for name, domain in (("m", "math"), ("c", "code")):
        register(path, SpecialistEntry(name, domain, str(tiny_base), "none", "b",
                                       config={"specialist": {"domain": domain}}))  # fmt: skip
    routes = build_routes(DistillConfig(teachers={"math": "m", "code": "c"}), path)
    tasks = {
        "math": math_tasks(6, "heldout"),
        "code": code_tasks(SpecialistConfig(domain="code", num_eval_tasks=4)),
    }
    data = {d: DomainData(TaskStream(t, seed=0), t) for d, t in tasks.items()}
    prompts = Prompts(load_tokenizer(str(tiny_base)))
    answers = {tuple(prompts(t)): t.answer for t in tasks["math"]}  # the same ids in every thread
    served: list[tuple[str, str]] = []
    closed: list[str] = []

    def make_generate(entry: SpecialistEntry) -> tuple[object, object]:
        def generate(ids: list[list[int]], params: SamplingParams) -> list[Rollout]:
            served.append((entry.name, threading.current_thread().name))
            right = [entry.name == "m" and tuple(row) in answers for row in ids]  # m answers the math right
            return [Rollout(tuple(row), (1,), (0.0,), "eos", f"\\boxed{{{answers[tuple(row)]}}}" if ok else "no idea")
                    for row, ok in zip(ids, right, strict=True)]  # fmt: skip

        return generate, lambda: closed.append(entry.name)

    params = SamplingParams(8, 0.0)
    result = teacher_evals(routes, data, make_generate, prompts, params, parallel=parallel)
    assert sorted(closed) == ["c", "m"] and set(result) == {"m", "c"}
    assert result["c"]["eval/math/pass@1"] == 0.0 and result["c"]["eval/code/pass@1"] == 0.0
    assert result["m"]["eval/code/pass@1"] == 0.0 and result["m"]["eval/math/pass@1"] > 0
    threads = {name for _, name in served}
    assert all(n.startswith("teacher-eval") for n in threads) if parallel else threads == {"MainThread"}
    out = capsys.readouterr().out
    assert "teacher 'c': math 0.000, code 0.000 (" in out and "teacher 'm': math " in out
