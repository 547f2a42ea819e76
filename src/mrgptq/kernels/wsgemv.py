"""Decode GEMM with a warp-specialized producer (Gluon, Hopper): `tc_gemv`'s math with more of W in flight.

`tc_gemv` keeps about one 4 KB brick in flight per program: ptxas issues a step's loads just before their use
and the registers that could hold more are the decode's. Here one producer warp (32 registers) copies bricks,
their scale words and x tiles with cp.async into a ring of S shared-memory stages, each stage's `ready`
mbarrier completing when its copies land; the consumer warpgroup waits, loads its words from shared memory
straight into the wgmma A-fragment layout (`WORDS`: the `tc_pack` word a thread reads is the word it owns),
decodes them with `tcgemv`'s PTX, runs the wgmma (N = 8 tokens at decode) and frees the stage.

Work is split as units (64-row tile, 128 KB-wide k step) in tile-major order, which is also the bricks'
storage order, so each program streams one contiguous range [u0, u1). Programs sum the tiles they only partly
cover into a slot of their own; a tile's last contributor adds the slots in program order (deterministic) and
stores y. With P = tiles x split the ranges are exactly `tc_gemv`'s K splits and the result is bit-identical
to it; other P give stream-K. Scales: an MXFP4 brick row's four group scales are one scale word, an NVFP4
row's eight are two, copied word-major (`tcgemv.scale_word` turns them into bf16 scale registers).
"""
from __future__ import annotations

import functools

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    async_copy,
    fence_async_shared,
    mbarrier,
    warpgroup_mma,
)

from ..errors import MrgptqError
from . import LAUNCH
from .fp4 import INTERPRET, ptx_arch
from .gluonapi import async_load, barrier
from .tcgemv import _DECODE_PTX, CHUNK, TcWeight, _workspace, scale_word
from .tcgemv import _pick as _tc_pick

# (64 rows, 16 words) of a brick as the wgmma A fragment wants them: thread (warp w, lane 4 r + t) holds
# rows 16 w + r + 8 i and words 4 t + v (v, i in registers).
WORDS = gl.DistributedLinearLayout(reg_bases=[[0, 1], [0, 2], [8, 0]],
                                   lane_bases=[[0, 4], [0, 8], [1, 0], [2, 0], [4, 0]],
                                   warp_bases=[[16, 0], [32, 0]], block_bases=[], shape=[64, 16])


@gluon.jit
def _stack4(a, b, c, d):
    """(..., 2, 2) with index 2i + j -> a, b, c, d."""
    return gl.join(gl.join(a, c), gl.join(b, d))


@gluon.jit
def _copy_weights(w_ptr, s_ptr, w_bufs, s_bufs, u, st, w_off, s_off, KB: gl.constexpr, SW: gl.constexpr):
    for j in gl.static_range(KB):
        b = u * KB + j
        async_load(w_bufs.index(st * KB + j), w_ptr + b * 1024 + w_off)
        for w in gl.static_range(SW):  # row r's word w (stored (row, word)) lands at [(stage, w), r]
            async_load(s_bufs.index((st * KB + j) * SW + w), s_ptr + b * (64 * SW) + w + s_off)


@gluon.jit
def _producer(x_ptr, w_ptr, s_ptr, w_bufs, s_bufs, x_bufs, ready, empty, M, stride_xm, u0, u1, steps,
              MP: gl.constexpr, KB: gl.constexpr, SW: gl.constexpr):
    """One warp: unit u's KB bricks (bricks are stored in unit order), scale words and x tiles into stage u % S."""
    S: gl.constexpr = ready.type.shape[0]
    WCL: gl.constexpr = gl.BlockedLayout([1, 4], [8, 4], [1, 1], [1, 0])
    SCL: gl.constexpr = gl.BlockedLayout([2], [32], [1], [0])
    XCL: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [1, 1], [1, 0])
    w_off = gl.arange(0, 64, gl.SliceLayout(1, WCL))[:, None] * 16 + gl.arange(0, 16, gl.SliceLayout(0, WCL))[None, :]
    s_off = gl.arange(0, 64, SCL) * SW
    xr = gl.arange(0, MP, gl.SliceLayout(1, XCL))
    xc = gl.arange(0, 128, gl.SliceLayout(0, XCL))
    x_off = xr[:, None] * stride_xm + xc[None, :]
    x_mask = (xr < M)[:, None] & (xc < 128)[None, :]  # rows past M: zeros
    for u in range(u0, u1):
        i = u - u0
        st = i % S
        mbarrier.wait(empty.index(st), ((i // S) & 1) ^ 1)
        _copy_weights(w_ptr, s_ptr, w_bufs, s_bufs, u, st, w_off, s_off, KB, SW)
        t = u % steps
        for j in gl.static_range(KB):
            async_load(x_bufs.index(st * KB + j), x_ptr + (t * KB + j) * 128 + x_off, mask=x_mask)
        async_copy.mbarrier_arrive(ready.index(st), increment_count=False)


@gluon.jit
def decode_words(w, s0, s1, v, NV: gl.constexpr):
    """The 8 bf16 values (m, b) of each word w in the wgmma / mma A-fragment layout, scaled, in 2^-126 units
    (see tcgemv), any shape: s0 (and s1), broadcast to w, are its row's scale word(s) and v its word's index
    mod 4 (word 4t + v); `tcgemv.scale_word` makes its scale register."""
    return gl.inline_asm_elementwise(_DECODE_PTX, "=h,=h,=h,=h,=h,=h,=h,=h,r,r", [w, scale_word(s0, s1, v, NV)],
                                     dtype=(gl.bfloat16,) * 8, is_pure=True, pack=1)


@gluon.jit
def _decode_step(w_bufs, s_bufs, st, v, AL: gl.constexpr, WL: gl.constexpr, NV: gl.constexpr):
    """Stage st's brick as the bf16 wgmma A operand (64 x 128): `decode_words` on its words and scale words."""
    w = w_bufs.index(st).load(WL)
    if NV:
        s0 = s_bufs.index(2 * st).load(gl.SliceLayout(1, WL))[:, None]
        s1 = s_bufs.index(2 * st + 1).load(gl.SliceLayout(1, WL))[:, None]
    else:
        s0 = s_bufs.index(st).load(gl.SliceLayout(1, WL))[:, None]
        s1 = s0
    o0, o1, o2, o3, o4, o5, o6, o7 = decode_words(w, s0, s1, v[None, :], NV)
    a = gl.join(_stack4(o0, o2, o4, o6), _stack4(o1, o3, o5, o7))  # (64 rows, 16 words u, m, b)
    a = gl.reshape(a, (64, 4, 2, 2, 2, 2, 2))  # u = 4 t + 2 a + c, m = 2 g + h
    a = gl.permute(a, (0, 2, 4, 3, 5, 1, 6))  # k = 64 a + 32 g + 16 c + 8 h + 2 t + b
    return gl.convert_layout(gl.reshape(a, (64, 128)), AL, assert_trivial=True)


@gluon.jit
def _flush(acc, n, a_beg, a_end, y_ptr, ws_ptr, cnt_ptr, alpha, ra_ptr, M, N, stride_ym, u0, U, P, p, steps,
           MP: gl.constexpr, MMA: gl.constexpr, ROW_ALPHA: gl.constexpr, BN: gl.constexpr = 64):
    """Tile n's (BN weight rows) partial sum over units [a_beg, a_end): stored as y when it is the whole tile,
    else into this program's slot (0: its first segment, 1: its last); the tile's last contributor sums the
    slots in program order (a fixed order: deterministic) and resets the tile's counter."""
    rd = gl.arange(0, BN, gl.SliceLayout(1, MMA))
    rm = gl.arange(0, MP, gl.SliceLayout(0, MMA))
    rn = n * BN + rd
    yp = y_ptr + rm[None, :] * stride_ym + rn[:, None]
    ym = (rm < M)[None, :] & (rn < N)[:, None]
    if ROW_ALPHA:  # a factor per output row (TcWeight.row_alpha)
        alpha = alpha * gl.load(ra_ptr + rn, mask=rn < N, other=0.0)[:, None]
    if (a_beg == n * steps) & (a_end == (n + 1) * steps):
        gl.store(yp, (acc * alpha).to(gl.bfloat16), mask=ym)
    else:
        part = ws_ptr + rd[:, None] * MP + rm[None, :]
        slot = 2 * p + (a_beg != u0).to(gl.int32)
        gl.store(part + slot * (BN * MP), acc)
        barrier()
        pf = ((n * steps + 1) * P - 1) // U  # the programs whose unit ranges meet tile n
        pl = ((n + 1) * steps * P - 1) // U
        done = gl.atomic_add(cnt_ptr + n, 1, sem="acq_rel", scope="gpu")
        if done == pl - pf:
            tot = gl.zeros((BN, MP), gl.float32, MMA)
            for q in range(pf, pl + 1):
                qslot = 2 * q + ((q * U) // P < n * steps).to(gl.int32)
                tot += gl.load(part + qslot * (BN * MP), cache_modifier=".cg")
            gl.store(yp, (tot * alpha).to(gl.bfloat16), mask=ym)
            gl.atomic_xchg(cnt_ptr + n, 0, sem="relaxed", scope="gpu")


@gluon.jit
def _consumer(w_bufs, s_bufs, x_bufs, ready, empty, y_ptr, ws_ptr, cnt_ptr, alpha, ra_ptr, M, N, stride_ym,
              u0, u1, U, P, p, steps, MP: gl.constexpr, WL: gl.constexpr, KB: gl.constexpr, NV: gl.constexpr,
              ROW_ALPHA: gl.constexpr):
    """One warpgroup: per unit, decode the stage's bricks and wgmma them with x; flush at each tile's end."""
    S: gl.constexpr = ready.type.shape[0]
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, MP, 16])
    AL: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    v = gl.arange(0, 16, gl.SliceLayout(0, WL)) % 4  # word 4t + v
    for n in range(u0 // steps, gl.cdiv(u1, steps)):  # the tiles that units [u0, u1) meet (none if empty)
        a_beg = gl.maximum(u0, n * steps)
        a_end = gl.minimum(u1, (n + 1) * steps)
        acc = gl.zeros((64, MP), gl.float32, MMA)
        for u in range(a_beg, a_end):
            i = u - u0
            st = i % S
            mbarrier.wait(ready.index(st), (i // S) & 1)
            fence_async_shared()  # x was written by cp.async; wgmma reads it through the async proxy
            for j in gl.static_range(KB):
                a = _decode_step(w_bufs, s_bufs, st * KB + j, v, AL, WL, NV)
                acc = warpgroup_mma(a, x_bufs.index(st * KB + j).permute((1, 0)), acc)
            mbarrier.arrive(empty.index(st), count=1)
        _flush(acc, n, a_beg, a_end, y_ptr, ws_ptr, cnt_ptr, alpha, ra_ptr, M, N, stride_ym, u0, U, P, p, steps, MP,
               MMA, ROW_ALPHA)


@gluon.jit
def _ws_gemv_kernel(x_ptr, w_ptr, s_ptr, y_ptr, ws_ptr, cnt_ptr, alpha, ra_ptr, M, N, K, stride_xm, stride_ym,
                    S: gl.constexpr, MP: gl.constexpr, PREGS: gl.constexpr, XSL: gl.constexpr, WL: gl.constexpr,
                    KB: gl.constexpr, NV: gl.constexpr, ROW_ALPHA: gl.constexpr):
    """Program p takes units [p U / P, (p + 1) U / P) of the U = tiles x steps (module docstring)."""
    p = gl.program_id(0)
    P = gl.num_programs(0)
    steps = K // (128 * KB)
    U = gl.cdiv(N, 64) * steps
    u0 = p * U // P
    u1 = (p + 1) * U // P
    w_bufs = gl.allocate_shared_memory(gl.int32, [S * KB, 64, 16], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
    SW: gl.constexpr = 2 if NV else 1  # scale words per brick row
    s_bufs = gl.allocate_shared_memory(gl.int32, [S * KB * SW, 64], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    x_bufs = gl.allocate_shared_memory(gl.bfloat16, [S * KB, MP, 128], XSL)
    ready = gl.allocate_shared_memory(gl.int64, [S, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [S, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(S):
        mbarrier.init(ready.index(i), count=32)  # one cp.async arrival per producer thread
        mbarrier.init(empty.index(i), count=1)
    gl.warp_specialize([
        (_consumer, (w_bufs, s_bufs, x_bufs, ready, empty, y_ptr, ws_ptr, cnt_ptr, alpha, ra_ptr, M, N, stride_ym,
                     u0, u1, U, P, p, steps, MP, WL, KB, NV, ROW_ALPHA)),
        (_producer, (x_ptr, w_ptr, s_ptr, w_bufs, s_bufs, x_bufs, ready, empty, M, stride_xm, u0, u1, steps, MP,
                     KB, SW)),
    ], [1], [PREGS])


@functools.cache
def x_layout(mp: int):
    return gl.NVMMASharedLayout.get_default_for([mp, 128], gl.bfloat16)


def gluon_ok(device: torch.device) -> bool:
    """Whether this kernel runs here: a Hopper GPU (wgmma, setmaxnreg; `fp4.ptx_arch` 90) and not Triton's CPU
    interpreter."""
    return not INTERPRET and device.type == "cuda" and ptx_arch(device) == 90


def _pick(M: int, N: int, K: int, sms: int) -> tuple[int, int, int]:
    """(split, bricks per stage, stages): `tc_gemv`'s K split (its heuristic, so the results stay bit-identical);
    two bricks per stage (fewer barriers a brick) only where a program has at least 64 bricks. On the H100, one
    brick in each of 4 stages was 2-8% faster at every Llama-3-8B linear, two at 70B gate_up (64 bricks a program;
    BENCHMARKS.md, session 16)."""
    split = _tc_pick(M, N, K, sms)[3]
    k128 = K // CHUNK
    per = k128 // split
    return (split, 2, 3) if k128 % split == 0 and per >= 64 and per % 2 == 0 else (split, 1, 4)


def ws_gemv(x: torch.Tensor, tw: TcWeight, alpha: float = 1.0, out: torch.Tensor | None = None,
            split: int | None = None, bricks: int | None = None, stages: int | None = None,
            programs: int | None = None, maxnreg: int | None = None, mp: int | None = None) -> torch.Tensor:
    """y (M, N) = alpha * x W^T (times W's row_alpha) in bf16, x (M <= 32, K) bf16, W a `TcWeight`.

    Defaults (`_pick`): K split as `tc_gemv` would (P = tiles x split programs, bit-identical results). `programs`
    overrides P (stream-K); `maxnreg` caps registers (64: 4 programs per SM; 80 for the 32-token tile, whose
    accumulator and x copies spill under 64); `mp` is the token tile (8, 16 or 32)."""
    from .gemm import _sm_count

    M, K = x.shape
    N, Kw = tw.shape
    if Kw != K or M > 32 or K % CHUNK:
        raise MrgptqError(f"ws_gemv: needs a weight with x's K (x {K}, W {Kw}) and M <= 32 rows (got {M})")
    tiles, k128 = triton.cdiv(N, 64), K // CHUNK
    split0, kb0, st0 = _pick(M, N, K, _sm_count(x.device))
    split, bricks = split or split0, bricks or (kb0 if split is None else 1)
    stages = stages or (st0 if bricks == kb0 else 4)
    if k128 % bricks:
        raise MrgptqError(f"ws_gemv: K={K} is not a multiple of {bricks} x 128")
    mp = mp or (8 if M <= 8 else 16 if M <= 16 else 32)
    maxnreg = maxnreg or (64 if mp <= 16 else 80)
    if M > mp:
        raise MrgptqError(f"ws_gemv: M={M} rows do not fit a token tile of {mp}")
    P = min(programs or tiles * split, tiles * (k128 // bricks))  # more programs than units would idle
    ws, cnt = _workspace(x.device)
    if 2 * P * 64 * mp > ws.numel() or tiles > cnt.numel():
        raise MrgptqError(f"ws_gemv: workspace too small for {P} programs / {tiles} tiles")
    x = x.to(torch.bfloat16).contiguous()
    y = out if out is not None else torch.empty((M, N), dtype=torch.bfloat16, device=x.device)
    ra = tw.row_alpha
    # the producer's registers, one or two bricks a stage: more for the 32-token tile's x copies (no spills)
    pregs = (32, 40) if mp <= 16 else (48, 64)
    _ws_gemv_kernel[(P,)](x, tw.words, tw.scales, y, ws, cnt, alpha * 2.0 ** tw.shift,
                          y if ra is None else ra, M, N, K, x.stride(0), y.stride(0), S=stages, MP=mp,
                          PREGS=pregs[bricks > 1], XSL=x_layout(mp), WL=WORDS, KB=bricks,
                          NV=tw.spec.scale_dtype == "e4m3", ROW_ALPHA=ra is not None, num_warps=4, maxnreg=maxnreg,
                          **LAUNCH)
    return y
