"""Routing replay (R3) for MoE models: the rollout records each token's experts, the trainer routes to them.

Hand-worked values for the pure functions; real transformers Qwen3-MoE models for the rest: the engine's
recorded routing is what a full forward of the same model chooses, and a trainer whose routers were perturbed
computes the rollout model's log-probs exactly when it replays (top-1, renormalised: the gate weight is 1).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import cast

import pytest
import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from rl.algorithms.objective import routed_logprobs, routing_metrics, token_logprobs
from rl.batching import build_train_batch
from rl.models import load_model, load_tokenizer
from rl.moe import (
    RoutingTap,
    decode_routing,
    merge_routing,
    pad_routing,
    replayed_weights,
    router_agreement,
    routers,
)
from rl.rollout.hf import HFEngine
from rl.types import SamplingParams, TrainBatch
from tests.test_moe import experts_of


def tiny_moe(top_k: int, seed: int = 0) -> Qwen3MoeForCausalLM:
    torch.manual_seed(seed)
    config = Qwen3MoeConfig(vocab_size=96, hidden_size=32, intermediate_size=64, moe_intermediate_size=32,
                            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, num_experts=8,
                            num_experts_per_tok=top_k, norm_topk_prob=True, decoder_sparse_step=1,
                            tie_word_embeddings=True, pad_token_id=0, eos_token_id=95)  # fmt: skip
    model = Qwen3MoeForCausalLM(config)
    with torch.no_grad():  # transformers leaves fused experts uninitialised outside from_pretrained
        for module in experts_of(model):
            module.gate_up_proj.normal_(0, 0.3)
            module.down_proj.normal_(0, 0.3)
        for weight in gate_weights(model):
            weight.normal_(0, 0.5)
    return model.eval()


def gate_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [cast(torch.Tensor, router.weight) for router in routers(model)]


def test_replayed_weights_are_the_routers_own_probabilities_at_the_recorded_experts() -> None:
    logits_NE = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    index_NK = torch.tensor([[3, 0]])
    assert replayed_weights(logits_NE, index_NK, norm_topk_prob=False)[0].tolist() == pytest.approx(
        [0.4, 0.1]
    )
    assert replayed_weights(logits_NE, index_NK, norm_topk_prob=True)[0].tolist() == pytest.approx([0.8, 0.2])


def test_merge_keeps_the_routers_choice_where_nothing_was_recorded() -> None:
    own = torch.tensor([[1, 2], [3, 4]])
    recorded = torch.tensor([[5, 6], [-1, -1]], dtype=torch.int16)
    assert merge_routing(own, recorded).tolist() == [[5, 6], [3, 4]]
    assert merge_routing(own, recorded).dtype == own.dtype


def test_agreement_compares_top_k_sets_and_leaves_out_unrouted_positions() -> None:
    own = torch.tensor([[[1, 2]], [[3, 4]], [[0, 1]], [[6, 7]]])  # N=4 positions, L=1 layer, K=2
    recorded = torch.tensor(
        [[[2, 1]], [[3, 5]], [[-1, -1]], [[6, 7]]]
    )  # same set, one differs, unrouted, same
    assert router_agreement(own, recorded, torch.ones(4)) == (2.0, 3.0)
    assert router_agreement(own, recorded, torch.tensor([1.0, 1.0, 1.0, 0.0])) == (1.0, 2.0)  # weight 0: out


def test_decode_routing_lines_up_prefill_and_decode_steps_with_each_rows_tokens() -> None:
    # 2 rows left-padded to width 3 (prompts of 2 and 3), L=1, K=1; the value codes where it came from
    prefill = torch.tensor([[-9], [10], [11], [20], [21], [22]], dtype=torch.int16)[:, None]  # [B*W, L, K]
    steps = [torch.tensor([[100 + s], [200 + s]], dtype=torch.int16)[:, None] for s in (1, 2, 3)]  # [B, L, K]
    row0, row1 = decode_routing([prefill, *steps], prompt_lens=[2, 3], response_lens=[3, 1])
    assert row0[:, 0, 0].tolist() == [10, 11, 101, 102, -1]  # prompt, response tokens 0 and 1, last unrouted
    assert row1[:, 0, 0].tolist() == [20, 21, 22, -1]  # one response token: never fed back
    assert pad_routing(row1, 6)[:, 0, 0].tolist() == [20, 21, 22, -1, -1, -1]


def full_forward_routing(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with RoutingTap(model) as tap, torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    return tap.calls[0]


def test_the_engine_records_what_a_full_forward_of_the_same_model_routes(moe_dir: Path) -> None:
    model = load_model(str(moe_dir))
    with torch.no_grad():
        for weight in gate_weights(model):  # an untrained router is all zeros: every choice a tie
            weight.normal_(0, 0.5)
    engine = HFEngine(model, load_tokenizer(str(moe_dir)), max_batch_size=8)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]
    params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=3, ignore_eos=True)
    assert all(r.routing is None for r in engine.generate(prompts, params))  # evals: nothing recorded
    outs = engine.generate(prompts, replace(params, record_routing=True))
    for prompt, out in zip(prompts, outs, strict=True):
        ids = list(prompt) + list(out.response_ids)
        assert out.routing is not None and tuple(out.routing.shape) == (len(ids), 4, 2)  # 4 MoE layers, top-2
        assert out.routing.dtype == torch.int16 and (out.routing[-1] == -1).all()
        same, compared = router_agreement(
            full_forward_routing(model, ids)[:-1], out.routing[:-1], torch.ones(len(ids) - 1)
        )
        assert compared == 4 * (len(ids) - 1) and same == compared
    batch = build_train_batch(outs, [1.0, 0.0, -1.0], pad_id=0)
    assert batch.routing_BTLK is not None
    assert tuple(batch.routing_BTLK.shape) == (3, batch.input_ids_BT.shape[1], 4, 2)
    assert (batch.routing_BTLK[batch.attention_mask_BT == 0] == -1).all()  # padding is unrouted
    assert batch.select(slice(1, 2)).to("cpu").routing_BTLK is not None


def routed_batch(model: torch.nn.Module, ids_BT: torch.Tensor, prompt_len: int) -> TrainBatch:
    """A batch of ``ids_BT`` whose routing is ``model``'s own (the last position unrouted, as a rollout's)."""
    rows, width = ids_BT.shape
    with RoutingTap(model) as tap, torch.no_grad():
        model(input_ids=ids_BT)
    routing = tap.calls[0].view(rows, width, *tap.calls[0].shape[1:]).clone()
    routing[:, -1] = -1
    mask = torch.zeros(rows, width)
    mask[:, prompt_len:] = 1
    zeros = torch.zeros(rows, width)
    return TrainBatch(ids_BT, torch.ones_like(ids_BT), mask, zeros, zeros, routing_BTLK=routing)


def test_a_trainer_with_other_routers_computes_the_rollouts_logprobs_when_it_replays() -> None:
    # top-1, renormalised: a token's gate weight is 1 whichever expert it goes to, so routing to the rollout's
    # experts makes the perturbed-router trainer compute exactly the rollout model's function
    rollout_model = tiny_moe(top_k=1)
    trainer_model = copy.deepcopy(rollout_model)
    with torch.no_grad():
        for weight in gate_weights(trainer_model):
            weight.add_(torch.randn_like(weight))
    ids = torch.randint(1, 95, (3, 12), generator=torch.Generator().manual_seed(0))
    batch = routed_batch(rollout_model, ids, prompt_len=4)
    rollout_lp, _ = token_logprobs(rollout_model, ids, batch.attention_mask_BT)

    own_lp, _, own = routed_logprobs(trainer_model, trainer_model, batch, 1.0, replay=False)
    replay_lp, _, _ = routed_logprobs(trainer_model, trainer_model, batch, 1.0, replay=True)
    assert (own_lp - rollout_lp).abs().max() > 1e-2  # the routers disagree, and it shows
    torch.testing.assert_close(replay_lp, rollout_lp, rtol=0, atol=1e-6)
    assert own is not None
    metrics = routing_metrics(own, batch, own_lp)
    assert 0.0 < metrics["mismatch/router_agreement"] < 0.9
    assert metrics["mismatch/no_replay/kl_k3"] > 1e-4  # what replay removes

    # the same routers: full agreement, and replaying a model's own routing changes nothing, bitwise
    own_lp, _, own = routed_logprobs(rollout_model, rollout_model, batch, 1.0, replay=False)
    replay_lp, _, _ = routed_logprobs(rollout_model, rollout_model, batch, 1.0, replay=True)
    assert own is not None and routing_metrics(own, batch, None) == {"mismatch/router_agreement": 1.0}
    assert torch.equal(own_lp, replay_lp)


def test_under_replay_the_router_still_gets_a_gradient_through_its_gate_weights() -> None:
    model = tiny_moe(top_k=2).train()
    ids = torch.randint(1, 95, (2, 10), generator=torch.Generator().manual_seed(1))
    batch = routed_batch(tiny_moe(top_k=2, seed=1), ids, prompt_len=3)  # another model's experts: real replay
    logprobs, _, _ = routed_logprobs(model, model, batch, 1.0, replay=True)
    (logprobs * batch.loss_mask_BT).sum().backward()
    for weight in gate_weights(model):
        assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_a_replay_that_does_not_match_the_batch_is_an_error() -> None:
    model = tiny_moe(top_k=2)
    ids = torch.randint(1, 95, (2, 8), generator=torch.Generator().manual_seed(2))
    routing = routed_batch(model, ids, prompt_len=3).routing_BTLK
    assert routing is not None
    wrong = routing.flatten(0, 1)[2:]  # 14 positions for a forward of 16
    with (
        pytest.raises(ValueError, match=r"\(14, 2\) recorded experts for a router that chose \(16, 2\)"),
        RoutingTap(model, wrong),
    ):
        model(input_ids=ids)


def test_the_benchmark_summary_reads_the_kl_without_replay_from_the_loss_when_replay_is_off() -> None:
    from benchmarks.routing_replay import summarize

    summary = {"eval/pass@1_start": 0.0, "eval/pass@1": 0.5}
    off = [{"step": 0}, {"mismatch/kl_k3": 2e-4, "mismatch/router_agreement": 0.9},
           {"mismatch/kl_k3": 4e-4, "mismatch/router_agreement": 0.8}]  # fmt: skip
    on = [
        {"step": 0},
        {"mismatch/kl_k3": 1e-4, "mismatch/no_replay/kl_k3": 3e-4, "mismatch/router_agreement": 0.9},
    ]
    assert summarize(off, summary) == pytest.approx(
        {
            "router_agreement": 0.85,
            "kl_k3": 3e-4,
            "kl_k3_no_replay": 3e-4,
            "pass_at_1_start": 0.0,
            "pass_at_1": 0.5,
        }
    )
    assert summarize(on, summary)["kl_k3_no_replay"] == pytest.approx(3e-4)
    assert summarize(on, summary)["kl_k3"] == pytest.approx(1e-4)
