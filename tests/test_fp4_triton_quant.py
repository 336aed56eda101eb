"""The one-pass Triton MXFP4 quantizer equals the torch reference bitwise (codes, scales, fake-quant weight).

Opt-in GPU tests (``pytest -m gpu``); the reference itself is tested on CPU in test_fp4_formats.py.
"""

from __future__ import annotations

import pytest
import torch

from rl.fp4.formats import (
    _MIDPOINTS_ABOVE_EVEN,
    _MIDPOINTS_ABOVE_ODD,
    E2M1_VALUES,
    fake_quant,
    fake_quant_mxfp4,
    quantize,
    quantize_mxfp4,
)
from rl.fp4.triton_quant import mxfp4_quantize

pytestmark = pytest.mark.gpu


def assert_same(w: torch.Tensor) -> None:
    q, fake = mxfp4_quantize(w, fake=True)
    ref = quantize_mxfp4(w)
    assert torch.equal(q.scales, ref.scales) and torch.equal(q.packed, ref.packed) and q.shape == ref.shape
    assert fake is not None and fake.dtype == w.dtype
    assert torch.equal(fake.view(torch.int16 if w.dtype != torch.float32 else torch.int32),
                       fake_quant_mxfp4(w).view(torch.int16 if w.dtype != torch.float32 else torch.int32))  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(96, 256), (33, 96), (1, 32), (3, 5, 64), (1024, 3072)])
def test_random_weights_at_every_scale(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    gen = torch.Generator(device="cuda").manual_seed(hash(shape) % 1000)
    for power in (-40, -20, -3, 0, 3, 20, 40):
        w = torch.randn(shape, generator=gen, device="cuda") * 2.0**power
        assert_same(w.to(dtype))


def test_ties_zeros_subnormal_scales_and_float32_extremes() -> None:
    mids = torch.tensor(
        _MIDPOINTS_ABOVE_EVEN + _MIDPOINTS_ABOVE_ODD + tuple(E2M1_VALUES.tolist()), device="cuda"
    )
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for scale_exp in (-127, -126, -100, 0, 50, 125, 126, 127):
        block = mids[torch.randint(0, len(mids), (31,), generator=gen, device="cuda")]
        block = block * torch.where(torch.rand(31, generator=gen, device="cuda") < 0.5, -1.0, 1.0)
        row = torch.cat([torch.tensor([6.0], device="cuda"), block]) * 2.0**scale_exp
        rows.append(torch.nan_to_num(row, posinf=3.4e38, neginf=-3.4e38))
    rows.append(torch.zeros(32, device="cuda"))
    rows.append(torch.full((32,), -0.0, device="cuda"))
    rows.append(torch.tensor([3.4028e38, -2.9e38, 1e-45] + [1.0] * 29, device="cuda"))
    assert_same(torch.stack(rows))


def test_non_finite_weight_gives_a_nan_block_not_an_error() -> None:
    w = torch.randn(4, 64, device="cuda")
    w[1, 40] = float("nan")
    w[2, 3] = float("inf")
    q, fake = mxfp4_quantize(w, fake=True)
    assert fake is not None
    assert q.scales[1, 1] == 255 and q.scales[2, 0] == 255 and int((q.scales == 255).sum()) == 2
    assert torch.isnan(fake[1, 32:]).all() and torch.isnan(fake[2, :32]).all()
    finite = torch.ones_like(w, dtype=torch.bool)
    finite[1, 32:] = False
    finite[2, :32] = False
    assert torch.equal(fake[finite], fake_quant_mxfp4(torch.nan_to_num(w))[finite])


def test_format_entry_points_use_the_kernel_on_cuda_and_agree_with_the_reference(monkeypatch) -> None:
    w = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16)
    fast_q, fast_fake = quantize(w, "mxfp4"), fake_quant(w, "mxfp4")
    monkeypatch.setenv("DISTILLERY_FP4_TRITON", "0")
    ref_q, ref_fake = quantize(w, "mxfp4"), fake_quant(w, "mxfp4")
    assert torch.equal(fast_q.packed, ref_q.packed) and torch.equal(fast_q.scales, ref_q.scales)
    assert torch.equal(fast_fake, ref_fake)
