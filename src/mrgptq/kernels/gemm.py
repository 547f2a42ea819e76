"""Kernels 2 and 3: GEMMs with packed FP4 weights, y = x W^T (W dequantized on the fly, never in memory).

W4A16 (decode): bf16 x times E2M1 codes decoded in registers and scaled per group, bf16 tensor cores,
split-K so a batch-1 GEMV still puts every SM to work (partial sums meet by fp32 atomics).
W4A4 (prefill): both operands packed. MXFP4 runs on FP8 tensor cores: E2M1 * 2^(e_g - e_max) is exact in
E4M3 for e_g - e_max >= -8, so each K-tile folds its power-of-two group scales into the operands and applies
one 2^(e_max,row + e_max,col) per tile. NVFP4's E4M3 group scales do not fold into E4M3, so it runs on bf16
tensor cores, where code * scale is exact.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..errors import MrgptqError
from ..formats import FormatSpec
from .fp4 import INTERPRET, e2m1_decode, pow2, store_rounded


@triton.jit
def _pow2_rel(d):
    """2^d for d <= 0, zero below float32's range."""
    return tl.where(d >= -127, pow2(tl.maximum(d, -127)), 0.0)


@triton.jit
def _operand(ptr, sptr, rows, rmask, k0, K, R: tl.constexpr, BK: tl.constexpr, G: tl.constexpr, NV: tl.constexpr):
    """Decoded (R, BK) float32 values of a packed operand and each element's group scale (float32 for
    NVFP4, the int exponent for MXFP4). (Gathering bytes per element instead measured 3x slower on H100.)"""
    pc = k0 // 2 + tl.arange(0, BK // 2)
    packed = tl.load(ptr + rows[:, None] * (K // 2) + pc[None, :], mask=rmask[:, None], other=0)
    codes = tl.reshape(tl.join(packed & 0xF, packed >> 4), (R, BK))
    vals = e2m1_decode(codes)
    sc = k0 // G + tl.arange(0, BK // G)
    s = tl.load(sptr + rows[:, None] * (K // G) + sc[None, :], mask=rmask[:, None])  # masked rows: unused
    if NV:
        s = s.to(tl.float32)
    else:
        s = s.to(tl.int32) - 127
    s = tl.reshape(tl.broadcast_to(s[:, :, None], (R, BK // G, G)), (R, BK))
    return vals, s


@triton.jit
def _scaled_bf16(vals, s, NV: tl.constexpr):
    eff = s if NV else pow2(s)
    return (vals * eff).to(tl.bfloat16)


@triton.jit
def _folded_fp8(vals, e):
    emax = tl.max(e, axis=1)
    return (vals * _pow2_rel(e - emax[:, None])).to(tl.float8e4nv), emax


@triton.jit
def _dot_nt(a, b, F32_DOT: tl.constexpr):
    """a (M, K) times b (N, K) transposed, fp32 accumulate (F32_DOT: exact fp32, for the CPU interpreter)."""
    if F32_DOT:
        return tl.dot(a.to(tl.float32), tl.trans(b.to(tl.float32)), input_precision="ieee")
    return tl.dot(a, tl.trans(b))


@triton.jit
def _fp4_gemm_kernel(
    a_ptr, a_scale_ptr, b_ptr, b_scale_ptr, c_ptr, alpha, M, N, K, stride_am, stride_cm,
    G: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLIT_K: tl.constexpr,
    A_FP4: tl.constexpr, NV: tl.constexpr, FP8: tl.constexpr, F32_DOT: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    mmask = rm < M
    nmask = rn < N
    k_tiles = K // BK
    per = tl.cdiv(k_tiles, SPLIT_K)
    t0 = pid_k * per
    t1 = tl.minimum(t0 + per, k_tiles)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for t in range(t0, t1):
        k0 = t * BK
        bv, bs = _operand(b_ptr, b_scale_ptr, rn, nmask, k0, K, BN, BK, G, NV)
        if A_FP4:
            av, as_ = _operand(a_ptr, a_scale_ptr, rm, mmask, k0, K, BM, BK, G, NV)
            if FP8:
                a8, amax_e = _folded_fp8(av, as_)
                b8, bmax_e = _folded_fp8(bv, bs)
                acc += _dot_nt(a8, b8, F32_DOT) * (pow2(amax_e)[:, None] * pow2(bmax_e)[None, :])
            else:
                acc += _dot_nt(_scaled_bf16(av, as_, NV), _scaled_bf16(bv, bs, NV), F32_DOT)
        else:
            kc = k0 + tl.arange(0, BK)
            a = tl.load(a_ptr + rm[:, None] * stride_am + kc[None, :], mask=mmask[:, None], other=0.0)
            acc += _dot_nt(a.to(tl.bfloat16), _scaled_bf16(bv, bs, NV), F32_DOT)
    acc = acc * alpha
    cmask = mmask[:, None] & nmask[None, :]
    cptr = c_ptr + rm[:, None] * stride_cm + rn[None, :]
    if SPLIT_K > 1:
        tl.atomic_add(cptr, acc, mask=cmask)
    else:
        store_rounded(cptr, acc, cmask)


def _pick(M: int, N: int, K: int, sms: int):
    """Tile sizes and split-K: small M streams the weight across all SMs; large M tiles for reuse."""
    bk = next(b for b in (256, 128, 64, 32, 16) if K % b == 0)
    if M <= 16:
        bm, bn, warps, stages = 16, 32, 4, 4  # measured best of BN 32/64/128 on H100 (BENCHMARKS.md)
        bk = min(bk, 256)
    elif M <= 64:
        bm, bn, warps, stages = 64, 64, 4, 4
        bk = min(bk, 128)
    else:
        bm, bn, warps, stages = 128, 128, 8, 3
        bk = min(bk, 128)
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    k_tiles = K // bk
    split = 1
    while tiles * split < 2 * sms and split * 2 <= k_tiles and split < 16:
        split *= 2
    return bm, bn, bk, split, warps, stages


_SMS: dict = {}


def _sm_count(device) -> int:
    if device.type != "cuda":
        return 4
    i = device.index or 0
    if i not in _SMS:
        _SMS[i] = torch.cuda.get_device_properties(i).multi_processor_count
    return _SMS[i]


@triton.jit
def _dequant_kernel(ptr, sptr, out, N, K, gdiv, R: tl.constexpr, BK: tl.constexpr, G: tl.constexpr,
                    NV: tl.constexpr):
    rows = tl.program_id(0) * R + tl.arange(0, R)
    rmask = rows < N
    k0 = tl.program_id(1) * BK
    vals, s = _operand(ptr, sptr, rows, rmask, k0, K, R, BK, G, NV)
    eff = (s if NV else pow2(s)) / gdiv  # formats.effective_scales, then codes * scale as formats.dequantize
    cols = k0 + tl.arange(0, BK)
    store_rounded(out + rows[:, None] * K + cols[None, :], vals * eff, rmask[:, None])


def dequantize(packed: torch.Tensor, scales: torch.Tensor, spec: FormatSpec, global_scale: float = 1.0,
               dtype=torch.bfloat16) -> torch.Tensor:
    """(N, K) values of a packed FP4 operand in one pass: bit-identical to formats.dequantize(q, dtype).

    Prefill uses it: for many rows a 16-bit GEMM on dequantized operands beats decoding in the GEMM loop."""
    N, K = packed.shape[0], packed.shape[1] * 2
    bk = 256 if K % 256 == 0 else 64
    out = torch.empty((N, K), dtype=dtype, device=packed.device)
    grid = (triton.cdiv(N, 16), K // bk)
    _dequant_kernel[grid](packed, scales, out, N, K, float(global_scale), R=16, BK=bk, G=spec.group_size,
                          NV=spec.scale_dtype == "e4m3")
    return out


def split_k_target(M: int, N: int, split: int, out, out_dtype, device) -> torch.Tensor:
    """Where a kernel writes y (M, N): a zeroed fp32 buffer its split-K programs add into with atomics, or
    `out` / a fresh tensor of out_dtype that a single pass stores into directly."""
    if split > 1:
        return torch.zeros((M, N), dtype=torch.float32, device=device)
    return out if out is not None else torch.empty((M, N), dtype=out_dtype, device=device)


def split_k_result(c: torch.Tensor, split: int, out, out_dtype) -> torch.Tensor:
    """y in out_dtype (in `out` if given) from what split_k_target returned, after the kernel ran."""
    if split == 1:
        return c
    if out is None:
        return c.to(out_dtype)
    out.copy_(c)
    return out


def fp4_matmul(a, w_packed, w_scales, spec: FormatSpec, alpha: float = 1.0, a_scales=None,
               out_dtype=torch.bfloat16, config=None, out=None):
    """y (M, N) = alpha * A W^T with W packed (N, K/2) + group scales (N, K/g).

    A is bf16/fp16 (M, K) for W4A16, or packed (M, K/2) uint8 with `a_scales` for W4A4. `alpha` carries the
    per-tensor global scales (1 / (g_w g_a)), a Python float so no device sync happens per call.
    `config` = (BM, BN, BK, SPLIT_K, warps, stages) overrides the heuristic.
    """
    if not spec.is_fp4:
        raise MrgptqError(f"fp4_matmul: {spec.name} is not an FP4 format")
    a_fp4 = a_scales is not None
    N, K = w_packed.shape[0], w_packed.shape[1] * 2
    M = a.shape[0]
    if (a.shape[1] * (2 if a_fp4 else 1)) != K:
        raise MrgptqError(f"fp4_matmul: A has K={a.shape[1]}, W has K={K}")
    g = spec.group_size
    nv = spec.scale_dtype == "e4m3"
    bm, bn, bk, split, warps, stages = config or _pick(M, N, K, _sm_count(a.device))
    if K % bk or bk % g:
        raise MrgptqError(f"fp4_matmul: K={K} must be a multiple of the K tile {bk}, itself of the group {g}")
    if a.stride(-1) != 1:
        a = a.contiguous()
    c = split_k_target(M, N, split, out, out_dtype, a.device)
    grid = (triton.cdiv(M, bm), triton.cdiv(N, bn), split)
    _fp4_gemm_kernel[grid](
        a, a_scales if a_fp4 else a, w_packed, w_scales, c, alpha, M, N, K, a.stride(0), c.stride(0),
        G=g, BM=bm, BN=bn, BK=bk, SPLIT_K=split, A_FP4=a_fp4, NV=nv, FP8=a_fp4 and not nv, F32_DOT=INTERPRET,
        num_warps=warps, num_stages=stages,
    )
    return split_k_result(c, split, out, out_dtype)
