"""Decode GEMV with packed FP4 weights: y = alpha * x W^T for a few rows of x, on CUDA cores.

At batch 1 a GEMM tile wastes the tensor cores and the kernel is bound by how fast codes become numbers, so
this kernel avoids every register shuffle: the weight tile is read as (rows, groups, bytes-per-group), the
low and high nibbles of each byte multiply the even and odd elements of x (loaded strided, no interleave),
products are summed within each group, and the group scale multiplies one partial sum per group instead of
every element:

    y_n = alpha * sum_g s_{n,g} * sum_{j<G/2} (v(lo_{n,g,j}) x_{gG+2j} + v(hi_{n,g,j}) x_{gG+2j+1})

E2M1 -> number is two shifts into an fp16 bit pattern (sign to bit 15, the 3 magnitude bits to bits 9-11):
that fp16 equals v * 2^-14 exactly (code 1 lands on the fp16 subnormal 2^-15), and 2^14 is folded into alpha.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..errors import MrgptqError
from ..formats import FormatSpec
from .fp4 import pow2, store_rounded
from .gemm import split_k_result, split_k_target

DECODE_SHIFT = 2.0**14  # e2m1_as_fp16(c) = value(c) * 2^-14


@triton.jit
def e2m1_as_fp16(c):
    """int32 codes 0..15 -> float32 equal to value(code) * 2^-14, exactly."""
    bits = ((c & 8) << 12) | ((c & 7) << 9)
    return bits.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, s_ptr, y_ptr, alpha, N, K, stride_xm, stride_ym,
                 G: tl.constexpr, BN: tl.constexpr, BG: tl.constexpr, SPLIT_K: tl.constexpr, NV: tl.constexpr,
                 X_SPLIT: tl.constexpr):
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    pid_k = tl.program_id(2)
    H: tl.constexpr = G // 2  # bytes per group
    rn = pid_n * BN + tl.arange(0, BN)
    nmask = rn < N
    gi = tl.arange(0, BG)
    hj = tl.arange(0, H)
    n_groups = K // G
    steps = n_groups // BG
    per = tl.cdiv(steps, SPLIT_K)
    t0 = pid_k * per
    t1 = tl.minimum(t0 + per, steps)
    w_rows = w_ptr + rn[:, None, None] * (K // 2)
    s_rows = s_ptr + rn[:, None] * n_groups
    x_row = x_ptr + m * stride_xm
    acc = tl.zeros((BN,), dtype=tl.float32)
    for t in range(t0, t1):
        g = t * BG + gi
        byte = g[:, None] * H + hj[None, :]  # (BG, H) byte index within a row
        packed = tl.load(w_rows + byte[None, :, :], mask=nmask[:, None, None], other=0).to(tl.int32)
        if X_SPLIT:  # x stored per group as its even elements, then its odd ones: two contiguous loads
            xe = tl.load(x_row + g[:, None] * G + hj[None, :]).to(tl.float32)
            xo = tl.load(x_row + g[:, None] * G + H + hj[None, :]).to(tl.float32)
        else:
            xe = tl.load(x_row + 2 * byte).to(tl.float32)
            xo = tl.load(x_row + 2 * byte + 1).to(tl.float32)
        part = tl.sum(e2m1_as_fp16(packed & 15) * xe[None, :, :] + e2m1_as_fp16(packed >> 4) * xo[None, :, :],
                      axis=2)  # (BN, BG): one partial sum per group
        s = tl.load(s_rows + g[None, :], mask=nmask[:, None])  # masked rows are never stored
        if NV:
            eff = s.to(tl.float32)
        else:
            eff = pow2(s.to(tl.int32) - 127)
        acc += tl.sum(part * eff, axis=1)
    acc = acc * alpha
    if SPLIT_K > 1:
        tl.atomic_add(y_ptr + m * stride_ym + rn, acc, mask=nmask)
    else:
        store_rounded(y_ptr + m * stride_ym + rn, acc, nmask)


def _pick(N: int, K: int, G: int):
    """(BN, BG, SPLIT_K, warps, stages, x_split): 8 rows x 512 elements per step; the best of the H100 sweep
    was at most 16% faster at any Llama-3-8B shape (BENCHMARKS.md). No split-K: it needs a zeroed fp32
    buffer and a cast, two more launches per linear."""
    bg = max(1, min(512 // G, K // G))
    while (K // G) % bg:
        bg //= 2
    return 8, bg, 1, 4, 1, False


def fp4_gemv(x: torch.Tensor, w_packed: torch.Tensor, w_scales: torch.Tensor, spec: FormatSpec, alpha: float = 1.0,
             out_dtype=torch.bfloat16, config=None, out=None) -> torch.Tensor:
    """y (M, N) = alpha * x W^T for small M (decode), x in any float dtype, W packed (N, K/2) + group scales.

    `config` = (BN, BG, SPLIT_K, warps, stages, x_split) overrides the heuristic (BG groups per K step;
    x_split: pass x to the kernel as each group's even elements then its odd ones)."""
    if not spec.is_fp4:
        raise MrgptqError(f"fp4_gemv: {spec.name} is not an FP4 format")
    M, K = x.shape
    N, G = w_packed.shape[0], spec.group_size
    if w_packed.shape[1] * 2 != K:
        raise MrgptqError(f"fp4_gemv: x has K={K}, W has K={w_packed.shape[1] * 2}")
    if K % G:
        raise MrgptqError(f"fp4_gemv: K={K} is not a multiple of the group size {G}")
    bn, bg, split, warps, stages, x_split = config or _pick(N, K, G)
    if (K // G) % bg:
        raise MrgptqError(f"fp4_gemv: {K // G} groups per row is not a multiple of the step {bg}")
    if x_split:
        x = x.reshape(M, K // G, G // 2, 2).transpose(2, 3).contiguous()
    elif not x.is_contiguous():
        x = x.contiguous()
    y = split_k_target(M, N, split, out, out_dtype, x.device)
    grid = (triton.cdiv(N, bn), M, split)
    _gemv_kernel[grid](x, w_packed, w_scales, y, alpha * DECODE_SHIFT, N, K, K, y.stride(0),
                       G=G, BN=bn, BG=bg, SPLIT_K=split, NV=spec.scale_dtype == "e4m3", X_SPLIT=x_split,
                       num_warps=warps, num_stages=stages)
    return split_k_result(y, split, out, out_dtype)
