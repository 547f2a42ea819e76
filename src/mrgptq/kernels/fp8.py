"""MXFP4 operands as exact E4M3 values with one power-of-two scale per row: W4A4 prefill on FP8 tensor cores.

An MXFP4 element is c * 2^e_g (c an E2M1 value, e_g its group's E8M0 exponent). With e_max the row's largest
group exponent, c * 2^(e_g - e_max + 6) is an E4M3 number exactly whenever e_g - e_max >= -14 (largest 6 * 2^6
= 384 <= 448; smallest step 0.5 * 2^-8 = 2^-9, E4M3's subnormal step), so

    A W^T = diag(2^(e_max,a - 6)) (A8 W8^T) diag(2^(e_max,w - 6))

is one FP8 GEMM with per-row and per-column scales (torch._scaled_mm's rowwise scaling, cuBLAS on Hopper).
A group more than 2^14 below its row's largest is rounded to E4M3's subnormals instead: an error below
2^-19 of the row's largest element. NVFP4 has no such form: its E4M3 group scales times E2M1 values need up
to 5 significant bits, E4M3 holds 4, so NVFP4 W4A4 stays on the 16-bit path.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..errors import MrgptqError
from ..formats import FormatSpec
from . import LAUNCH
from .fp4 import FP8_ARCH, pow2, ptx_arch
from .gemm import PAIR_TILE, pair_offsets, pair_operand, pair_tiles, pairs_e4m3


@triton.jit
def _fp8_rows_kernel(ptr, sptr, emax_ptr, out_ptr, rs_ptr, N, K, R: tl.constexpr, T: tl.constexpr,
                     G: tl.constexpr):
    """One (R, T groups) tile: E4M3 pairs (even element in the low byte) stored as 16-bit words."""
    rows = tl.program_id(0) * R + tl.arange(0, R)
    rmask = rows < N
    t = tl.program_id(1)
    emax = tl.load(emax_ptr + rows, mask=rmask, other=0).to(tl.int32)
    if t == 0:
        tl.store(rs_ptr + rows, pow2(emax - 127) * 0.015625, mask=rmask)  # 2^(e_max - 6), exact down to 2^-133
    b, s = pair_operand(ptr, sptr, rows, rmask, t, K, T, G)
    f = pow2(tl.maximum(s.to(tl.int32) - emax[:, None] + 6, -127))[:, :, None]  # exact when e - e_max >= -14
    tl.store(out_ptr + pair_offsets(rows, t, K, T, G), pairs_e4m3(b, f), mask=rmask[:, None, None])


def fp8_rows(packed: torch.Tensor, scales: torch.Tensor, spec: FormatSpec, config=None):
    """(E4M3 values (R, K), float32 row scales (R,)) with values * scales == formats.dequantize (MXFP4).
    `config` = (rows, elements per row, warps) per program overrides the default tile."""
    if spec.scale_dtype != "e8m0" or not spec.is_fp4:
        raise MrgptqError(f"fp8_rows: {spec.name} has no exact E4M3 form (only MXFP4 does)")
    if 0 < ptx_arch(packed.device) < FP8_ARCH:
        raise MrgptqError("fp8_rows: FP8 needs an Ada or newer GPU (sm_89+); use gemm.dequantize here")
    N, K = packed.shape[0], packed.shape[1] * 2
    G = spec.group_size
    if K % G:
        raise MrgptqError(f"fp8_rows: K={K} must be a multiple of the group size {G}")
    out = torch.empty((N, K), dtype=torch.float8_e4m3fn, device=packed.device)
    rs = torch.empty((N,), dtype=torch.float32, device=packed.device)
    emax = scales.amax(dim=1)  # the row's largest group exponent (biased, uint8)
    r, e, w = config or PAIR_TILE
    grid, T = pair_tiles(N, K, G, r, e)
    _fp8_rows_kernel[grid](packed, scales, emax, out.view(torch.int16), rs, N, K, R=r, T=T, G=G, num_warps=w, **LAUNCH)
    return out, rs


def has_fp8_gemm(device) -> bool:
    """torch._scaled_mm with rowwise scales needs compute capability 8.9 (Ada) or 9.x (Hopper)."""
    return device.type == "cuda" and hasattr(torch, "_scaled_mm") and ptx_arch(device) >= FP8_ARCH


def fp8_matmul(a8, ra, w8, rw, alpha: float = 1.0, out_dtype=torch.bfloat16) -> torch.Tensor:
    """alpha * diag(ra) (A8 W8^T) diag(rw): one FP8 cuBLAS GEMM with per-row and per-column scales."""
    if alpha != 1.0:
        ra = ra * alpha
    return torch._scaled_mm(a8, w8.t(), scale_a=ra[:, None], scale_b=rw[None, :], out_dtype=out_dtype)


def mxfp4_w4a4_matmul(a_packed, a_scales, w_packed, w_scales, spec: FormatSpec, alpha: float = 1.0,
                      out_dtype=torch.bfloat16) -> torch.Tensor:
    """alpha * A W^T for MXFP4 A (M, K/2) and W (N, K/2): both operands to E4M3, one FP8 GEMM (cuBLAS)."""
    return fp8_matmul(*fp8_rows(a_packed, a_scales, spec), *fp8_rows(w_packed, w_scales, spec), alpha, out_dtype)
