"""Static decoding on a GPU: CUDA-graph replays equal the eager step, and the sampled log-probs equal the
model's own full forward (bf16). Opt-in (``pytest -m gpu``); the CPU path is covered in test_rollout_hf.py."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen3ForCausalLM

from rl.algorithms.objective import token_logprobs
from rl.fp4.packed import pack_linears
from rl.fp4.qat import qat_linear_names
from rl.models import tiny_qwen3_config
from rl.rollout.static_decode import StaticDecoder
from rl.types import SamplingParams

pytestmark = pytest.mark.gpu

EOS, PAD = 1, 0


def tiny_model(fp4: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = tiny_qwen3_config(
        vocab_size=1024, hidden_size=256, num_heads=4, num_kv_heads=2, intermediate_size=512
    )
    model = Qwen3ForCausalLM(config)
    model.cuda().bfloat16().eval()
    pack_linears(model, qat_linear_names(model, fp4) if fp4 != "none" else [], fp4)
    return model


def prompts(n: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(2, 1024, (int(torch.randint(3, 40, (1,), generator=gen)),), generator=gen).tolist()
            for _ in range(n)]  # fmt: skip


def assert_same_decode(tokens_a, logprobs_a, tokens_b, logprobs_b) -> None:
    """Two decodes of one batch with one seed agree: the same tokens, log-probs to bf16 rounding.

    Not bitwise: cuBLAS may pick another bf16 GEMM algorithm inside a capture (different workspace), and the
    W4A16 kernel's split-K configs add fp32 partial sums with atomics, in no fixed order. A last-bit
    difference can flip a near-tied sample, after which a row's tail differs; so rows must agree up to
    their first differing token, and agree in full on at least 90% of all positions.
    """
    same = tokens_a == tokens_b
    first_diff = torch.where(same.all(1), same.shape[1], (~same).float().argmax(1))
    assert float(first_diff.sum()) >= 0.9 * same.numel(), first_diff
    for row, n in enumerate(first_diff.tolist()):
        torch.testing.assert_close(logprobs_a[row, :n], logprobs_b[row, :n], atol=5e-2, rtol=0)


@pytest.mark.parametrize("fp4", ["none", "mxfp4"])
def test_cuda_graph_replays_equal_the_eager_step(fp4: str) -> None:
    model = tiny_model(fp4)
    params = SamplingParams(max_new_tokens=70, temperature=1.0, seed=7)
    graphed = StaticDecoder(model, PAD, {EOS}, use_graphs=True, attend_bucket=32)
    # the eager decoder runs the same compiled glue kernels
    eager = StaticDecoder(model, PAD, {EOS}, use_graphs=False, compile_glue=True, attend_bucket=32)
    batch = prompts(12)
    tokens_g, logprobs_g = graphed.generate(batch, params)
    tokens_e, logprobs_e = eager.generate(batch, params)
    assert_same_decode(tokens_g, logprobs_g, tokens_e, logprobs_e)
    again, logprobs_again = graphed.generate(batch, params)  # the same seed through the captured graphs again
    assert_same_decode(tokens_g, logprobs_g, again, logprobs_again)
    # prompt width 64, columns 64..132 read through 96, 128 and all 134 columns: one graph each
    assert sorted(k[0] for k in graphed.sessions[(12, 64, 70)].graphs) == [96, 128, 134]


@pytest.mark.parametrize("fp4", ["none", "mxfp4"])
def test_sampled_logprobs_match_the_models_forward(fp4: str) -> None:
    model = tiny_model(fp4)
    decoder = StaticDecoder(model, PAD, {EOS}, use_graphs=True)
    batch = prompts(8)
    tokens, logprobs = decoder.generate(batch, SamplingParams(max_new_tokens=48, ignore_eos=True, seed=3))
    for row, prompt in enumerate(batch):
        ids = torch.tensor([prompt + tokens[row].tolist()], device="cuda")
        with torch.no_grad():
            full, _ = token_logprobs(model, ids, torch.ones_like(ids))
        diff = (full[0, len(prompt) :].cpu() - logprobs[row]).abs()
        assert float(diff.median()) < 2e-2 and float(diff.max()) < 0.25, (row, diff)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fp4", ["mxfp4", "nvfp4"])
def test_packed_linears_off_the_triton_path_capture_and_leave_the_process_usable(fp4: str, dtype) -> None:
    """The tiny base's shape in float32 (and bf16): packed linears that the W4A16 kernel does not take run the
    torch reference dequantize inside the captured graph. It used to read ``codes.max()`` on the host (a sync
    that invalidates the capture) and to copy the E2M1 table from pageable memory, which broke the rollout
    worker's first greedy eval and left the process unable to build another model."""
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(tiny_qwen3_config(vocab_size=1024, hidden_size=64, intermediate_size=192))
    model.cuda().to(dtype).eval()
    pack_linears(model, qat_linear_names(model, fp4), fp4)
    graphed = StaticDecoder(model, PAD, {EOS}, use_graphs=True, attend_bucket=32)
    eager = StaticDecoder(model, PAD, {EOS}, use_graphs=False, compile_glue=True, attend_bucket=32)
    batch = prompts(6)
    for params in (
        SamplingParams(max_new_tokens=40, temperature=0.0),
        SamplingParams(max_new_tokens=40, seed=5),
    ):
        tokens_g, logprobs_g = graphed.generate(batch, params)
        tokens_e, logprobs_e = eager.generate(batch, params)
        assert_same_decode(tokens_g, logprobs_g, tokens_e, logprobs_e)
    # a stop check at the host syncs ends rows early, as the rollout's stop strings do
    stopped, _ = graphed.generate(
        batch, SamplingParams(max_new_tokens=40, seed=5), stop_check=lambda t: list(range(len(t)))
    )
    assert stopped.shape[1] < 40
    torch.nn.Linear(8, 8, device="cuda")  # the process is still usable (no capture left half-open)
