"""trainer.optimizer: which parameters Muon takes, one Muon + AdamW step against a reference written here, the LR
schedule on both, and bad configs."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from rl.config import ConfigValueError, TrainerConfig
from rl.trainer.optim import MuonWithAdamW, make_optimizer, muon_split


def reference_newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Muon's quintic Newton-Schulz orthogonalization (Keller Jordan's muon.py), in float32 here."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (g.norm() + 1e-7)
    wide = x.shape[0] <= x.shape[1]
    x = x if wide else x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 8)
        self.proj = torch.nn.Linear(8, 12, bias=True)
        self.norm = torch.nn.LayerNorm(12)
        self.head = torch.nn.Linear(12, 10, bias=False)

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.head


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest() -> None:
    model = Tiny()
    muon, adamw = muon_split(model)
    assert muon == ["proj.weight"]
    assert adamw == ["embed.weight", "proj.bias", "norm.weight", "norm.bias", "head.weight"]


def tiny_moe() -> Qwen3MoeForCausalLM:
    config = Qwen3MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                            num_experts=4, num_experts_per_tok=2, tie_word_embeddings=True)  # fmt: skip
    return Qwen3MoeForCausalLM(config)


def test_a_qwen3_moe_router_stays_with_adamw_and_the_fused_experts_go_to_muon() -> None:
    model = tiny_moe()
    muon, adamw = muon_split(model)
    params = dict(model.named_parameters())
    assert set(muon) | set(adamw) == set(params) and not set(muon) & set(adamw)
    assert "model.layers.0.mlp.gate.weight" in adamw  # the router
    assert "model.embed_tokens.weight" in adamw  # tied to the head: one tensor, AdamW's
    assert {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.o_proj.weight"} <= set(muon)
    assert {"model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj"} <= set(muon)
    assert all(params[n].ndim == 2 or n.endswith(("gate_up_proj", "down_proj")) for n in muon)
    assert all(params[n].ndim != 2 or n.endswith("gate.weight") or "embed" in n for n in adamw)


def test_fused_experts_step_as_torch_muon_on_each_expert_alone() -> None:
    torch.manual_seed(0)
    model = tiny_moe()
    experts = model.model.layers[0].mlp.experts
    fused = experts.gate_up_proj
    before = fused.detach().clone()
    cfg = TrainerConfig(optimizer="muon", lr=0.02, weight_decay=0.1)
    opt = MuonWithAdamW(model, cfg)
    grads = [torch.randn_like(fused) for _ in range(2)]
    for g in grads:  # two steps: the momentum buffer per expert carries over
        opt.zero_grad(set_to_none=True)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        fused.grad = g.clone()
        opt.step()
    for e in range(fused.shape[0]):
        alone = torch.nn.Parameter(before[e].clone())
        reference = torch.optim.Muon([alone], lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True,
                                     adjust_lr_fn="match_rms_adamw")  # fmt: skip
        for g in grads:
            alone.grad = g[e].clone()
            reference.step()
        assert torch.equal(fused.detach()[e], alone.detach()), e
    opt.zero_grad(set_to_none=True)
    assert fused.grad is None and experts.down_proj.grad is None
    state = opt.state_dict()  # a resumed run gets every expert's momentum back
    other_model = tiny_moe()
    other = MuonWithAdamW(other_model, cfg)
    other.load_state_dict(state)
    buffers = [s["momentum_buffer"] for s in other.muon.state.values()]
    assert len(buffers) == len(opt.muon.state) and all(
        torch.equal(a["momentum_buffer"], b) for a, b in zip(opt.muon.state.values(), buffers, strict=True)
    )


def test_one_step_equals_the_reference() -> None:
    """Muon on proj.weight: momentum 0.95 with Nesterov from a zero buffer gives the update direction
    g.lerp(0.05 g, 0.95) = 0.0975 g, orthogonalized, times lr * 0.2 * sqrt(max(12, 8)), after decoupled weight
    decay; everything else is AdamW's first step."""
    torch.manual_seed(0)
    model = Tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    cfg = TrainerConfig(optimizer="muon", lr=0.01, weight_decay=0.1)
    opt = make_optimizer(model, cfg)
    assert isinstance(opt, MuonWithAdamW)
    for n, p in model.named_parameters():
        p.grad = grads[n].clone()
    opt.step()
    g = grads["proj.weight"]
    update = reference_newton_schulz(g.lerp(0.05 * g, 0.95))
    expected = before["proj.weight"] * (1 - 0.01 * 0.1) - 0.01 * 0.2 * math.sqrt(12) * update
    # torch runs the iteration in bfloat16: agree to its precision (the step is ~0.007 a weight)
    torch.testing.assert_close(model.proj.weight.detach(), expected, atol=2e-4, rtol=0)
    twin = Tiny()
    twin.load_state_dict(before)
    adam = torch.optim.AdamW([p for n, p in twin.named_parameters() if n != "proj.weight"], lr=0.01,
                             betas=(0.9, 0.99), weight_decay=0.1)  # fmt: skip
    for n, p in twin.named_parameters():
        p.grad = grads[n].clone()
    adam.step()
    for n, p in twin.named_parameters():
        if n != "proj.weight":
            assert torch.equal(p, dict(model.named_parameters())[n]), n


def test_the_lr_schedule_and_zero_grad_reach_both_optimizers() -> None:
    model = Tiny()
    opt = MuonWithAdamW(model, TrainerConfig(optimizer="muon", lr=0.1))
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    scheduler.step()
    assert [g["lr"] for g in opt.muon.param_groups + opt.adamw.param_groups] == [0.05, 0.05]
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())


def test_state_dict_round_trip_and_a_mismatched_state_is_one_line() -> None:
    model = Tiny()
    opt = MuonWithAdamW(model, TrainerConfig(optimizer="muon"))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    state = opt.state_dict()
    other = MuonWithAdamW(Tiny(), TrainerConfig(optimizer="muon"))
    other.load_state_dict(state)
    buf_a = next(iter(opt.muon.state.values()))["momentum_buffer"]
    buf_b = next(iter(other.muon.state.values()))["momentum_buffer"]
    assert torch.equal(buf_a, buf_b)
    adamw_state = torch.optim.AdamW(Tiny().parameters()).state_dict()
    with pytest.raises(ValueError, match=r"trained with trainer\.optimizer=adamw"):
        other.load_state_dict(adamw_state)


def test_bad_optimizer_configs() -> None:
    with pytest.raises(ConfigValueError, match=r"trainer\.optimizer"):
        TrainerConfig(optimizer="sgd")
    with pytest.raises(ConfigValueError, match=r"trainer\.optimizer=muon needs trainer\.backend=torch"):
        TrainerConfig(optimizer="muon", backend="deepspeed")
