"""FP4 W4A16 Triton kernel: the CPU smoke benchmark always; kernel == torch reference on a GPU (-m gpu)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rl.fp4.formats import dequantize, quantize

gpu = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_cpu_benchmark_runs(tmp_path: Path) -> None:
    from benchmarks.fp4_matmul import main

    out = tmp_path / "fp4.json"
    assert main(["--cpu", "--reps", "3", "--fmt", "both", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["mode"] == "cpu"
    assert len(result["rows"]) >= 4
    assert all(r["correct"] is True for r in result["rows"])


def test_module_imports_without_gpu() -> None:
    from rl.fp4 import triton_w4a16

    if not torch.cuda.is_available():
        q = quantize(torch.randn(8, 32), "mxfp4")
        with pytest.raises(RuntimeError, match="CUDA"):
            triton_w4a16.fp4_linear(torch.randn(2, 32, dtype=torch.bfloat16), q)


def test_tuning_file_is_reused_by_the_next_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first process times the candidates and writes its choice; a later one (the module's file view reset)
    takes it from the file without timing; choices from other processes merge; a corrupt file is timed again."""
    from rl.fp4 import triton_w4a16 as tw
    from rl.fp4.triton_w4a16 import KernelConfig

    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path))
    monkeypatch.setattr(tw, "_SAVED", None)
    timed: list[int] = []
    picks = iter([KernelConfig(64, 64, 128, 2, 4, 4, True), KernelConfig(16, 32, 256, 1, 4, 3)])

    def fake_tune(x: torch.Tensor, q: object, bias: object) -> KernelConfig:
        timed.append(x.shape[0])
        return next(picks)

    monkeypatch.setattr(tw, "_tune", fake_tune)
    x = torch.zeros(40, 896)
    key = (64, 4864, 896, True, False)
    first = tw._saved_or_tuned(key, x, None, None)  # type: ignore[arg-type]
    path = tw.tuning_file()
    assert path.parent == tmp_path / "triton_w4a16" and path.name.startswith("cpu-triton")
    assert json.loads(path.read_text())["configs"] == {"m64-n4864-k896-nvfp4": {
        "block_m": 64, "block_n": 64, "block_k": 128, "split_k": 2, "num_warps": 4, "num_stages": 4,
        "two_dots": True}}  # fmt: skip
    monkeypatch.setattr(tw, "_SAVED", None)  # a new process
    assert tw._saved_or_tuned(key, x, None, None) == first and timed == [40]  # type: ignore[arg-type]

    tw.write_tunings(
        path, {"m16-n128-k896-mxfp4-bias": KernelConfig(16, 64, 128, 1, 4, 4)}
    )  # another process
    assert set(tw.read_tunings(path)) == {"m64-n4864-k896-nvfp4", "m16-n128-k896-mxfp4-bias"}

    path.write_text('{"version": 1, "configs": {"m64-n4864-k896-nvfp4": {"block_m": "x"}}')  # cut short
    assert tw.read_tunings(path) == {}
    path.write_text('{"version": 1, "configs": {"m64-n4864-k896-nvfp4": {"block_m": "x"}}}')  # not a config
    monkeypatch.setattr(tw, "_SAVED", None)
    assert tw._saved_or_tuned(key, x, None, None) == KernelConfig(16, 32, 256, 1, 4, 3)  # type: ignore[arg-type]
    assert timed == [40, 40] and tw.read_tunings(path) == {
        "m64-n4864-k896-nvfp4": KernelConfig(16, 32, 256, 1, 4, 3)
    }


def test_unwritable_tuning_file_warns(tmp_path: Path) -> None:
    from rl.fp4.triton_w4a16 import KernelConfig, write_tunings

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="not saved"):
        write_tunings(blocker / "sub" / "t.json", {"m16-n1-k1-nvfp4": KernelConfig(16, 64, 128, 1, 4, 4)})


def _fresh(n: int, k: int, fmt: str, seed: int) -> tuple[torch.Tensor, object]:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    w = torch.randn(n, k, generator=gen, device="cuda") * torch.rand(n, 1, generator=gen, device="cuda")
    return w, quantize(w, fmt)


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("n,k", [(256, 512), (96, 160)])
@pytest.mark.parametrize("m", [1, 5, 32, 130])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("split_k", [1, 3])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_kernel_matches_reference(fmt: str, n: int, k: int, m: int, with_bias: bool, split_k: int) -> None:
    from rl.fp4.triton_w4a16 import KernelConfig, fp4_linear

    # Fixed configs keep the compile count small (the tuner is exercised below and by the benchmark).
    cfg = KernelConfig(16, 64, 64, split_k, 4, 3, two_dots=split_k > 1)

    _, q = _fresh(n, k, fmt, seed=n + k + m)
    gen = torch.Generator(device="cuda").manual_seed(m)
    x = torch.randn(m, k, generator=gen, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(n, generator=gen, device="cuda", dtype=torch.bfloat16) if with_bias else None
    out = fp4_linear(x, q, bias, config=cfg)  # type: ignore[arg-type]
    ref = F.linear(x, dequantize(q, torch.bfloat16), bias)  # type: ignore[arg-type]
    assert out.shape == ref.shape and out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    assert float((out.float() - ref.float()).abs().max() / ref.float().abs().max()) < 1e-2


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_kernel_dequant_is_exact(fmt: str) -> None:
    """x = I gives out = W^T exactly (one product per output), so the in-kernel weight is bitwise the reference."""
    from rl.fp4.triton_w4a16 import KernelConfig, fp4_linear

    n, k = 192, 256
    _, q = _fresh(n, k, fmt, seed=3)
    eye = torch.eye(k, device="cuda", dtype=torch.bfloat16)
    ref = dequantize(q, torch.bfloat16).T  # type: ignore[arg-type]
    for cfg in (None, KernelConfig(16, 64, 128, 2, 4, 3), KernelConfig(64, 128, 64, 1, 4, 3, True)):
        out = fp4_linear(eye, q, config=cfg)  # type: ignore[arg-type]
        assert torch.equal(out, ref), cfg  # by value: a -0.0 weight sums to +0.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_kernel_all_codes_and_scales() -> None:
    """Every E2M1 code under every E8M0 exponent up to 250 (incl. bf16 subnormal weights at the bottom)."""
    from rl.fp4.formats import MXFP4Tensor, pack_nibbles
    from rl.fp4.triton_w4a16 import fp4_linear

    exps = torch.arange(
        0, 251, dtype=torch.uint8, device="cuda"
    )  # one row per exponent (6 * 2^123 < bf16 max)
    codes = torch.arange(16, dtype=torch.uint8, device="cuda").repeat(251, 2)  # [251, 32]
    q = MXFP4Tensor(packed=pack_nibbles(codes), scales=exps[:, None].contiguous(), shape=(251, 32))
    ref = dequantize(q, torch.bfloat16)
    eye = torch.eye(32, device="cuda", dtype=torch.bfloat16)
    out = fp4_linear(eye, q).T
    assert torch.equal(out, ref)  # by value: the -0.0 code sums to +0.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tuned_kernel_3d_input() -> None:
    from rl.fp4.triton_w4a16 import chosen_config, fp4_linear

    _, q = _fresh(320, 512, "mxfp4", seed=11)
    x = torch.randn(2, 3, 512, device="cuda", dtype=torch.bfloat16)
    out = fp4_linear(x, q)  # type: ignore[arg-type]
    ref = F.linear(x, dequantize(q, torch.bfloat16))  # type: ignore[arg-type]
    assert out.shape == (2, 3, 320)
    assert float((out.float() - ref.float()).abs().max() / ref.float().abs().max()) < 1e-2
    assert chosen_config(6, 320, 512) is not None


@pytest.mark.parametrize(("n", "k"), [(64, 4864), (4864, 64)])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_kernel_rows_past_int32_offsets(n: int, k: int) -> None:
    """M * K (the activations) or M * N (the output) past 2**31 elements, as a batch of 500 rows padded to one
    1,780-token MBPP prompt makes in a 0.5B model's MLP: the last rows are right (32-bit offsets wrapped)."""
    from rl.fp4.triton_w4a16 import KernelConfig, fp4_linear

    m = 2**31 // 4864 + 4096
    _, q = _fresh(n, k, "nvfp4", seed=5)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    out = fp4_linear(x, q, config=KernelConfig(64, 64, 64, 1, 4, 3))  # type: ignore[arg-type]
    tail = slice(m - 64, m)
    ref = F.linear(x[tail], dequantize(q, torch.bfloat16))  # type: ignore[arg-type]
    assert float((out[tail].float() - ref.float()).abs().max() / ref.float().abs().max()) < 1e-2
