"""FP4 formats: E2M1 rounding, nibble packing, MXFP4 (ceil and floor scale rules) and NVFP4.

Expected values are worked by hand in the comments. "Bitwise" comparisons go through the int32 view, so
that -0.0 and +0.0 differ.
"""

from __future__ import annotations

import pytest
import torch

from rl.fp4.formats import (
    BLOCK_SIZES,
    E2M1_VALUES,
    MXFP4Tensor,
    NVFP4Tensor,
    bytes_ratio_vs_bf16,
    dequantize,
    dequantize_mxfp4,
    dequantize_nvfp4,
    e2m1_to_float,
    fake_quant,
    fake_quant_mxfp4,
    fake_quant_nvfp4,
    pack_nibbles,
    quantize,
    quantize_mxfp4,
    quantize_nvfp4,
    round_to_e2m1,
    unpack_nibbles,
)

F32_MAX = torch.finfo(torch.float32).max
INF = float("inf")


def _next_up(x: float) -> float:
    return torch.nextafter(torch.tensor(x), torch.tensor(INF)).item()


def _next_down(x: float) -> float:
    return torch.nextafter(torch.tensor(x), torch.tensor(-INF)).item()


def _row(*head: float, k: int = 32) -> torch.Tensor:
    """A [1, k] float32 weight: ``head`` followed by zeros."""
    w = torch.zeros(1, k)
    w[0, : len(head)] = torch.tensor(head)
    return w


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.float().view(torch.int32)


def _codes(q: MXFP4Tensor | NVFP4Tensor) -> list[int]:
    return unpack_nibbles(q.packed).flatten().tolist()


def _rel_rms(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return ((approx.double() - exact.double()).norm() / exact.double().norm()).item()


# ---------------------------------------------------------------------------------------------------------------
# E2M1 elements


def test_every_code_decodes_to_its_value():
    values = e2m1_to_float(torch.arange(16, dtype=torch.uint8))
    assert values.tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6, 0, -0.5, -1, -1.5, -2, -3, -4, -6]
    # bit 3 is the sign: code 8 is -0.0
    assert torch.signbit(values).tolist() == [False] * 8 + [True] * 8
    assert torch.equal(_bits(values), _bits(E2M1_VALUES))


@pytest.mark.parametrize("power", [-20, -1, 0, 3, 20])
@pytest.mark.parametrize("rule", ["ceil", "floor"])
def test_each_representable_value_quantizes_to_its_code(power: int, rule: str):
    # Block = the 16 code values twice, times 2^power: amax = 6 * 2^power, so both rules pick scale 2^power
    # (ceil: log2(amax / 6) = power; floor: floor(log2 6) - 2 = 0) and every element lands on its own code.
    # Code 8's value is -0.0, a zero, which quantizes to code 0 (+0).
    expected = [0, 1, 2, 3, 4, 5, 6, 7, 0, 9, 10, 11, 12, 13, 14, 15] * 2
    assert round_to_e2m1(E2M1_VALUES).tolist() == expected[:16]
    q = quantize_mxfp4(torch.cat([E2M1_VALUES, E2M1_VALUES]).view(1, 32) * 2.0**power, rule)  # type: ignore[arg-type]
    assert q.scales.tolist() == [[127 + power]]
    assert _codes(q) == expected


TIES = [(0.25, 0), (0.75, 2), (1.25, 2), (1.75, 4), (2.5, 4), (3.5, 6), (5.0, 6)]  # midpoint -> even code


@pytest.mark.parametrize(("x", "code"), TIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_ties_go_to_the_even_code(x: float, code: int, dtype: torch.dtype):
    # e.g. 0.75 lies midway between code 1 (0.5) and code 2 (1.0): the even code 2 wins. Negatives mirror with
    # the sign bit (code + 8), except -0.25, which rounds to zero and gets code 0.
    assert round_to_e2m1(torch.tensor([x], dtype=dtype)).item() == code
    assert round_to_e2m1(torch.tensor([-x], dtype=dtype)).item() == (code + 8 if code else 0)


def test_just_off_a_tie_goes_to_the_nearer_code():
    x = torch.tensor([_next_up(0.25), _next_down(0.75), _next_up(1.25), _next_down(3.5), _next_up(5.0)])
    assert round_to_e2m1(x).tolist() == [1, 1, 3, 5, 7]
    # float64 is compared in float64: 0.25 + 2^-54 would become the tie 0.25 (code 0) in float32
    assert round_to_e2m1(torch.tensor([0.25 + 2.0**-54], dtype=torch.float64)).item() == 1


def test_rounding_clamps_beyond_six_and_zero_is_always_positive():
    assert round_to_e2m1(torch.tensor([6.0, 7.0, 1e30, INF, -7.0, -INF])).tolist() == [7, 7, 7, 7, 15, 15]
    # -0.0 and negatives that round to zero get code 0, so they dequantize to +0.0 (sign-consistent zeros)
    codes = round_to_e2m1(torch.tensor([-0.0, -0.1, -0.25, -1e-30]))
    assert codes.tolist() == [0, 0, 0, 0]
    assert not torch.signbit(e2m1_to_float(codes)).any()


def test_rounding_rejects_nan_and_integers():
    with pytest.raises(ValueError, match="NaN"):
        round_to_e2m1(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="floating-point"):
        round_to_e2m1(torch.tensor([1, 2]))


# ---------------------------------------------------------------------------------------------------------------
# Packing


def test_pack_nibbles_puts_even_elements_in_the_low_nibble():
    codes = torch.tensor([[1, 2, 3, 4], [15, 0, 8, 7]], dtype=torch.uint8)
    packed = pack_nibbles(codes)
    # (1, 2) -> 0x21, (3, 4) -> 0x43, (15, 0) -> 0x0F, (8, 7) -> 0x78
    assert packed.tolist() == [[0x21, 0x43], [0x0F, 0x78]]
    assert torch.equal(unpack_nibbles(packed), codes)


def test_pack_unpack_round_trip():
    codes = torch.randint(0, 16, (3, 5, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    packed = pack_nibbles(codes)
    assert packed.shape == (3, 5, 5) and packed.dtype == torch.uint8
    assert torch.equal(unpack_nibbles(packed), codes)


def test_pack_rejects_odd_length_and_bad_codes():
    with pytest.raises(ValueError, match="even last dim"):
        pack_nibbles(torch.zeros(2, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"0\.\.15"):
        pack_nibbles(torch.tensor([1, 16], dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        pack_nibbles(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="uint8"):
        unpack_nibbles(torch.tensor([1, 2]))


# ---------------------------------------------------------------------------------------------------------------
# MXFP4 scale rules


def test_mxfp4_ceil_rule_literal_blocks():
    # amax 6: scale 2^ceil(log2 1) = 1 (e = 127); 0.3 lies between 0.25 and 0.75 -> 0.5
    q = quantize_mxfp4(_row(6.0, -1.5, 0.3))
    assert q.scales.tolist() == [[127]]
    assert dequantize_mxfp4(q)[0, :4].tolist() == [6.0, -1.5, 0.5, 0.0]
    # amax 7: 7/6 -> 2^ceil(0.22) = 2 (e = 128). 7/2 = 3.5 is the 3|4 tie -> code 6 (4) -> 8;
    # 1/2 = 0.5 -> code 1 -> 1; -3/2 = -1.5 -> code 11 -> -3; 0.2/2 = 0.1 -> 0. Never clipped, 7 even grows.
    q = quantize_mxfp4(_row(7.0, 1.0, -3.0, 0.2))
    assert q.scales.tolist() == [[128]]
    assert _codes(q)[:4] == [6, 1, 11, 0]
    assert dequantize_mxfp4(q)[0, :4].tolist() == [8.0, 1.0, -3.0, 0.0]
    # amax one ulp above 6 (6 + 2^-21): scale 2; (6 + 2^-21) / 2 = 3 + 2^-22 -> 3 -> 6
    q = quantize_mxfp4(_row(_next_up(6.0)))
    assert q.scales.tolist() == [[128]]
    assert dequantize_mxfp4(q)[0, 0].item() == 6.0


def test_mxfp4_floor_rule_literal_blocks():
    # amax 7: 2^(floor(log2 7) - 2) = 2^0 (e = 127); 7 clips to 6; 0.2 < 0.25 -> 0
    q = quantize_mxfp4(_row(7.0, 1.0, -3.0, 0.2), "floor")
    assert q.scales.tolist() == [[127]]
    assert _codes(q)[:4] == [7, 2, 13, 0]
    assert dequantize_mxfp4(q)[0, :4].tolist() == [6.0, 1.0, -3.0, 0.0]
    # amax just below 8 still has scale 1 and clips to 6 (the spec's up-to-25% clipping); 8 gets scale 2 -> 4*2
    assert fake_quant_mxfp4(_row(_next_down(8.0)), "floor")[0, 0].item() == 6.0
    q = quantize_mxfp4(_row(8.0), "floor")
    assert q.scales.tolist() == [[128]] and dequantize_mxfp4(q)[0, 0].item() == 8.0


# (amax, ceil e, floor e): ceil e - 127 = ceil(log2(amax / 6)), floor e - 127 = floor(log2 amax) - 2
EXPONENT_CASES = [
    (6.0, 127, 127),  # 6/6 = 2^0;  floor(log2 6) = 2
    (_next_up(6.0), 128, 127),
    (_next_down(6.0), 127, 127),
    (3.0, 126, 126),  # 3/6 = 2^-1;  floor(log2 3) = 1
    (4.0, 127, 127),  # ceil(log2 0.67) = 0;  log2 4 = 2
    (_next_down(8.0), 128, 127),
    (8.0, 128, 128),  # ceil(log2 1.33) = 1;  log2 8 = 3
    (12.0, 128, 128),  # 12/6 = 2^1;  floor(log2 12) = 3
    (_next_up(12.0), 129, 128),
    (2.0**-20, 105, 105),  # ceil(-20 - 2.58) = -22;  -20 - 2 = -22
    (6 * 2.0**-100, 27, 27),  # ceil: -100;  floor(log2 6 - 100) - 2 = -98 - 2 = -100
]


@pytest.mark.parametrize(("amax", "ceil_e", "floor_e"), EXPONENT_CASES)
def test_mxfp4_scale_exponents_are_exact_at_boundaries(amax: float, ceil_e: int, floor_e: int):
    assert quantize_mxfp4(_row(amax, -amax / 3)).scales.item() == ceil_e
    assert quantize_mxfp4(_row(-amax, amax / 3), "floor").scales.item() == floor_e


def test_mxfp4_scale_exponents_satisfy_their_definitions():
    # Random and boundary block maxima (6 * 2^k, 2^k and their neighbours); the inequalities are checked in float64,
    # where multiplying by a power of two is exact. ceil: 6 * 2^(s-1) < amax <= 6 * 2^s; floor: 2^(s+2) <= amax < 2^(s+3).
    gen = torch.Generator().manual_seed(0)
    powers = 2.0 ** torch.arange(-100, 100, dtype=torch.float32)
    edges = torch.cat([powers, 6 * powers])
    amax_M = torch.cat([edges, torch.nextafter(edges, edges * 2), torch.nextafter(edges, edges / 2)])
    amax_M = torch.cat([amax_M, torch.exp(torch.empty(2000).uniform_(-60, 60, generator=gen))])
    w = torch.zeros(len(amax_M), 32)
    w[:, 0] = amax_M
    amax = amax_M.double()
    ceil_s = quantize_mxfp4(w).scales[:, 0].double() - 127
    assert bool(((6 * 2 ** (ceil_s - 1) < amax) & (amax <= 6 * 2**ceil_s)).all())
    floor_s = quantize_mxfp4(w, "floor").scales[:, 0].double() - 127
    assert bool(((2 ** (floor_s + 2) <= amax) & (amax < 2 ** (floor_s + 3))).all())


def test_all_zero_blocks():
    w = torch.zeros(2, 64)
    w[1, 32] = -0.0
    ceil_q, floor_q, nv_q = quantize_mxfp4(w), quantize_mxfp4(w, "floor"), quantize_nvfp4(w)
    # ceil: amax clamped to 6 * 2^-126 -> scale 2^-126 (e = 1); floor: e clamped to E8M0's 0
    assert ceil_q.scales.tolist() == [[1, 1], [1, 1]]
    assert floor_q.scales.tolist() == [[0, 0], [0, 0]]
    # NVFP4: tensor scale 1.0, block scales at their floor 2^-6
    assert nv_q.tensor_scale.item() == 1.0
    assert nv_q.block_scales.float().unique().tolist() == [2.0**-6]
    for q in (ceil_q, floor_q, nv_q):
        assert set(_codes(q)) == {0}
        assert torch.equal(_bits(dequantize(q)), _bits(torch.zeros(2, 64)))  # +0.0 everywhere


# ---------------------------------------------------------------------------------------------------------------
# MXFP4 at the ends of the float32 range


@pytest.mark.parametrize("rule", ["ceil", "floor"])
def test_mxfp4_tiny_block_maxima(rule: str):
    # 3 * 2^-127 and -2^-127 (float32 subnormals): ceil clamps amax to 6 * 2^-126 -> scale 2^-126, giving 1.5 and
    # -0.5; floor: floor(log2(3 * 2^-127)) - 2 = -128 -> e clamps to 0, scale 2^-127, giving 3 and -1. Both exact.
    w = _row(3 * 2.0**-127, -(2.0**-127))
    assert torch.equal(fake_quant_mxfp4(w, rule), w)  # type: ignore[arg-type]
    # 1e-40 is below half the smallest step of either rule (0.25 * 2^-126 ~ 2.9e-39): flushes to +0
    w = _row(1e-40, -1e-40)
    assert torch.equal(_bits(fake_quant_mxfp4(w, rule)), _bits(torch.zeros(1, 32)))  # type: ignore[arg-type]


def test_mxfp4_two_pow_minus_128_shows_the_rules_minimum_scales():
    # ceil: 2^-128 / 2^-126 = 0.25, the 0|0.5 tie -> 0. floor: scale 2^-127 (e = 0) -> 0.5 -> exact.
    w = _row(2.0**-128)
    assert fake_quant_mxfp4(w)[0, 0].item() == 0.0
    assert fake_quant_mxfp4(w, "floor")[0, 0].item() == 2.0**-128


@pytest.mark.parametrize("magnitude", [1e-35, 1e-30, 1e30, 1e36])
@pytest.mark.parametrize("rule", ["ceil", "floor"])
def test_mxfp4_extreme_magnitudes_stay_within_the_format_precision(magnitude: float, rule: str):
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(1)) * magnitude
    q = quantize_mxfp4(w, rule)  # type: ignore[arg-type]
    fq = dequantize_mxfp4(q)
    assert bool(torch.isfinite(fq).all())
    # Element error <= scale: |x / s| <= 6 (ceil) and E2M1's widest half-gap is 1 (between 4 and 6). The floor rule
    # can also clip (x / s in (6, 8)): error < 2 scales.
    scale_NK = (2.0 ** (q.scales.double() - 127)).repeat_interleave(32, dim=1)
    bound = 1.0 if rule == "ceil" else 2.0
    assert bool(((fq.double() - w.double()).abs() <= bound * scale_NK).all())
    assert _rel_rms(fq, w) < 0.15


@pytest.mark.parametrize("rule", ["ceil", "floor"])
def test_mxfp4_is_exactly_equivariant_under_powers_of_two(rule: str):
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(2))
    fq = fake_quant_mxfp4(w, rule)  # type: ignore[arg-type]
    for power in (-100, 100):
        assert torch.equal(fake_quant_mxfp4(w * 2.0**power, rule), fq * 2.0**power)  # type: ignore[arg-type]


@pytest.mark.parametrize("rule", ["ceil", "floor"])
def test_mxfp4_huge_block_maxima(rule: str):
    # ceil: 3e38 = 0.88 * 2^128 -> ceil(log2(3e38 / 6)) = 126 (e = 253). 3e38 / 2^126 = 3.53 would round to 4, but
    # 4 * 2^126 = 2^128 overflows float32, so magnitudes saturate at 3: 3e38 -> 3 * 2^126 (error 15% < E2M1's 20%).
    # 1e38 / 2^126 = 1.18 -> 1; -2e38 / 2^126 = -2.35 -> -2.
    # floor: floor(log2 3e38) - 2 = 125 (e = 252): 3e38 / 2^125 = 7.05 clips to 6, 1e38 -> 2.35 -> 2,
    # -2e38 -> -4.70 -> -4: the same values 6 * 2^125 = 3 * 2^126, 2 * 2^125, -4 * 2^125.
    q = quantize_mxfp4(_row(3e38, 1e38, -2e38, F32_MAX, -F32_MAX), rule)  # type: ignore[arg-type]
    assert q.scales.item() == (253 if rule == "ceil" else 252)
    fq = dequantize_mxfp4(q)[0, :5].tolist()
    # F32_MAX = 3.99999 * 2^126 saturates to 3 * 2^126 as well (ceil); floor: 7.99999 * 2^125 clips to 6 * 2^125
    assert fq == [3 * 2.0**126, 2.0**126, -2 * 2.0**126, 3 * 2.0**126, -3 * 2.0**126]


# ---------------------------------------------------------------------------------------------------------------
# NVFP4


def test_nvfp4_literal_blocks():
    # amax(|W|) = 10.5 -> tensor scale 10.5 / 2688 = 2^-8 exactly (10.5 = 21 / 2, 2688 = 21 * 128).
    # block 0: 10.5/6 / 2^-8 = 448 -> total 448 * 2^-8 = 1.75: 10.5 -> 6, 3.5 -> 2, -1.75 -> -1, 0.1 -> 0.06 -> 0
    # block 1: 0.35/6 / 2^-8 = 14.93 -> E4M3 15 -> total 15/256: 0.35 -> 5.97 -> 6, -0.2 -> -3.41 -> -3,
    #          0.05 -> 0.853 -> 1
    # block 2: zeros -> block scale at its floor 2^-6, codes 0
    # block 3: 5e-5/6 / 2^-8 = 0.0021 < 2^-6 -> clamped to 2^-6 -> total 2^-14: 5e-5 -> 0.82 -> 1 -> 2^-14
    w = torch.zeros(1, 64)
    w[0, 0:4] = torch.tensor([10.5, 3.5, -1.75, 0.1])
    w[0, 16:19] = torch.tensor([0.35, -0.2, 0.05])
    w[0, 48] = 5e-5
    q = quantize_nvfp4(w)
    assert q.tensor_scale.item() == 2.0**-8
    assert q.block_scales.float().tolist() == [[448.0, 15.0, 2.0**-6, 2.0**-6]]
    codes = _codes(q)
    assert codes[0:4] == [7, 4, 10, 0] and codes[16:19] == [7, 13, 2] and codes[48] == 2
    fq = dequantize_nvfp4(q)[0]
    assert fq[0:4].tolist() == [10.5, 3.5, -1.75, 0.0]
    assert fq[16:19].tolist() == [6 * 15 / 256, -3 * 15 / 256, 15 / 256]
    assert fq[48].item() == 2.0**-14
    assert torch.count_nonzero(fq).item() == 7


def test_nvfp4_extreme_magnitudes():
    # A lone 1e-40: tensor scale 1e-40/2688 is floored at 2^-126; block 1e-40/6 / 2^-126 = 0.0014 -> 2^-6;
    # 1e-40 / 2^-132 = 0.544 -> 0.5 -> 2^-133 (the format's floor, not NaN)
    assert fake_quant_nvfp4(_row(1e-40, k=16))[0, 0].item() == 2.0**-133
    # The largest float32 comes back finite and within one rounding (6 * 448 * (amax / 2688))
    fq = fake_quant_nvfp4(_row(F32_MAX, -F32_MAX, k=16))[0, :2].double()
    assert bool(torch.isfinite(fq).all())
    assert bool(((fq.abs() - F32_MAX).abs() <= 2**-23 * F32_MAX).all())
    gen = torch.Generator().manual_seed(3)
    for magnitude in (1e-30, 1e30, 1e37):
        w = torch.randn(8, 64, generator=gen) * magnitude
        fq = fake_quant_nvfp4(w)
        assert bool(torch.isfinite(fq).all())
        assert _rel_rms(fq, w) < 0.12


def test_nvfp4_tensor_scale_is_a_fixed_point_of_requantization():
    # Idempotence of NVFP4 needs amax' = fl(2688 * s) to give back s = fl(amax / 2688). Checked for every float32
    # amax in [1, 2); rounding is the same in every binade of float32's normal range.
    amax = torch.arange(0x3F800000, 0x40000000, dtype=torch.int32).view(torch.float32)
    scale = amax / 2688.0
    assert torch.equal((scale * 2688.0) / 2688.0, scale)
    w = _row(1.7, -0.3, k=16)
    assert quantize_nvfp4(w).tensor_scale.item() == (torch.tensor(1.7) / 2688.0).item()


# ---------------------------------------------------------------------------------------------------------------
# Shared properties


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\(4, 33\).*block size 32"):
        quantize_mxfp4(torch.randn(4, 33))
    with pytest.raises(ValueError, match=r"\(4, 24\).*block size 16"):
        quantize_nvfp4(torch.randn(4, 24))
    with pytest.raises(ValueError, match="block size 32"):
        fake_quant(torch.randn(48), "mxfp4")
    with pytest.raises(ValueError, match="block size"):
        quantize(torch.tensor(1.0), "nvfp4")
    with pytest.raises(ValueError, match="no elements"):
        quantize(torch.zeros(0, 32), "mxfp4")
    with pytest.raises(ValueError, match="floating point"):
        quantize(torch.ones(2, 32, dtype=torch.int32), "mxfp4")


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("bad", [float("nan"), INF, -INF, 1e300])
def test_non_finite_weights_are_refused(fmt: str, bad: float):
    # 1e300 is finite in float64 but not in float32, where quantization runs
    w = torch.randn(2, 32, dtype=torch.float64)
    w[1, 7] = bad
    with pytest.raises(ValueError, match="non-finite values in weight"):
        quantize(w, fmt)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match=r"'fp3'.*\['mxfp4', 'nvfp4'\]"):
        fake_quant(torch.randn(2, 32), "fp3")
    with pytest.raises(ValueError, match=r"'round'.*'ceil', 'floor'"):
        quantize_mxfp4(torch.randn(2, 32), "round")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="MXFP4Tensor or NVFP4Tensor"):
        dequantize(torch.zeros(2))  # type: ignore[arg-type]


def _varied_weight() -> torch.Tensor:
    """[16, 256] with rows spanning 1e-6..1e3, a zero row, a 1e30 row and rows of mixed-size blocks."""
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(16, 256, generator=gen) * 10 ** torch.empty(16, 1).uniform_(-6, 3, generator=gen)
    w[3] = 0.0
    w[5] *= 1e30
    w[7, :128] *= 1e-5  # NVFP4: these blocks' scales clamp at 2^-6
    w[9, ::16] = -w[9, ::16].abs().max()  # ties at the block max
    return w


@pytest.mark.parametrize(
    "fq_fn",
    [
        lambda w: fake_quant(w, "mxfp4"),
        lambda w: fake_quant_mxfp4(w, "floor"),
        lambda w: fake_quant(w, "nvfp4"),
    ],
    ids=["mxfp4-ceil", "mxfp4-floor", "nvfp4"],
)
def test_fake_quant_is_idempotent_bitwise(fq_fn):
    # The rollout's dequantized weights must equal the trainer's fake-quantized ones; quantizing a fake-quantized
    # weight again must not move it.
    once = fq_fn(_varied_weight())
    assert torch.equal(_bits(fq_fn(once)), _bits(once))


def test_random_normal_error_nvfp4_below_mxfp4():
    # Relative RMS error of N(0, 1) weights [256, 1024] (measured: MXFP4 ceil 0.116, floor 0.115, NVFP4 0.095).
    # NVFP4's finer blocks and fractional scales beat MXFP4's power-of-two scales.
    w = torch.randn(256, 1024, generator=torch.Generator().manual_seed(5))
    mx_err, floor_err, nv_err = (
        _rel_rms(fake_quant(w, "mxfp4"), w),
        _rel_rms(fake_quant_mxfp4(w, "floor"), w),
        _rel_rms(fake_quant(w, "nvfp4"), w),
    )
    assert 0.10 < mx_err < 0.13 and 0.10 < floor_err < 0.13
    assert 0.085 < nv_err < 0.105
    assert nv_err < mx_err


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_bf16_weights(fmt: str):
    w = (torch.randn(8, 128, generator=torch.Generator().manual_seed(6)) * 3).bfloat16()
    w[2] *= 1e-37  # near the bottom of the exponent range
    w[4] *= 1e37
    fq = fake_quant(w, fmt)
    assert fq.dtype == torch.bfloat16
    fq32 = fake_quant(w.float(), fmt)
    assert torch.equal(fq.view(torch.int16), fq32.bfloat16().view(torch.int16))
    if fmt == "mxfp4":
        # E2M1 value * 2^(e - 127) is exact in bf16: the cast loses nothing
        assert torch.equal(_bits(fq), _bits(fq32))


def test_leading_dims_are_flattened():
    w = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(7))
    q = quantize_mxfp4(w)
    assert q.packed.shape == (6, 32) and q.scales.shape == (6, 2) and q.shape == (2, 3, 64)
    assert torch.equal(dequantize_mxfp4(q), fake_quant_mxfp4(w.reshape(6, 64)).reshape(2, 3, 64))
    nv = quantize_nvfp4(w)
    assert nv.packed.shape == (6, 32) and nv.block_scales.shape == (6, 4) and nv.shape == (2, 3, 64)
    assert torch.equal(dequantize_nvfp4(nv), fake_quant_nvfp4(w.reshape(6, 64)).reshape(2, 3, 64))


def test_registry_dispatches_by_name():
    assert BLOCK_SIZES == {"mxfp4": 32, "nvfp4": 16}
    w = torch.randn(4, 64, generator=torch.Generator().manual_seed(8))
    mx, nv = quantize(w, "mxfp4"), quantize(w, "nvfp4")
    assert isinstance(mx, MXFP4Tensor) and isinstance(nv, NVFP4Tensor)
    assert torch.equal(dequantize(mx), fake_quant_mxfp4(w)) and torch.equal(
        fake_quant(w, "mxfp4"), dequantize(mx)
    )
    assert torch.equal(dequantize(nv), fake_quant_nvfp4(w)) and torch.equal(
        fake_quant(w, "nvfp4"), dequantize(nv)
    )
    assert dequantize(mx, torch.bfloat16).dtype == torch.bfloat16


def test_bytes():
    w = torch.randn(256, 1024, generator=torch.Generator().manual_seed(9))
    mx, nv = quantize_mxfp4(w), quantize_nvfp4(w)
    # codes: 1024 / 2 bytes per row; scales: 1024 / 32 (MXFP4) or 1024 / 16 (NVFP4) bytes per row
    assert mx.nbytes == 256 * 512 + 256 * 32
    assert nv.nbytes == 256 * 512 + 256 * 64 + 4
    bf16_bytes = 256 * 1024 * 2
    assert mx.nbytes / bf16_bytes == 0.265625 <= 0.27
    # (0.5 + 1/32) / 2 and (0.5 + 1/16) / 2
    assert bytes_ratio_vs_bf16("mxfp4") == 0.265625
    assert bytes_ratio_vs_bf16("nvfp4") == 0.28125


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_quantized_tensors_survive_pickling_across_processes(fmt: str) -> None:
    import ray.cloudpickle as cloudpickle

    q = quantize(torch.randn(8, 64), fmt)
    back = cloudpickle.loads(cloudpickle.dumps(q))
    assert torch.equal(dequantize(back), dequantize(q))
