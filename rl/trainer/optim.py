"""The trainer's optimizer by name (``trainer.optimizer``): AdamW, or Muon on the hidden matrices with AdamW on
the rest, as DeepSeek-V4 and Moonlight train.

Muon (Jordan et al. 2024; torch.optim.Muon) orthogonalizes each 2-D weight's momentum by a Newton-Schulz
iteration and steps along it. It is for the matrices inside the blocks (attention and MLP projections, 2-D expert
weights); embeddings, the LM head, norms, biases and MoE routers keep AdamW (Muon's authors and Moonlight do the
same: their gradients are not matrix-shaped updates of a hidden map). Muon's step is scaled by
``0.2 * sqrt(max(rows, cols))`` (torch's ``adjust_lr_fn="match_rms_adamw"``, Moonlight's rule), so its updates have
AdamW's RMS and one ``trainer.lr`` serves both. An MoE layer's fused experts ([E, out, in]: transformers' 3-D
``gate_up_proj`` / ``down_proj``) get Muon expert by expert: each expert's matrix is its own map, orthogonalized on
its own (torch's Muon over 2-D views of the slices, whose gradients are the slices of the fused gradient).
"""

from __future__ import annotations

from typing import Any

import torch

from rl.config import TrainerConfig
from rl.moe import EXPERT_PARAMS

OPTIMIZERS = ("adamw", "muon")
MUON_MOMENTUM = 0.95
# MoE routers: Qwen3-MoE and Mixtral name theirs mlp.gate, others router
ROUTER_SUFFIXES = (".gate.weight", ".router.weight")


def muon_split(model: torch.nn.Module) -> tuple[list[str], list[str]]:
    """(names Muon updates, names AdamW updates) of the model's trainable parameters, every one in exactly one;
    Muon's include fused 3-D expert weights (updated expert by expert)."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    get_head: Any = getattr(model, "get_output_embeddings", None)
    head: Any = get_head() if callable(get_head) else None
    if head is not None:
        tables.add(id(head.weight))
    muon, adamw = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        hidden_matrix = param.ndim == 2 and id(param) not in tables and not name.endswith(ROUTER_SUFFIXES)
        experts = param.ndim == 3 and name.rpartition(".")[2] in EXPERT_PARAMS
        (muon if hidden_matrix or experts else adamw).append(name)
    return muon, adamw


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer object over two: Muon for ``muon_names``, AdamW for the rest. The param groups are the inner
    optimizers' own dicts, so an LR scheduler and ``zero_grad`` act on both; the state dict holds both states."""

    def __init__(self, model: torch.nn.Module, cfg: TrainerConfig):
        muon_names, adamw_names = muon_split(model)
        params = dict(model.named_parameters())
        self.fused = [params[n] for n in muon_names if params[n].ndim == 3]
        # each expert's [out, in] as a parameter sharing the fused tensor's storage: Muon's in-place update of a
        # view is the update of that expert in the fused tensor
        self.expert_views = [
            (p, e, torch.nn.Parameter(p.data[e])) for p in self.fused for e in range(p.shape[0])
        ]
        matrices = [params[n] for n in muon_names if params[n].ndim == 2] + [
            v for _, _, v in self.expert_views
        ]
        self.muon = torch.optim.Muon(
            matrices, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=MUON_MOMENTUM, nesterov=True,
            adjust_lr_fn="match_rms_adamw",
        )  # fmt: skip
        self.adamw = torch.optim.AdamW(
            [params[n] for n in adamw_names], lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]),
            weight_decay=cfg.weight_decay,
        )  # fmt: skip
        # Optimizer.add_param_group keeps the dicts it is given: these groups are the inner optimizers' own
        super().__init__(self.muon.param_groups + self.adamw.param_groups, {})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("MuonWithAdamW.step takes no closure")
        for fused, e, view in self.expert_views:
            view.grad = None if fused.grad is None else fused.grad[e]
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for fused in self.fused:  # not in any param group (their views are)
            if set_to_none:
                fused.grad = None
            elif fused.grad is not None:
                fused.grad.zero_()

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        if set(state_dict) != {"muon", "adamw"}:
            raise ValueError(f"not a Muon + AdamW optimizer state (keys {sorted(state_dict)}): was the run trained "
                             "with trainer.optimizer=adamw?")  # fmt: skip
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])


def make_optimizer(model: torch.nn.Module, cfg: TrainerConfig) -> torch.optim.Optimizer:
    """``trainer.optimizer`` over ``model``'s parameters."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]),
                                 weight_decay=cfg.weight_decay)  # fmt: skip
    if cfg.optimizer == "muon":
        return MuonWithAdamW(model, cfg)
    raise ValueError(f"unknown trainer.optimizer {cfg.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
