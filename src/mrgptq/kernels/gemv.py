"""Decode GEMV with packed FP4 weights: y = alpha * x W^T for a few rows of x, on CUDA cores.

At batch 1 a GEMM tile wastes the tensor cores and the kernel is bound by instructions per code, so the
weight is read as 32-bit words of 8 codes (word i of a row holds elements 8i..8i+7, nibble n = element
8i+n) and each word becomes 8 float32 values by byte permutes, no conversions:

  - `prmt` is an 8-entry byte table lookup indexed by 4 nibbles at once: one lookup gives the top byte, one
    the next byte, of the float32 values of 4 codes (E2M1 magnitudes 0..6 are exact in 16 bits: bf16);
  - a third `prmt` in sign-replicate mode turns the 4 sign bits into bytes that one `lop3` merges;
  - a byte permute pairs the two bytes of two codes into a bf16x2 word; a shift and a mask give 2 floats.

~3 integer instructions per code, then one FMA with x. Products are summed per group and the group scale
multiplies one partial sum (y_n = alpha sum_g s_{n,g} sum_{k in g} v(c_{n,k}) x_k). The CPU interpreter
cannot run inline PTX: there (`LUT=False`) the same words are decoded with plain Triton integer ops.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..errors import MrgptqError
from ..formats import FormatSpec
from . import LAUNCH
from .fp4 import INTERPRET, e2m1_decode, e4m3_value, pow2, split8, store_rounded
from .gemm import _bytes, split_k_result, split_k_target

# $0..$7: float32 values of the 8 codes of word $8. Tables: byte 3 of the float32 of |v| for magnitude
# codes 0..7 (0 .5 1 1.5 | 2 3 4 6) in 0x3F3F3F00, 0x40404040; byte 2 in 0xC0800000, 0xC0804000.
_E2M1X8_PTX = tl.constexpr("""{
.reg .b32 m, s, w, a3, a2, b3, b2, sa, sb, p;
and.b32 m, $8, 0x77777777;
shr.b32 s, m, 16;
shr.b32 w, $8, 16;
prmt.b32 a3, 0x3F3F3F00, 0x40404040, m;
prmt.b32 a2, 0xC0800000, 0xC0804000, m;
prmt.b32 b3, 0x3F3F3F00, 0x40404040, s;
prmt.b32 b2, 0xC0800000, 0xC0804000, s;
prmt.b32 sa, 0x80808080, 0x80808080, $8;
prmt.b32 sb, 0x80808080, 0x80808080, w;
shl.b32 sa, sa, 7;
shl.b32 sb, sb, 7;
lop3.b32 a3, a3, sa, 0x80808080, 0xF8;
lop3.b32 b3, b3, sb, 0x80808080, 0xF8;
prmt.b32 p, a2, a3, 0x5140;
shl.b32 $0, p, 16;
and.b32 $1, p, 0xFFFF0000;
prmt.b32 p, a2, a3, 0x7362;
shl.b32 $2, p, 16;
and.b32 $3, p, 0xFFFF0000;
prmt.b32 p, b2, b3, 0x5140;
shl.b32 $4, p, 16;
and.b32 $5, p, 0xFFFF0000;
prmt.b32 p, b2, b3, 0x7362;
shl.b32 $6, p, 16;
and.b32 $7, p, 0xFFFF0000;
}""")


@triton.jit
def e2m1x8(w, LUT: tl.constexpr):
    """int32 words of 8 codes -> the 8 float32 values (nibble order), exact, -0 for code 8."""
    if LUT:
        return tl.inline_asm_elementwise(_E2M1X8_PTX, "=r,=r,=r,=r,=r,=r,=r,=r,r", [w],
                                         dtype=(tl.float32,) * 8, is_pure=True, pack=1)
    return (e2m1_decode(w & 15), e2m1_decode((w >> 4) & 15), e2m1_decode((w >> 8) & 15),
            e2m1_decode((w >> 12) & 15), e2m1_decode((w >> 16) & 15), e2m1_decode((w >> 20) & 15),
            e2m1_decode((w >> 24) & 15), e2m1_decode((w >> 28) & 15))


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, s_ptr, y_ptr, alpha, N, K, stride_xm, stride_ym,
                 G: tl.constexpr, BN: tl.constexpr, BW: tl.constexpr, SPLIT_K: tl.constexpr, NV: tl.constexpr,
                 LUT: tl.constexpr):
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    pid_k = tl.program_id(2)
    WPG: tl.constexpr = G // 8  # words per group
    rn = pid_n * BN + tl.arange(0, BN)
    nmask = rn < N
    words = K // 8
    n_groups = K // G
    steps = words // BW
    per = tl.cdiv(steps, SPLIT_K)
    t0 = pid_k * per
    t1 = tl.minimum(t0 + per, steps)
    wi = tl.arange(0, BW)
    gi = tl.arange(0, BW // WPG)
    w_rows = w_ptr + rn[:, None] * words
    s_rows = s_ptr + rn[:, None] * n_groups
    x_row = x_ptr + m * stride_xm
    acc = tl.zeros((BN, BW // WPG), dtype=tl.float32)
    for t in range(t0, t1):
        w = tl.load(w_rows + (t * BW + wi)[None, :], mask=nmask[:, None], other=0)
        x8 = tl.load(x_row + (t * BW + wi)[:, None] * 8 + tl.arange(0, 8)[None, :]).to(tl.float32)
        x0, x1, x2, x3, x4, x5, x6, x7 = split8(tl.reshape(x8, (x8.shape[0], 4, 2)))
        v0, v1, v2, v3, v4, v5, v6, v7 = e2m1x8(w, LUT)
        p = v0 * x0[None, :] + v1 * x1[None, :] + v2 * x2[None, :] + v3 * x3[None, :] \
            + v4 * x4[None, :] + v5 * x5[None, :] + v6 * x6[None, :] + v7 * x7[None, :]
        part = tl.sum(tl.reshape(p, (BN, BW // WPG, WPG)), axis=2)  # one partial sum per group
        s = tl.load(s_rows + (t * (BW // WPG) + gi)[None, :], mask=nmask[:, None])  # masked rows: unused
        if NV:
            eff = e4m3_value(s)
        else:
            eff = pow2(s.to(tl.int32) - 127)
        acc += part * eff
    y = tl.sum(acc, axis=1) * alpha
    if SPLIT_K > 1:
        tl.atomic_add(y_ptr + m * stride_ym + rn, y, mask=nmask)
    else:
        store_rounded(y_ptr + m * stride_ym + rn, y, nmask)


def _pick(N: int, K: int, G: int):
    """(BN, BW, SPLIT_K, warps, stages): 8 rows x 64 words (512 elements) per step, no split-K (it needs a
    zeroed fp32 buffer and a cast, two more launches per linear). Re-swept on the H100: BENCHMARKS.md."""
    bw = max(G // 8, min(64, K // 8))
    while (K // 8) % bw:
        bw //= 2
    return 8, bw, 1, 4, 1


def fp4_gemv(x: torch.Tensor, w_packed: torch.Tensor, w_scales: torch.Tensor, spec: FormatSpec, alpha: float = 1.0,
             out_dtype=torch.bfloat16, config=None, out=None, lut: bool | None = None) -> torch.Tensor:
    """y (M, N) = alpha * x W^T for small M (decode), x in any float dtype, W packed (N, K/2) + group scales.

    `config` = (BN, BW, SPLIT_K, warps, stages) overrides the heuristic (BW: 8-code words per K step).
    `lut=False` decodes with plain integer ops instead of the byte-permute tables (the interpreter's path)."""
    if not spec.is_fp4:
        raise MrgptqError(f"fp4_gemv: {spec.name} is not an FP4 format")
    M, K = x.shape
    N, G = w_packed.shape[0], spec.group_size
    if w_packed.shape[1] * 2 != K:
        raise MrgptqError(f"fp4_gemv: x has K={K}, W has K={w_packed.shape[1] * 2}")
    if K % G or K % 8:
        raise MrgptqError(f"fp4_gemv: K={K} is not a multiple of the group size {G}")
    bn, bw, split, warps, stages = config or _pick(N, K, G)
    if (K // 8) % bw or bw % (G // 8):
        raise MrgptqError(f"fp4_gemv: {K // 8} words per row is not a multiple of the step {bw} (whole groups)")
    if not x.is_contiguous():
        x = x.contiguous()
    words = w_packed.contiguous().view(torch.int32)
    y = split_k_target(M, N, split, out, out_dtype, x.device)
    grid = (triton.cdiv(N, bn), M, split)
    _gemv_kernel[grid](x, words, _bytes(w_scales), y, alpha, N, K, K, y.stride(0),
                       G=G, BN=bn, BW=bw, SPLIT_K=split, NV=spec.scale_dtype == "e4m3",
                       LUT=(not INTERPRET) if lut is None else lut, num_warps=warps, num_stages=stages, **LAUNCH)
    return split_k_result(y, split, out, out_dtype)
