"""The torch trainer: gradients invariant to micro-batching and to DDP ranks, non-finite skip, schedule, save/load."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rl.algorithms.objective import PolicyObjective, token_logprobs
from rl.batching import build_train_batch
from rl.config import AlgorithmConfig, ClusterConfig, TrainerConfig
from rl.models import load_model, load_tokenizer
from rl.rollout.hf import HFEngine
from rl.sft import chat_prompt_ids
from rl.trainer.group import TrainerGroup
from rl.trainer.spec import TrainerSpec
from rl.trainer.torch_backend import TorchTrainer, lr_lambda
from rl.types import LossNormalizer, SamplingParams, TrainBatch
from specialists.synthetic import math_tasks


@pytest.fixture(scope="module")
def batch(tiny_base: Path) -> TrainBatch:
    tokenizer = load_tokenizer(str(tiny_base))
    engine = HFEngine(load_model(str(tiny_base)), tokenizer)
    prompts = [chat_prompt_ids(tokenizer, t.prompt) for t in math_tasks(8, "train")]
    rollouts = engine.generate(prompts, SamplingParams(max_new_tokens=12, seed=0))
    advantages = [1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 0.25, -0.25]
    return build_train_batch(rollouts, advantages, int(tokenizer.pad_token_id))  # type: ignore[arg-type]


def make_trainer(base: Path, **overrides) -> TorchTrainer:
    cfg = TrainerConfig(**{"lr": 1e-3, "micro_batch_size": 8, **overrides})
    return TorchTrainer(
        TrainerSpec(str(base), cfg, total_steps=10, seed=0), PolicyObjective(AlgorithmConfig())
    )


def norm_of(batch: TrainBatch) -> LossNormalizer:
    return LossNormalizer(batch.num_tokens, batch.num_sequences, 12)


def test_step_updates_weights_and_reports_metrics(tiny_base: Path, batch: TrainBatch) -> None:
    trainer = make_trainer(tiny_base)
    before = trainer.export_weights()
    metrics = trainer.train_step(batch, norm_of(batch))
    after = trainer.export_weights()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert metrics["train/nonfinite"] == 0.0 and math.isfinite(metrics["train/loss"])
    assert metrics["train/tokens"] == batch.num_tokens and metrics["train/entropy"] > 0
    assert {"train/clip_frac", "train/grad_norm", "train/lr", "train/ratio_mean"} <= set(metrics)


def test_tf32_is_the_trainers_matmul_setting(tiny_base: Path) -> None:
    """``trainer.tf32`` sets the process's float32 matmul mode (it acts on a GPU; the flag is what can be seen here)."""
    try:
        make_trainer(tiny_base, tf32=True)
        assert torch.backends.cuda.matmul.allow_tf32
        make_trainer(tiny_base)
        assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False


@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_one_small_step_moves_the_sequence_logprob_with_its_advantage(
    tiny_base: Path, batch: TrainBatch, advantage: float
) -> None:
    row = batch.select(slice(0, 1))
    row = TrainBatch(row.input_ids_BT, row.attention_mask_BT, row.loss_mask_BT,
                     row.loss_mask_BT * advantage, row.rollout_logprobs_BT)  # fmt: skip
    trainer = make_trainer(tiny_base, lr=1e-5)

    def seq_logprob() -> float:
        with torch.no_grad():
            lp, _ = token_logprobs(trainer.model, row.input_ids_BT, row.attention_mask_BT)
        return float((lp * row.loss_mask_BT).sum())

    start = seq_logprob()
    trainer.train_step(row, norm_of(row))
    assert (seq_logprob() - start) * advantage > 0


def test_micro_batching_gives_the_same_gradient(tiny_base: Path, batch: TrainBatch) -> None:
    whole, split = make_trainer(tiny_base, micro_batch_size=8), make_trainer(tiny_base, micro_batch_size=3)
    a, b = whole.train_step(batch, norm_of(batch)), split.train_step(batch, norm_of(batch))
    assert a["train/grad_norm"] == pytest.approx(b["train/grad_norm"], rel=1e-4)
    assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-4, abs=1e-6)
    for pa, pb in zip(whole.optimizer.state.values(), split.optimizer.state.values(), strict=True):
        torch.testing.assert_close(pa["exp_avg"], pb["exp_avg"], rtol=1e-4, atol=1e-8)


def test_chunked_log_softmax_has_the_values_and_gradients_of_one_pass(
    tiny_base: Path, batch: TrainBatch
) -> None:
    """Positions in chunks (checkpointed under autograd) give what one pass over all of them gives."""
    model = load_model(str(tiny_base))
    vocab = model.config.vocab_size
    grads = []
    for chunk in (2**28, batch.num_sequences * vocab * 3):  # one chunk; 3 positions a chunk
        model.zero_grad()
        lp, entropy = token_logprobs(model, batch.input_ids_BT, batch.attention_mask_BT, 0.7, chunk)
        ((lp * batch.loss_mask_BT).sum() + entropy.sum()).backward()
        grads.append((lp.detach(), entropy.detach(), [p.grad.clone() for p in model.parameters()]))
    (lp_a, ent_a, g_a), (lp_b, ent_b, g_b) = grads
    torch.testing.assert_close(lp_a, lp_b)
    torch.testing.assert_close(ent_a, ent_b)
    for a, b in zip(g_a, g_b, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_micro_batches_drop_the_padding_of_longer_rows(tiny_base: Path, batch: TrainBatch) -> None:
    """A micro-batch runs at its own width; the pass before the step reads the same log-probs as one row at a
    time."""
    lengths = batch.attention_mask_BT.sum(1)
    short = int(lengths.argmin())
    row = batch.select(slice(short, short + 1)).trimmed()
    assert row.input_ids_BT.shape[1] == int(lengths[short]) < batch.input_ids_BT.shape[1]
    assert torch.equal(row.loss_mask_BT, batch.loss_mask_BT[short : short + 1, : int(lengths[short])])
    assert batch.trimmed() is batch  # its longest row is the width already
    trainer = make_trainer(tiny_base, micro_batch_size=3)
    old = trainer.forward_logprobs(batch)
    assert old.shape == batch.input_ids_BT.shape
    assert not old[:, batch.attention_mask_BT[:3].sum(1).max() :][
        :3
    ].any()  # 0 past the first micro-batch's width
    for b in range(batch.num_sequences):
        one = batch.select(slice(b, b + 1)).trimmed()
        with torch.no_grad():
            lp, _ = token_logprobs(trainer.model, one.input_ids_BT, one.attention_mask_BT)
        torch.testing.assert_close(old[b, : lp.shape[1]], lp[0], rtol=1e-4, atol=1e-5)


def test_nonfinite_loss_skips_the_update(tiny_base: Path, batch: TrainBatch, monkeypatch) -> None:
    monkeypatch.setenv("DISTILLERY_FAULT_NAN_AFTER", "0")
    trainer = make_trainer(tiny_base)
    before = trainer.export_weights()
    metrics = trainer.train_step(batch, norm_of(batch))
    assert metrics["train/nonfinite"] == 1.0
    after = trainer.export_weights()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not trainer.optimizer.state  # Adam moments untouched


def test_lr_schedule_by_hand() -> None:
    cfg = TrainerConfig(lr_schedule="cosine", warmup_steps=2, min_lr_ratio=0.1)
    f = lr_lambda(cfg, total_steps=6)
    # warmup: (s+1)/2 -> 0.5, 1.0; then cosine over 4 steps from 1.0 to 0.1: progress 0, .25, .5, .75, 1
    expected = [0.5, 1.0, 1.0, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)), 0.55]
    assert [f(s) for s in range(5)] == pytest.approx(expected)
    assert lr_lambda(TrainerConfig(lr_schedule="linear", min_lr_ratio=0.0), 4)(2) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"unknown trainer\.lr_schedule 'exp'"):
        lr_lambda(TrainerConfig(lr_schedule="exp"), 4)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_save_and_load_restore_the_next_step(
    tiny_base: Path, batch: TrainBatch, tmp_path: Path, optimizer: str
) -> None:
    """The step after a resume is bitwise the step without one: weights, optimizer state (AdamW moments; Muon's
    momentum buffers too), LR schedule and RNG all come back."""
    first = make_trainer(tiny_base, optimizer=optimizer)
    first.train_step(batch, norm_of(batch))
    first.save(str(tmp_path))
    resumed = make_trainer(tiny_base, optimizer=optimizer)
    resumed.load(str(tmp_path))
    a, b = first.train_step(batch, norm_of(batch)), resumed.train_step(batch, norm_of(batch))
    assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-6)
    wa, wb = first.export_weights(), resumed.export_weights()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_two_ddp_ranks_over_gloo_equal_one_rank(
    tiny_base: Path, batch: TrainBatch, ray_local, optimizer: str
) -> None:
    cluster = ClusterConfig(actor_cpus=0.5, torch_threads=1)
    results, weights = [], []
    for ranks in (1, 2):
        cfg = TrainerConfig(lr=1e-3, num_ranks=ranks, micro_batch_size=3, optimizer=optimizer)
        group = TrainerGroup(TrainerSpec(str(tiny_base), cfg, 10),
                             PolicyObjective(AlgorithmConfig()), cluster, {})  # fmt: skip
        results.append(group.train_step(batch, max_response_tokens=12))
        weights.append(ray_local.get(group.export_weights()))
        group.shutdown()
    one, two = results
    assert one["train/grad_norm"] == pytest.approx(two["train/grad_norm"], rel=1e-4)
    assert one["train/loss"] == pytest.approx(two["train/loss"], rel=1e-4, abs=1e-6)
    # Adam's first step is ~lr * sign(grad): a scaling or averaging bug moves weights by ~lr (1e-3), while
    # float reordering across ranks only flips near-zero gradients by ~1e-6. Muon's step (~2e-4 a weight here)
    # goes through a bfloat16 Newton-Schulz iteration, where that reordering can flip a rounding (~2e-5).
    atol = 5e-5 if optimizer == "muon" else 1e-5
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=1e-3, atol=atol)


@pytest.mark.parametrize("estimator", ["k1", "k3", "k3_ratio"])
def test_kl_to_the_frozen_reference_starts_at_zero_and_grows(
    tiny_base: Path, batch: TrainBatch, estimator: str
) -> None:
    algo = AlgorithmConfig(kl_coef=0.1, kl_estimator=estimator)
    trainer = TorchTrainer(
        TrainerSpec(str(tiny_base), TrainerConfig(lr=1e-3), total_steps=10, seed=0), PolicyObjective(algo)
    )
    first = trainer.train_step(batch, norm_of(batch))
    assert first["train/kl_ref"] == pytest.approx(0.0, abs=1e-6)  # the policy is the reference at step 1
    second = trainer.train_step(batch, norm_of(batch))
    assert abs(second["train/kl_ref"]) > 1e-6
    assert all(not p.requires_grad for p in trainer.objective.ref_model.parameters())  # type: ignore[union-attr]


def test_mismatch_is_measured_every_step_and_corrections_apply(tiny_base: Path, batch: TrainBatch) -> None:
    plain = make_trainer(tiny_base).train_step(batch, norm_of(batch))
    # the batch's rollout log-probs come from the hf engine with the same weights: tiny mismatch
    assert plain["mismatch/kl_k3"] == pytest.approx(0.0, abs=1e-6)
    assert plain["mismatch/ppl_ratio"] == pytest.approx(1.0, abs=1e-4)
    assert plain["mismatch/prob_corr"] == pytest.approx(1.0, abs=1e-4)
    # a rollout that was twice as likely as the trainer on every token: TIS caps pi/mu = 0.5 at nothing
    shifted = TrainBatch(batch.input_ids_BT, batch.attention_mask_BT, batch.loss_mask_BT, batch.advantages_BT,
                         batch.rollout_logprobs_BT + math.log(2.0) * batch.loss_mask_BT)  # fmt: skip
    algo = AlgorithmConfig(correction="tis", tis_cap=2.0)
    trainer = TorchTrainer(
        TrainerSpec(str(tiny_base), TrainerConfig(lr=1e-3), total_steps=10, seed=0), PolicyObjective(algo)
    )
    tis = trainer.train_step(shifted, norm_of(shifted))
    assert tis["mismatch/kl_k1"] == pytest.approx(math.log(2.0), rel=1e-4)
    assert tis["mismatch/tis_weight_mean"] == pytest.approx(0.5, rel=1e-4)
    assert tis["train/loss"] == pytest.approx(plain["train/loss"] * 0.5, rel=1e-3, abs=1e-6)
    # the typed config refuses it now, before a trainer is built (the trainer's own check stays behind it)
    with pytest.raises(ValueError, match=r"unknown (mismatch correction|algorithm\.correction) 'tiss'"):
        TorchTrainer(TrainerSpec(str(tiny_base), TrainerConfig(), total_steps=1),
                     PolicyObjective(AlgorithmConfig(correction="tiss")))  # fmt: skip
