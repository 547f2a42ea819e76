"""Triton device helpers shared by the kernels: E2M1 encode/decode and the group-scale rules.

Each helper mirrors one function of `mrgptq.formats` operation for operation (correctly rounded divisions,
exact exponent extraction), so the kernels' codes and scales are bit-identical to the reference.
"""
from __future__ import annotations

import functools
import os
import re

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # CPU interpreter: numpy has no bf16, dot in fp32
FP8_ARCH = 89  # FP8 types, conversions and tensor cores from sm_89 (Ada) on
_FP8_ARCH = tl.constexpr(FP8_ARCH)  # (for the kernels)


@functools.cache
def _capability(index: int) -> int:
    major, minor = torch.cuda.get_device_capability(index)
    return 10 * major + minor


def ptx_arch(device: torch.device) -> int:
    """The compute capability (80 for sm_80) the kernels' inline PTX and fp8 paths are chosen for: the
    device's, or TRITON_OVERRIDE_ARCH (`sm80`) when Triton is told to build for another GPU, or
    MRGPTQ_PTX_ARCH, which runs a smaller GPU's code paths on this one (tests). 0 off CUDA and in the
    interpreter (it runs no PTX), whatever is set. Hopper-only instructions (`min.u16x2`) are used from 90 on,
    FP8 conversions from 89 on."""
    if INTERPRET:
        return 0
    for var in ("MRGPTQ_PTX_ARCH", "TRITON_OVERRIDE_ARCH"):
        m = re.fullmatch(r"(?:sm_?)?(\d+)a?", os.environ.get(var) or "-")
        if m:
            return int(m.group(1))
    if device.type != "cuda":
        return 0
    return _capability(device.index if device.index is not None else torch.cuda.current_device())


# Scale-rule ids shared with the Python side (formats.scales names).
RULE_SPEC, RULE_CEIL, RULE_ROUNDED, RULE_FOUR_THIRDS = 0, 1, 2, 3
RULE_IDS = {"spec": RULE_SPEC, "ceil": RULE_CEIL, "rounded": RULE_ROUNDED, "four-thirds": RULE_FOUR_THIRDS}


@triton.jit
def e2m1_decode(codes):
    """uint8 codes 0..15 -> float32 values (bit 3 is the sign)."""
    c = codes.to(tl.int32)
    m = c & 7  # 2|v| = m for m < 2, else (2 + mantissa bit) << (exponent - 1): 0 1 2 3 4 6 8 12
    mag2 = tl.where(m < 2, m, (2 + (m & 1)) << tl.maximum((m >> 1) - 1, 0))
    v = mag2.to(tl.float32) * 0.5
    return (v.to(tl.int32, bitcast=True) | ((c & 8) << 28)).to(tl.float32, bitcast=True)  # sign bit: -0 stays -0


@triton.jit
def e2m1_encode(v):
    """Scaled float32 -> int32 E2M1 code: nearest, ties to the even code, saturating at 6 (formats.codec).

    Below 2 the grid is uniform (step 1/2), so the code is rint(2|v|) (the 2^23 trick, round-half-even); from 2
    up it is |v| rounded to one mantissa bit, half-even on the float bits, whose exponent and mantissa bit are
    the code (2 -> 4 ... 6 -> 7; 8, reached from 7 up, saturates to 7). ~11 instructions instead of 7 compares."""
    a = tl.abs(v)
    b = a.to(tl.int32, bitcast=True)
    small = (a * 2.0 + 8388608.0).to(tl.int32, bitcast=True) - 0x4B000000
    big = tl.minimum(((b + 0x1FFFFF + ((b >> 22) & 1)) >> 22) - 252, 7)
    mag = tl.where(a < 2.0, small, big)
    return mag | ((v.to(tl.int32, bitcast=True) >> 28) & 8)


@triton.jit
def round_bf16(y):
    """float32 -> bfloat16, round to nearest even, by hand (the CPU interpreter's cast truncates)."""
    bits = y.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
    return bits.to(tl.float32, bitcast=True).to(tl.bfloat16)


@triton.jit
def bf16_round_trip(y, INTERP: tl.constexpr):
    """float32 -> nearest-even bfloat16 -> float32 (the hardware conversion; by hand in the interpreter)."""
    if INTERP:
        return round_bf16(y).to(tl.float32)
    return y.to(tl.bfloat16).to(tl.float32)


@triton.jit
def div_rn_by(a, b, rcp_b, INTERP: tl.constexpr):
    """a / b correctly rounded, given rcp_b = 1 / b correctly rounded (one division per group, not per element):
    q = a rcp_b is within an ulp, r = a - q b is exact in an fma, and q + r rcp_b rounds to a / b (Markstein's
    theorem; normal numbers). Three instructions instead of div.rn's ~14. The interpreter's fma rounds twice,
    so it divides."""
    if INTERP:
        return tl.math.div_rn(a, b)
    q = a * rcp_b
    return tl.fma(tl.fma(q, -b, a), rcp_b, q)  # (-b, not -q: -(a rcp_b) would be a second product per element)


@triton.jit
def store_rounded(ptr, y, mask):
    """Store float32 `y` into ptr's dtype; bf16 is rounded to nearest even explicitly."""
    if ptr.dtype.element_ty == tl.bfloat16:
        tl.store(ptr, round_bf16(y), mask=mask)
    else:
        tl.store(ptr, y.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def pow2(e):
    """2^e for integer e in [-127, 127], exactly (2^-127 is a float32 subnormal)."""
    return tl.where(e > -127, (e + 127) << 23, 1 << 22).to(tl.float32, bitcast=True)  # (no tl.full: Gluon too)


@triton.jit
def floor_log2(a):
    """floor(log2(a)) for positive float32 from the exponent bits; -127 for zero and subnormals."""
    bits = a.to(tl.int32, bitcast=True)
    return ((bits >> 23) & 0xFF) - 127


@triton.jit
def e4m3_round(v):
    """Round non-negative float32 (<= 448) to the nearest E4M3 value, ties to even, as float32.

    Done by hand (quantum 2^(floor(log2 v) - 3), or 2^-9 for subnormals; rint by the 1.5 * 2^23 trick) so
    the result does not depend on the conversion instruction (the CPU interpreter's fp8 cast mis-rounds)."""
    e = tl.maximum(floor_log2(v), -6) - 3
    quantum = pow2(e)
    t = v * pow2(-e)
    r = (t + 12582912.0) - 12582912.0
    return r * quantum


_E4M3_SAT = tl.constexpr("""{
.reg .b16 h, lo, hi;
.reg .b32 f;
cvt.rn.satfinite.e4m3x2.f32 h, $2, $2;
cvt.rn.f16x2.e4m3x2 f, h;
mov.b32 {lo, hi}, f;
cvt.f32.f16 $1, lo;
cvt.u32.u16 $0, h;
and.b32 $0, $0, 255;
}""")

_RCP_RN = tl.constexpr("""{
.reg .f32 r, n, e;
rcp.approx.ftz.f32 r, $1;
neg.f32 n, $1;
fma.rn.f32 e, n, r, 0f3F800000;
fma.rn.f32 $0, r, e, r;
}""")


@triton.jit
def e4m3_saturate(v, ARCH: tl.constexpr):
    """(E4M3 byte as int32, its value as float32) of non-negative float32 v: nearest, ties to even, saturating at
    448 (formats.scales: min(v, 448), then the cast). From sm_89 (ARCH, `ptx_arch`) one satfinite conversion
    and its inverse (inline PTX), ~4 instructions; by hand (`e4m3_round`, ~14) before it and in the interpreter
    (ARCH 0)."""
    if ARCH < _FP8_ARCH:
        r = e4m3_round(tl.minimum(v, 448.0))
        return e4m3_bits(r), r
    return tl.inline_asm_elementwise(_E4M3_SAT, "=r,=f,f", [v], dtype=(tl.int32, tl.float32), is_pure=True, pack=1)


_TWO_120 = tl.constexpr(2.0 ** 120)


@triton.jit
def e4m3_value(b):
    """An E4M3 byte (any integer type) as float32, exactly and without fp8 types (which Triton has only from
    sm_89 on): its exponent and mantissa bits placed at float32's bits 20-26 are the value times 2^-120, E4M3's
    subnormals included (as float32 subnormals, then scaled up exactly). NaN bytes are not expected (scales)."""
    c = b.to(tl.int32) & 0xFF
    return (((c & 0x7F) << 20) | ((c & 0x80) << 24)).to(tl.float32, bitcast=True) * _TWO_120


@triton.jit
def rcp_rn(d, INTERP: tl.constexpr):
    """1 / d correctly rounded, for d and 1 / d normal: the hardware reciprocal and one fma Newton step, which is
    rcp.rn's fast path without its branch to the subnormal slow path (`div_rn(1, d)` costs ~14 instructions and a
    convergence barrier). tests/test_kernels.py checks it against division on every float32 of [1, 2) on the GPU."""
    if INTERP:
        return tl.math.div_rn(1.0, d)
    return tl.inline_asm_elementwise(_RCP_RN, "=f,f", [d], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def e4m3_bits(v):
    """float32 -> its E4M3 byte (int32 0..255) for |v| < 448 whose normal values need at most 3 mantissa bits
    (E2M1 values times powers of two); below E4M3's normal range rounded to the nearest subnormal, ties to
    even. By hand: the cast to float8e4nv gave wrong values for every fourth element of fp8_rows' 3-D pair
    tiles under Triton 3.6 on the H100, and the CPU interpreter's cast mis-rounds."""
    bits = v.to(tl.int32, bitcast=True)
    a = tl.abs(v)
    normal = ((bits >> 20) & 0x7FF) - (120 << 3)  # (exponent - 127 + 7) << 3 | the top 3 mantissa bits
    sub = (a * 512.0 + 8388608.0).to(tl.int32, bitcast=True) - 0x4B000000  # rint(|v| / 2^-9)
    return tl.where(a >= 0.015625, normal, sub) | ((bits >> 24) & 0x80)


@triton.jit
def mx_exponent(amax, RULE: tl.constexpr):
    e0 = floor_log2(amax) - 2
    if RULE == 1:  # ceil: nothing clips
        e0 = e0 + (amax > 6.0 * pow2(tl.maximum(e0, -127))).to(tl.int32)
    if RULE == 2:  # rounded: amax rounded to E2M1 precision first
        e0 = e0 + (amax >= 7.0 * pow2(tl.maximum(e0, -127))).to(tl.int32)
    return tl.minimum(tl.maximum(e0, -127), 127)


@triton.jit
def split8(v):
    """(..., 4, 2) -> its 8 values in coordinate order 2j + c (the 8 codes of a packed int32 word, low nibble first)."""
    v = tl.reshape(v, v.shape[:-2] + (2, 2, 2))
    ev, od = tl.split(v)
    v00, v01 = tl.split(ev)
    v10, v11 = tl.split(od)
    v0, v4 = tl.split(v00)
    v2, v6 = tl.split(v01)
    v1, v5 = tl.split(v10)
    v3, v7 = tl.split(v11)
    return v0, v1, v2, v3, v4, v5, v6, v7
