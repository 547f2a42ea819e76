"""Rotate + quantize with x loaded straight into the rotation's register operand (Gluon, Hopper).

The Triton kernel (`quantize._rotate_quantize_kernel`) hands x to the rotation's wgmma through shared memory:
Triton stages each tile with cp.async behind a CTA barrier, and the scales take a second barrier to be re-laid
for their store (66-72% of the device copy for MXFP4 b32, no stall reason dominant: BENCHMARKS.md, session 14).
Here nothing goes through shared memory but H, written once per persistent program:

- Each thread loads exactly the x elements it owns in the wgmma's A fragment. A 16-wide k step gives lane t of a
  quad k = 8 h + 2 t + b (registers h, b); H's rows are permuted so that k reads x's coordinate 4 t + 2 h + b:
  4 consecutive bf16, one 8-byte load, and a quad reads a step's 32 bytes. Each step sums the same 16 products
  as the unpermuted rotation, in its own positions.
- The next unit's x is requested before this unit's rotation and encode, so each program keeps a tile in flight.
- Codes and scales are computed by `quantize._encode_runs` (shared with the Triton kernel) and stored from the
  layout they are computed in.

Measured on the H200 (BENCHMARKS.md, session 15): bit for bit the Triton kernel's codes and scales at every
block; 9-10% faster for 64-wide rotation blocks, where `rotate_quantize` uses it; level or slower at 16 and 32
(both kernels are bound by issuing the encode, not by shared memory or barriers) and much slower at 128, whose
x tile in registers leaves 3 programs per SM.
"""
from __future__ import annotations

import functools

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma

from ..errors import MrgptqError
from . import LAUNCH
from .gluonapi import barrier
from .quantize import _advance, _encode_runs, _first_unit


def fragment_order(width: int) -> list[int]:
    """H's row permutation: the A-fragment k (16 s + 8 h + 2 t + b) reads x's coordinate 16 s + 4 t + 2 h + b."""
    return [16 * s + 4 * t + 2 * h + b for s in range(width // 16) for h in range(2) for t in range(4)
            for b in range(2)]


@functools.cache
def x_layout(rows: int, width: int) -> gl.DistributedLinearLayout:
    """(rotation rows, width) of x in load order: a thread's 4 consecutive coordinates of each 16-wide step, at
    the rows the wgmma A fragment gives it (warp w: 16 w + g and + 8, g = lane / 4, then every 64 rows)."""
    regs = [[0, 1], [0, 2]] + [[0, 16 << i] for i in range((width // 16).bit_length() - 1)] + [[8, 0]]
    regs += [[64 << i, 0] for i in range((rows // 64).bit_length() - 1)]
    return gl.DistributedLinearLayout(reg_bases=regs, lane_bases=[[0, 4], [0, 8], [1, 0], [2, 0], [4, 0]],
                                      warp_bases=[[16, 0], [32, 0]], block_bases=[], shape=[rows, width])


@functools.cache
def h_layout(width: int):
    return gl.NVMMASharedLayout.get_default_for([width, width], gl.bfloat16)


@gluon.jit
def _load_x(x_ptr, xoff, xrow, rb, kt, M, stride_xm, BLOCK_M: gl.constexpr, BLOCK_K: gl.constexpr):
    """Unit (rb, kt)'s x tile in load order; rows past M (and units past the last) read nothing."""
    rows = rb * BLOCK_M + xrow
    return gl.load(x_ptr + (rb * BLOCK_M) * stride_xm + kt * BLOCK_K + xoff, mask=(rows < M)[:, None], other=0.0)


@gluon.jit
def _rq_kernel(x_ptr, h_ptr, words_ptr, scale_ptr, gs_ptr, M, K, stride_xm, PROGRAMS,
               W: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_K: gl.constexpr, NV: gl.constexpr, RULE: gl.constexpr,
               INV_SQRT_B: gl.constexpr, PREFETCH: gl.constexpr, XL: gl.constexpr, HSL: gl.constexpr):
    """Persistent over the (row block, K tile) units as `quantize._rotate_quantize_kernel` (position carried)."""
    R: gl.constexpr = BLOCK_M * BLOCK_K // W  # rotation rows of a tile: x row m's blocks j are rows m BK/W + j
    G: gl.constexpr = 16 if NV else 32
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, W, 16])
    AL: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    HL: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    hr = gl.arange(0, W, gl.SliceLayout(1, HL))
    hc = gl.arange(0, W, gl.SliceLayout(0, HL))
    h = gl.load(h_ptr + hr[:, None] * W + hc[None, :]).to(gl.bfloat16)
    h_smem = gl.allocate_shared_memory(gl.bfloat16, [W, W], HSL, h)
    fence_async_shared()  # written by the threads, read by the wgmma (async proxy)
    barrier()  # here, once: otherwise the barrier for H lands in the loop, a CTA barrier every unit

    r = gl.arange(0, R, gl.SliceLayout(1, XL))
    xrow = r // (BLOCK_K // W)
    xoff = (xrow * stride_xm + (r % (BLOCK_K // W)) * W)[:, None] + gl.arange(0, W, gl.SliceLayout(0, XL))[None, :]
    gs = 1.0
    rcp_gs = 1.0
    if NV:
        gs = gl.load(gs_ptr)
        rcp_gs = gl.div_rn(1.0, gs)
    k_tiles = K // BLOCK_K
    rb, kt, rb_step, kt_step = _first_unit(k_tiles, PROGRAMS)
    x = _load_x(x_ptr, xoff, xrow, rb, kt, M, stride_xm, BLOCK_M, BLOCK_K)
    rb_a, kt_a = _advance(rb, kt, rb_step, kt_step, k_tiles)  # the unit loaded last
    x_a = x
    if PREFETCH == 2:
        x_a = _load_x(x_ptr, xoff, xrow, rb_a, kt_a, M, stride_xm, BLOCK_M, BLOCK_K)
        rb_a, kt_a = _advance(rb_a, kt_a, rb_step, kt_step, k_tiles)
    for _ in range(gl.program_id(0), gl.cdiv(M, BLOCK_M) * k_tiles, PROGRAMS):
        x_next = _load_x(x_ptr, xoff, xrow, rb_a, kt_a, M, stride_xm, BLOCK_M, BLOCK_K)  # PREFETCH units ahead
        rb_a, kt_a = _advance(rb_a, kt_a, rb_step, kt_step, k_tiles)

        xa = gl.permute(gl.reshape(x, (R, W // 16, 4, 2, 2)), (0, 1, 3, 2, 4))  # (step, t, h, b) -> (step, h, t, b)
        xa = gl.convert_layout(gl.reshape(xa, (R, W)), AL, assert_trivial=True)
        y = warpgroup_mma(xa, h_smem, gl.zeros((R, W), gl.float32, MMA), use_acc=False)
        if INV_SQRT_B != 1.0:
            y = y * INV_SQRT_B
        words, stored = _encode_runs(gl.reshape(y, (BLOCK_M, BLOCK_K)), gs, rcp_gs, BLOCK_M, BLOCK_K, NV, RULE, 90)

        rows = rb * BLOCK_M + gl.arange(0, BLOCK_M, gl.SliceLayout(1, words.type.layout))
        wcols = kt * (BLOCK_K // 8) + gl.arange(0, BLOCK_K // 8, gl.SliceLayout(0, words.type.layout))
        gl.store(words_ptr + rows[:, None] * (K // 8) + wcols[None, :], words, mask=(rows < M)[:, None])
        srows = rb * BLOCK_M + gl.arange(0, BLOCK_M, gl.SliceLayout(1, stored.type.layout))
        scols = kt * (BLOCK_K // G) + gl.arange(0, BLOCK_K // G, gl.SliceLayout(0, stored.type.layout))
        gl.store(scale_ptr + srows[:, None] * (K // G) + scols[None, :], stored, mask=(srows < M)[:, None])
        rb, kt = _advance(rb, kt, rb_step, kt_step, k_tiles)
        if PREFETCH == 2:
            x = x_a
            x_a = x_next
        else:
            x = x_next


def fits(block_m: int, block_k: int, width: int, warps: int) -> bool:
    """Whether a tile runs here: its rotation rows fill whole 64-row wgmmas of one warpgroup."""
    rows = block_m * block_k // width
    return warps == 4 and rows >= 64 and rows % 64 == 0 and block_k % width == 0 and width <= 128


def launch(x2: torch.Tensor, h: torch.Tensor, factor: float, packed: torch.Tensor, scales: torch.Tensor,
           gs: torch.Tensor, nv: bool, rule_id: int, block_m: int, block_k: int, per_sm: int, sms: int,
           prefetch: int | None = None, maxnreg: int | None = None):
    """Codes and scales of Q(x2 R) into packed / scales, x2 (M, K) bf16; h (W x W, float32) is
    `quantize._hadamard_pm1(..., runs=True)`'s, whose rows are permuted here into the fragment order. A persistent
    grid of at most `per_sm` programs per SM, and no more than are resident at once (`occupancy.py`); each
    program loads x `prefetch` units (1 or 2) ahead of the one it rotates."""
    from .occupancy import persistent_programs

    if prefetch not in (None, 1, 2):
        raise MrgptqError(f"rotate_quantize: the Gluon kernel loads 1 or 2 x tiles ahead, not {prefetch}")
    w = h.shape[0]
    key = (h.data_ptr(), str(h.device))  # (h: one of quantize._hadamard_pm1's cached blocks)
    if key not in _H_ROWS:
        _H_ROWS[key] = h[fragment_order(w)].contiguous()
    M, K = x2.shape
    args = (x2, _H_ROWS[key], packed.view(torch.int32), scales.view(torch.uint8), gs, M, K, x2.stride(0))
    meta = dict(W=w, BLOCK_M=block_m, BLOCK_K=block_k, NV=nv, RULE=rule_id, INV_SQRT_B=factor, PREFETCH=prefetch or 1,
                XL=x_layout(block_m * block_k // w, w), HSL=h_layout(w), num_warps=4, **LAUNCH,
                **({"maxnreg": maxnreg} if maxnreg else {}))
    programs = persistent_programs(_rq_kernel, args, meta, x2.device, -(-M // block_m) * (K // block_k), per_sm, sms)
    _rq_kernel[(programs,)](*args, programs, **meta)


_H_ROWS: dict = {}
