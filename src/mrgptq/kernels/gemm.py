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
from . import LAUNCH
from .fp4 import (
    FP8_ARCH,
    INTERPRET,
    e2m1_decode,
    e4m3_bits,
    e4m3_value,
    pow2,
    ptx_arch,
    round_bf16,
    store_rounded,
)


@triton.jit
def _pow2_rel(d):
    """2^d for d <= 0, zero below float32's range."""
    return tl.where(d >= -127, pow2(tl.maximum(d, -127)), 0.0)


@triton.jit
def _operand(ptr, sptr, rows, rmask, k0, K, R: tl.constexpr, BK: tl.constexpr, G: tl.constexpr, NV: tl.constexpr):
    """Decoded (R, BK) float32 values of a packed operand and each element's group scale (float32 for
    NVFP4, from its E4M3 byte; the int exponent for MXFP4). (Gathering bytes per element instead measured 3x
    slower on H100.)"""
    pc = k0 // 2 + tl.arange(0, BK // 2)
    packed = tl.load(ptr + rows[:, None] * (K // 2) + pc[None, :], mask=rmask[:, None], other=0)
    codes = tl.reshape(tl.join(packed & 0xF, packed >> 4), (R, BK))
    vals = e2m1_decode(codes)
    sc = k0 // G + tl.arange(0, BK // G)
    s = tl.load(sptr + rows[:, None] * (K // G) + sc[None, :], mask=rmask[:, None])  # masked rows: unused
    if NV:
        s = e4m3_value(s)
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


def _bytes(scales: torch.Tensor) -> torch.Tensor:
    """Group scales as the kernels read them: E4M3 ones as their bytes (Triton has no fp8 type before sm_89)."""
    return scales.view(torch.uint8) if scales.dtype == torch.float8_e4m3fn else scales


def fp8_dot(device: torch.device) -> bool:
    """FP8 tensor cores (Ada, Hopper and later) or the interpreter, whose dot runs in float32."""
    return INTERPRET or ptx_arch(device) >= FP8_ARCH


def _sm_count(device) -> int:
    if device.type != "cuda":
        return 4
    i = device.index or 0
    if i not in _SMS:
        _SMS[i] = torch.cuda.get_device_properties(i).multi_processor_count
    return _SMS[i]


@triton.jit
def pair_offsets(rows, t, K, T: tl.constexpr, G: tl.constexpr):
    """Offsets of the (R, T, G/2) element pairs of pair_operand in an (R, K/2) array of pairs."""
    g = t * T + tl.arange(0, T)
    return rows[:, None, None] * (K // 2) + g[None, :, None] * (G // 2) + tl.arange(0, G // 2)[None, None, :]


@triton.jit
def pair_operand(ptr, sptr, rows, rmask, t, K, T: tl.constexpr, G: tl.constexpr):
    """Groups t*T .. t*T+T-1 of R packed rows, with no reshape: the bytes (R, T, G/2) as int32 (each holds an
    even element in its low nibble and the next odd one in its high nibble) and the raw group scales (R, T).
    Outputs are written as pairs too (two 16-bit or 8-bit values per word), so no layout conversion is needed."""
    packed = tl.load(ptr + pair_offsets(rows, t, K, T, G), mask=rmask[:, None, None], other=0)
    g = t * T + tl.arange(0, T)
    s = tl.load(sptr + rows[:, None] * (K // G) + g[None, :], mask=rmask[:, None])  # masked rows: unused
    return packed.to(tl.int32), s


# A byte's two codes as float32 E2M1 values times 2^-126, by placing bits alone: the magnitude code at bits
# 22-24 (the exponent's two low bits and the first mantissa bit) is the value times 2^-126, E2M1's 0.5
# included as a float32 subnormal (as tcgemv.py does in bf16); the sign goes to bit 31. Then * 2^126 and
# * the scale (both exact or rounded once, as formats.dequantize's product) and one paired conversion.
_PAIR_DECODE = """.reg .b32 l, h, t;
shl.b32 l, $1, 22;
and.b32 l, l, 0x01C00000;
shl.b32 t, $1, 28;
and.b32 t, t, 0x80000000;
or.b32 l, l, t;
shl.b32 h, $1, 18;
and.b32 h, h, 0x01C00000;
shl.b32 t, $1, 24;
and.b32 t, t, 0x80000000;
or.b32 h, h, t;
mul.rn.f32 l, l, 0f7E800000;
mul.rn.f32 h, h, 0f7E800000;
mul.rn.f32 l, l, $2;
mul.rn.f32 h, h, $2;
"""
_INTERP = tl.constexpr(INTERPRET)  # the CPU interpreter runs no PTX: the same products in plain ops
_PAIR_BF16 = tl.constexpr("{" + _PAIR_DECODE + "cvt.rn.bf16x2.f32 $0, h, l;\n}")
_PAIR_F16 = tl.constexpr("{" + _PAIR_DECODE + "cvt.rn.f16x2.f32 $0, h, l;\n}")
_PAIR_E4M3 = tl.constexpr("{" + _PAIR_DECODE + "cvt.rn.satfinite.e4m3x2.f32 $0, h, l;\n}")


@triton.jit
def _bits16(v, F16: tl.constexpr):
    """float32 -> the int32 holding its nearest-even bf16 (or fp16) bit pattern in the low 16 bits."""
    h = v.to(tl.float16) if F16 else round_bf16(v)
    return h.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF


@triton.jit
def pairs16(b, scale, F16: tl.constexpr):
    """Bytes (int32) times float32 scales -> int32 words of two bf16 (or fp16) values, the low nibble's in the
    low half: e2m1_decode(code) * scale rounded to nearest even, as formats.dequantize."""
    if _INTERP:
        lo = e2m1_decode(b & 0xF) * scale
        hi = e2m1_decode(b >> 4) * scale
        return _bits16(lo, F16) | (_bits16(hi, F16) << 16)
    return tl.inline_asm_elementwise(_PAIR_F16 if F16 else _PAIR_BF16, "=r,r,r", [b, scale], dtype=tl.int32,
                                     is_pure=True, pack=1)


@triton.jit
def pairs_e4m3(b, scale):
    """Bytes (int32) times float32 scales -> 16-bit words of two E4M3 bytes, the low nibble's in the low byte
    (rounded to nearest even where a product is below E4M3's range)."""
    if _INTERP:
        lo = e4m3_bits(e2m1_decode(b & 0xF) * scale)
        return (lo | (e4m3_bits(e2m1_decode(b >> 4) * scale) << 8)).to(tl.int16)
    return tl.inline_asm_elementwise(_PAIR_E4M3, "=h,r,r", [b, scale], dtype=tl.int16, is_pure=True, pack=1)


@triton.jit
def _dequant_kernel(ptr, sptr, out, N, K, gdiv, R: tl.constexpr, T: tl.constexpr, G: tl.constexpr,
                    NV: tl.constexpr, OUT: tl.constexpr):
    """OUT 0: float32 (two stores), 1: bf16 pairs as int32 words, 2: fp16 pairs."""
    rows = tl.program_id(0) * R + tl.arange(0, R)
    rmask = rows < N
    t = tl.program_id(1)
    b, s = pair_operand(ptr, sptr, rows, rmask, t, K, T, G)
    eff = tl.math.div_rn(e4m3_value(s) if NV else pow2(s.to(tl.int32) - 127), gdiv)  # IEEE, as effective_scales
    eff = eff[:, :, None]
    offs = pair_offsets(rows, t, K, T, G)
    m = rmask[:, None, None]
    if OUT == 0:
        tl.store(out + 2 * offs, e2m1_decode(b & 0xF) * eff, mask=m)  # codes * scale, as formats.dequantize
        tl.store(out + 2 * offs + 1, e2m1_decode(b >> 4) * eff, mask=m)
    else:
        tl.store(out + offs, pairs16(b, eff, OUT == 2), mask=m)


PAIR_TILE = (16, 256, 4)  # rows, elements per row, warps per program: best of 7 tiles on H100 and H200 (BENCHMARKS.md)


def pair_tiles(N: int, K: int, G: int, rows: int, elems: int):
    """(grid, T) for the pair kernels: `rows` x `elems` elements per program (fewer where K is shorter)."""
    T = max(1, min(elems, K) // G)
    while (K // G) % T:
        T //= 2
    return (triton.cdiv(N, rows), K // G // T), T


def dequantize(packed: torch.Tensor, scales: torch.Tensor, spec: FormatSpec, global_scale: float = 1.0,
               dtype=torch.bfloat16, config=None) -> torch.Tensor:
    """(N, K) values of a packed FP4 operand in one pass: bit-identical to formats.dequantize(q, dtype).

    Prefill uses it: for many rows a 16-bit GEMM on dequantized operands beats decoding in the GEMM loop.
    `config` = (rows, elements per row, warps) per program overrides the default tile."""
    N, K = packed.shape[0], packed.shape[1] * 2
    G = spec.group_size
    if K % G or G % 2:
        raise MrgptqError(f"dequantize: K={K} must be a multiple of the group size {G}")
    out = torch.empty((N, K), dtype=dtype, device=packed.device)
    kind = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}[dtype]
    r, e, w = config or PAIR_TILE
    grid, T = pair_tiles(N, K, G, r, e)
    _dequant_kernel[grid](packed, _bytes(scales), out if kind == 0 else out.view(torch.int32), N, K,
                          float(global_scale), R=r, T=T, G=G, NV=spec.scale_dtype == "e4m3", OUT=kind, num_warps=w,
                          **LAUNCH)
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
        a, _bytes(a_scales) if a_fp4 else a, w_packed, _bytes(w_scales), c, alpha, M, N, K, a.stride(0), c.stride(0),
        G=g, BM=bm, BN=bn, BK=bk, SPLIT_K=split, A_FP4=a_fp4, NV=nv, FP8=a_fp4 and not nv and fp8_dot(a.device),
        F32_DOT=INTERPRET,
        num_warps=warps, num_stages=stages, **LAUNCH,
    )
    return split_k_result(c, split, out, out_dtype)
