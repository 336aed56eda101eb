"""The hf engine against independent oracles: HF's own generate (greedy) and a full forward (log-probs).

Every engine test runs with both decode loops: ``dynamic`` (the model's forward, growing cache) and
``static`` (rl/rollout/static_decode.py: preallocated cache, its own forward; eager here, CUDA graphs on GPU).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rl.algorithms.objective import token_logprobs
from rl.models import load_model, load_tokenizer
from rl.rollout.hf import HFEngine
from rl.rollout.sampling import filter_logits, sample_tokens
from rl.sft import chat_prompt_ids
from rl.types import SamplingParams
from specialists.synthetic import math_tasks


@pytest.fixture(scope="module", params=["dynamic", "static"])
def engine(tiny_base: Path, request: pytest.FixtureRequest) -> HFEngine:
    return HFEngine(
        load_model(str(tiny_base)), load_tokenizer(str(tiny_base)), max_batch_size=16, decode=request.param
    )


@pytest.fixture(scope="module")
def prompts(engine: HFEngine) -> list[list[int]]:
    return [chat_prompt_ids(engine.tokenizer, t.prompt) for t in math_tasks(6, "heldout")]


def test_greedy_matches_transformers_generate(engine: HFEngine, prompts: list[list[int]]) -> None:
    ours = engine.generate(prompts, SamplingParams(max_new_tokens=20, temperature=0))
    for prompt, rollout in zip(prompts, ours, strict=True):
        ref = engine.model.generate(  # type: ignore[operator]
            torch.tensor([prompt]),
            max_new_tokens=20,
            do_sample=False,
            eos_token_id=sorted(engine.eos_ids),
            pad_token_id=engine.pad_id,
        )[0, len(prompt) :].tolist()
        while ref and ref[-1] == engine.pad_id and engine.pad_id not in engine.eos_ids:
            ref.pop()
        assert list(rollout.response_ids) == ref


def test_batched_left_padding_equals_one_at_a_time(engine: HFEngine, prompts: list[list[int]]) -> None:
    params = SamplingParams(max_new_tokens=16, temperature=0)
    batched = engine.generate(prompts, params)
    single = [engine.generate([p], params)[0] for p in prompts]
    assert [r.response_ids for r in batched] == [r.response_ids for r in single]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_logprobs_equal_the_trainers_forward(
    engine: HFEngine, prompts: list[list[int]], temperature: float
) -> None:
    rollouts = engine.generate(prompts, SamplingParams(max_new_tokens=16, temperature=temperature, seed=5))
    for r in rollouts:
        ids = torch.tensor([r.prompt_ids + r.response_ids])
        with torch.no_grad():
            full, _ = token_logprobs(engine.model, ids, torch.ones_like(ids), temperature)
        torch.testing.assert_close(
            torch.tensor(r.logprobs), full[0, len(r.prompt_ids) :], atol=1e-4, rtol=1e-4
        )


def test_seeded_sampling_is_reproducible_and_seed_sensitive(
    engine: HFEngine, prompts: list[list[int]]
) -> None:
    a = engine.generate(prompts, SamplingParams(max_new_tokens=16, seed=1))
    b = engine.generate(prompts, SamplingParams(max_new_tokens=16, seed=1))
    c = engine.generate(prompts, SamplingParams(max_new_tokens=16, seed=2, temperature=2.0))
    assert a == b and a != c


def test_finish_reasons_eos_length_and_stop(engine: HFEngine, prompts: list[list[int]]) -> None:
    short = engine.generate(prompts[:2], SamplingParams(max_new_tokens=2, temperature=0))
    assert all(r.finish_reason == "length" and len(r.response_ids) == 2 for r in short)
    full = engine.generate(prompts, SamplingParams(max_new_tokens=48, temperature=0))
    for r in full:
        assert (r.finish_reason == "eos") == (r.response_ids[-1] in engine.eos_ids)
    stopped = engine.generate(prompts, SamplingParams(max_new_tokens=48, temperature=0, stop=("=",)))
    assert all(r.finish_reason == "stop" and "=" in r.text for r in stopped if "=" in r.text)
    assert any(r.finish_reason == "stop" for r in stopped)
    assert all(len(s.response_ids) <= len(f.response_ids) for s, f in zip(stopped, full, strict=True))


def test_filter_logits_top_k_and_top_p_by_hand() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2, top_p=1.0)).tolist() == [[False, False, True, True]]
    # top_p=0.7: cumulative mass before each token is 0, .5, .8, .95 -> keep the first two
    assert torch.isinf(filter_logits(logits, top_k=0, top_p=0.7)).tolist() == [[False, False, True, True]]
    # top_p=0.5: the mass before token 2 is exactly 0.5 >= 0.5 -> only the first token survives
    assert torch.isinf(filter_logits(logits, top_k=0, top_p=0.5)).tolist() == [[False, True, True, True]]


def test_top_k_one_is_greedy_and_logprob_is_untruncated() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    gen = torch.Generator().manual_seed(0)
    tokens, logprobs = sample_tokens(logits, SamplingParams(temperature=1.0, top_k=1), gen)
    assert tokens.tolist() == [0, 1]
    torch.testing.assert_close(logprobs, logits.log_softmax(-1)[[0, 1], [0, 1]])


def test_load_weights_rejects_mismatched_names(engine: HFEngine) -> None:
    with pytest.raises(ValueError, match="does not match the model"):
        engine.load_weights({"not.a.weight": torch.zeros(1)})


@pytest.mark.parametrize(("fp4", "prefill_tokens"), [("none", 32768), ("mxfp4", 32768), ("mxfp4", 70)])
def test_static_decode_equals_dynamic(
    tiny_base: Path, fp4: str, prefill_tokens: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same tokens (greedy) and log-probs from both loops, with small prompt and attention buckets so that
    prompts are padded past their width and steps cross several attention lengths; with a small prefill
    budget the prompts are prefilled a row or two at a time, into the right rows of the cache."""
    from rl.fp4.packed import pack_linears
    from rl.fp4.qat import qat_linear_names
    from rl.rollout import static_decode

    monkeypatch.setattr(static_decode, "PREFILL_TOKENS", prefill_tokens)

    model, tokenizer = load_model(str(tiny_base)), load_tokenizer(str(tiny_base))
    pack_linears(model, qat_linear_names(model, fp4) if fp4 != "none" else [], fp4)
    dynamic = HFEngine(model, tokenizer, decode="dynamic")
    static = HFEngine(model, tokenizer, decode="static")
    assert static.static is not None
    static.static.prompt_multiple, static.static.attend_bucket, static.static.sync_every = 8, 8, 4
    prompts = [chat_prompt_ids(tokenizer, t.prompt) for t in math_tasks(5, "heldout")]
    prompts[0] = prompts[0][:5]  # one much shorter row: heavy left padding
    params = SamplingParams(max_new_tokens=30, temperature=0)
    for a, b in zip(dynamic.generate(prompts, params), static.generate(prompts, params), strict=True):
        assert a.response_ids == b.response_ids and a.finish_reason == b.finish_reason
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=1e-4)


def test_ignore_eos_generates_exactly_max_new_tokens(engine: HFEngine, prompts: list[list[int]]) -> None:
    rollouts = engine.generate(prompts, SamplingParams(max_new_tokens=40, ignore_eos=True, seed=3))
    assert all(len(r.response_ids) == 40 and r.finish_reason == "length" for r in rollouts)
    assert any(t in engine.eos_ids for r in rollouts for t in r.response_ids[:-1])  # went past an EOS


def test_static_decode_rejects_unsupported_models_and_modes(tiny_base: Path) -> None:
    model, tokenizer = load_model(str(tiny_base)), load_tokenizer(str(tiny_base))
    with pytest.raises(ValueError, match=r"unknown rollout\.decode 'fast'"):
        HFEngine(model, tokenizer, decode="fast")
    model.config.model_type = "gpt2"
    with pytest.raises(ValueError, match="model_type 'gpt2' is not one of"):
        HFEngine(model, tokenizer, decode="static")
    assert HFEngine(model, tokenizer, decode="auto").decode == "dynamic"


@pytest.mark.parametrize("fp4", ["none", "mxfp4"])
def test_weight_updates_reach_the_static_decoders_fused_projections(tiny_base: Path, fp4: str) -> None:
    """q/k/v and gate/up run as one fused matmul each, over the modules' own (re-pointed) storage: a weight
    update into the modules must change what the fused layers compute, exactly as a fresh engine would."""
    from rl.fp4.packed import pack_linears
    from rl.fp4.qat import export_weights, qat_linear_names

    def engine(model: torch.nn.Module) -> HFEngine:
        names = qat_linear_names(model, fp4) if fp4 != "none" else []
        pack_linears(model, names, fp4)
        return HFEngine(model, load_tokenizer(str(tiny_base)), packed_names=names, decode="static")

    served = engine(load_model(str(tiny_base)))
    assert served.static is not None and all(f is not None for f in served.static.qkv + served.static.gate_up)
    trained = load_model(str(tiny_base))
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(1.05).add_(0.01)
    names = qat_linear_names(trained, fp4) if fp4 != "none" else []
    served.load_weights(export_weights(trained, names, fp4))
    fresh = engine(trained)
    prompts = [chat_prompt_ids(served.tokenizer, t.prompt) for t in math_tasks(3, "heldout")]
    params = SamplingParams(max_new_tokens=12, temperature=0)
    assert [r.response_ids for r in served.generate(prompts, params)] == [
        r.response_ids for r in fresh.generate(prompts, params)
    ]
    before = engine(load_model(str(tiny_base))).generate(prompts, params)
    assert [r.logprobs for r in served.generate(prompts, params)] != [r.logprobs for r in before]
