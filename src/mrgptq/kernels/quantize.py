"""Kernel 1: fused block-Hadamard rotation + FP4 quantization of activations, one pass over memory.

x (M, K) -> packed codes (M, K/2) uint8 + group scales (M, K/g): codes(Q(x R)) with R = diag(H_b / sqrt(b)).
The rotation is a tensor-core product with the +-1 Sylvester block (exact in bf16), then one multiply by
1/sqrt(b), as `transforms.fwht` does; the scale and rounding rules are `formats.scales` / `formats.codec`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..errors import MrgptqError
from ..formats import FormatSpec
from ..transforms.hadamard import sylvester
from .fp4 import (
    INTERPRET,
    RULE_IDS,
    bf16_round_trip,
    e2m1_encode,
    e4m3_round,
    mx_exponent,
    pow2,
    store_rounded,
)


@triton.jit
def _load_h(h_ptr, B: tl.constexpr):
    hb = tl.arange(0, B)
    return tl.load(h_ptr + hb[:, None] * B + hb[None, :])


@triton.jit
def _block_rotate(x, h, B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                  INV_SQRT_B: tl.constexpr, F32_DOT: tl.constexpr):
    """(BLOCK_M, BLOCK_K) tile times diag(H_b) / sqrt(b), float32: a tensor-core product with the exact +-1
    block (F32_DOT: in fp32, as the CPU interpreter has no bf16 dot), then one multiply, as transforms.fwht."""
    xb = tl.reshape(x, (BLOCK_M * BLOCK_K // B, B))
    if x.dtype == tl.float32 or F32_DOT:
        y = tl.dot(xb.to(tl.float32), h.to(tl.float32), input_precision="ieee")
    else:
        y = tl.dot(xb, h.to(x.dtype))
    return tl.reshape(y, (BLOCK_M, BLOCK_K)) * INV_SQRT_B


@triton.jit
def _rotate_quantize_kernel(
    x_ptr, h_ptr, packed_ptr, scale_ptr, gs_ptr, M, K, stride_xm, PROGRAMS,
    B: tl.constexpr, G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    ROTATE: tl.constexpr, NV: tl.constexpr, RULE: tl.constexpr, GDIV: tl.constexpr, INV_SQRT_B: tl.constexpr,
    F32_DOT: tl.constexpr,
):
    """Persistent: the (row block, K tile) units are one row-major list and program p takes units p, p +
    PROGRAMS, ... (H loaded once per program; a fixed number of programs per SM, so no partial last wave).

    Per element the work is what bandwidth allows (~25 instructions): one product, one bf16 rounding, the
    group max, one multiply by 2^-e (MXFP4: an exact division) or a correctly rounded division (NVFP4), the
    bit-trick encode and half a pack. Codes stay int32 until the store (8-bit arithmetic costs extra)."""
    if ROTATE:
        h = _load_h(h_ptr, B)
    if NV:
        gs = tl.load(gs_ptr)
    k_tiles = K // BLOCK_K
    for u in range(tl.program_id(0), tl.cdiv(M, BLOCK_M) * k_tiles, PROGRAMS):
        rb = u // k_tiles
        kt = u - rb * k_tiles
        rows = rb * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = rows < M
        cols = kt * BLOCK_K + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=rmask[:, None], other=0.0)
        if ROTATE:
            y = _block_rotate(x, h, B, BLOCK_M, BLOCK_K, INV_SQRT_B, F32_DOT)
            if x.dtype == tl.bfloat16:  # the runtime rotates into bf16, then quantizes (as compressed-tensors)
                y = bf16_round_trip(y, F32_DOT)
            elif x.dtype == tl.float16:
                y = y.to(tl.float16).to(tl.float32)
        else:
            y = x.to(tl.float32)
        yg = tl.reshape(y, (BLOCK_M, BLOCK_K // G, G))
        amax = tl.max(tl.abs(yg), axis=2)
        if NV:
            s8 = e4m3_round(tl.minimum(gs * tl.math.div_rn(amax, 6.0), 448.0)).to(tl.float8e4nv)  # exact cast
            eff = tl.math.div_rn(s8.to(tl.float32), gs)
            stored = s8.to(tl.uint8, bitcast=True)
            codes = e2m1_encode(tl.math.div_rn(yg, tl.where(eff > 0, eff, 1.0)[:, :, None]))
            codes = tl.where(eff[:, :, None] > 0, codes, 0)
        else:
            e = mx_exponent(amax, RULE)
            stored = (e + 127).to(tl.uint8)
            if GDIV != 1.0:
                codes = e2m1_encode(tl.math.div_rn(yg, tl.math.div_rn(pow2(e), GDIV)[:, :, None]))
            else:  # dividing by 2^e is multiplying by 2^-e, exactly
                codes = e2m1_encode(yg * pow2(-e)[:, :, None])
        lo, hi = tl.split(tl.reshape(codes, (BLOCK_M, BLOCK_K // 2, 2)))
        pcols = kt * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
        tl.store(packed_ptr + rows[:, None] * (K // 2) + pcols[None, :], (lo | (hi << 4)).to(tl.uint8),
                 mask=rmask[:, None])
        scols = kt * (BLOCK_K // G) + tl.arange(0, BLOCK_K // G)
        tl.store(scale_ptr + rows[:, None] * (K // G) + scols[None, :], stored.to(scale_ptr.dtype.element_ty,
                 bitcast=True), mask=rmask[:, None])


@triton.jit
def _rotate_kernel(x_ptr, h_ptr, y_ptr, M, K, stride_xm, B: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_K: tl.constexpr, INV_SQRT_B: tl.constexpr, F32_DOT: tl.constexpr):
    """W4A16's online half: y = x R in x's dtype (rotated in fp32, rounded once)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    rmask = rows < M
    x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=rmask[:, None], other=0.0)
    y = _block_rotate(x, _load_h(h_ptr, B), B, BLOCK_M, BLOCK_K, INV_SQRT_B, F32_DOT)
    store_rounded(y_ptr + rows[:, None] * K + cols[None, :], y, rmask[:, None])


def rotate(x: torch.Tensor, block: int, block_m: int = 32) -> torch.Tensor:
    """x R for a power-of-two block Hadamard R (leading dims flattened), in x's dtype."""
    K = x.shape[-1]
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    block_k = max(block, 64)
    if K % block_k:
        raise MrgptqError(f"rotate: K={K} must be a multiple of {block_k}")
    y = torch.empty_like(x2)
    grid = (triton.cdiv(x2.shape[0], block_m), K // block_k)
    _rotate_kernel[grid](x2, _hadamard_pm1(block, x.device), y, x2.shape[0], K, x2.stride(0), B=block,
                         BLOCK_M=block_m, BLOCK_K=block_k, INV_SQRT_B=float(block) ** -0.5, F32_DOT=INTERPRET)
    return y.reshape(x.shape)


_H_CACHE: dict = {}


def _hadamard_pm1(b: int, device) -> torch.Tensor:
    key = (b, str(device))
    if key not in _H_CACHE:
        _H_CACHE[key] = sylvester(b).to(torch.float32).to(device).contiguous()
    return _H_CACHE[key]


def _pick(M: int, K: int, min_k: int, sms: int):
    """(BLOCK_M, BLOCK_K, PER_SM, warps): 32 x 128 tiles, 8 programs per SM: within 2% of the best of the
    H200 sweep for both formats at M=4096, K 4096 and 14336 (BENCHMARKS.md). The best, 16 x 256, sums the
    rotation's products on the tensor cores in another order: an NVFP4 b128 value then landed a bf16 step
    away from `rotate`'s, against which the GPU test checks codes bit-exact; 32 x 128 agrees there."""
    bk = 128 if K % 128 == 0 and min_k <= 128 else min_k
    return 32, bk, 8, 4


def rotate_quantize(x: torch.Tensor, spec: FormatSpec, block: int | None, rule: str = "spec",
                    global_scale: torch.Tensor | None = None, out=None, config=None):
    """(packed codes (M, K/2) uint8, scales (M, K/g)) of Q(x R), R the block-`block` Hadamard (None: no R).

    Leading dims of x are flattened. NVFP4 needs its static per-tensor `global_scale`.
    `config` = (BLOCK_M, BLOCK_K, PER_SM, warps) overrides the heuristic (benchmarks sweep it): tile, and
    programs per SM of the persistent grid.
    """
    from ..formats.scales import FOUR_THIRDS_GLOBAL
    from .gemm import _sm_count

    if not spec.is_fp4:
        raise MrgptqError(f"rotate_quantize: {spec.name} is not an FP4 format")
    K = x.shape[-1]
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M = x2.shape[0]
    g = spec.group_size
    b = block or g
    if block is not None and (block & (block - 1) or block < 16 or block > 256):
        raise MrgptqError(f"rotate_quantize: rotation block {block} must be a power of two in 16..256")
    min_k = max(b, g, 64)
    if K % min_k:
        raise MrgptqError(f"rotate_quantize: K={K} must be a multiple of {min_k}")
    sms = _sm_count(x.device)
    bm, bk, per_sm, warps = config or _pick(M, K, min_k, sms)
    if bk % min_k or K % bk:
        raise MrgptqError(f"rotate_quantize: K tile {bk} must divide K={K} and be a multiple of {min_k}")
    nv = spec.scale_dtype == "e4m3"
    if nv and global_scale is None:
        raise MrgptqError("rotate_quantize: NVFP4 needs the static activation global scale")
    sdt = torch.float8_e4m3fn if nv else torch.uint8
    if out is None:
        packed = torch.empty((M, K // 2), dtype=torch.uint8, device=x.device)
        scales = torch.empty((M, K // g), dtype=sdt, device=x.device)
    else:
        packed, scales = out
    h = _hadamard_pm1(b, x.device) if block is not None else packed  # dummy pointer when not rotating
    gs = global_scale.reshape(1).float().to(x.device) if nv else packed
    gdiv = FOUR_THIRDS_GLOBAL if (not nv and rule == "four-thirds") else 1.0
    programs = max(1, min(triton.cdiv(M, bm) * (K // bk), per_sm * sms))
    _rotate_quantize_kernel[(programs,)](
        x2, h, packed, scales, gs, M, K, x2.stride(0), programs,
        B=b, G=g, BLOCK_M=bm, BLOCK_K=bk, ROTATE=block is not None, NV=nv,
        RULE=RULE_IDS.get(rule, 0), GDIV=gdiv, INV_SQRT_B=float(b) ** -0.5, F32_DOT=INTERPRET, num_warps=warps,
    )
    return packed.reshape(*x.shape[:-1], K // 2), scales.reshape(*x.shape[:-1], K // g)
