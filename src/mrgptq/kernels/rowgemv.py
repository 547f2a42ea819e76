"""Decode GEMM with no K split across programs (Gluon, Hopper): 16 weight rows a program, K split over its warps.

`ws_gemv` works on 64-row bricks (wgmma's M), so N = 4096 has only 64 tiles and K must split across programs to
cover the SMs; the partial sums then meet through global memory (a store, a release fence, an atomic, a re-read),
which costs each small Llama-3-8B linear 1.4-1.8 us on the H100 (BENCHMARKS.md, session 16). Here a program owns
16 rows, the M of `mma.sync` m16n8k16, whose A fragment is per warp the register layout of wgmma's: the
`tc_pack` bricks feed it unchanged, and a warp's 16 rows of a brick are 1 KB contiguous. N / 16 programs cover
the SMs (256 for N = 4096); each of a program's KW warps takes a contiguous quarter (KW = 4) of K, and the KW
partial sums meet in shared memory inside the program: no workspace, no atomics, deterministic.

Every warp streams its range through a ring of S stages with cp.async (16-byte copies of its words and of x's
rows for its k, 4-byte ones of its rows' scale words); the decode is `tcgemv`'s PTX (`wsgemv.decode_words`).
"""
from __future__ import annotations

import functools

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy, mma_v2

from ..errors import MrgptqError
from .tcgemv import CHUNK, TcWeight
from .wsgemv import _stack4, decode_words

WARPS = 4  # warps a program: each takes K / WARPS
# QuantLinear's choice (`fits`): weights up to this size at any M <= 16, larger ones up to MAX_N x MAX_K at M <= 8
SMALL_WEIGHTS, MAX_N, MAX_K = 1 << 25, 16384, 8192


@gluon.jit
def _issue(w_ptr, s_ptr, x_ptr, w_s, s_s, x_s, st, step, per, w_off, s_off, x_off, x_mask, SW: gl.constexpr):
    """Step `step` of every warp's range into stage st, one cp.async group (nothing past the range is read)."""
    live = step < per
    async_copy.async_copy_global_to_shared(w_s.index(st), w_ptr + step * 1024 + w_off, mask=(w_off >= 0) & live)
    for i in gl.static_range(SW):
        async_copy.async_copy_global_to_shared(s_s.index(st * SW + i), s_ptr + step * (64 * SW) + i + s_off,
                                               mask=(s_off >= 0) & live)
    async_copy.async_copy_global_to_shared(x_s.index(st), x_ptr + step * 128 + x_off, mask=x_mask & live)
    async_copy.commit_group()


@gluon.jit
def _row_gemv_kernel(x_ptr, w_ptr, s_ptr, y_ptr, alpha, ra_ptr, M, N, K, stride_xm, stride_ym,
                     S: gl.constexpr, MP: gl.constexpr, KW: gl.constexpr, NV: gl.constexpr,
                     ROW_ALPHA: gl.constexpr, WL: gl.constexpr):
    """Program p: rows 16 p .. 16 p + 15 (brick row block p // 4, its rows 16 (p % 4) + i); warp w: k chunks
    [w per, (w + 1) per) of them, per = K / (128 KW)."""
    pid = gl.program_id(0)
    nb = pid // 4  # brick row block
    j = pid % 4  # this program's 16 rows of it
    C = K // 128
    per = C // KW  # k chunks a warp
    SW: gl.constexpr = 2 if NV else 1
    SL: gl.constexpr = gl.SliceLayout(3, WL)  # (warp, row, t)
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[KW, 1, 1], instr_shape=[1, 16, 8])
    AL: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    BL: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=MMA, k_width=2)

    # word (warp w, row i, t, v) of chunk w * per + step: brick (nb, chunk), row 16 j + i, word 4 t + v
    ww = gl.arange(0, KW, gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, WL))))
    wi = gl.arange(0, 16, gl.SliceLayout(0, gl.SliceLayout(2, gl.SliceLayout(3, WL))))
    wt = gl.arange(0, 4, gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(3, WL))))
    wv = gl.arange(0, 4, gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, WL))))
    row = (nb * C + ww[:, None, None] * per) * 64 + 16 * j + wi[None, :, None]  # (KW, 16, 1) in SL
    w_off = row[:, :, :, None] * 16 + (4 * wt)[None, None, :, None] + wv[None, None, None, :]
    s_off = (row + wt[None, None, :] * 0) * SW  # every t copies its row's scale word(s) for itself
    # x (warp w, token n, k) of chunk w * per + step, 16 bytes a copy; rows n >= M are zero-filled
    XC: gl.constexpr = gl.BlockedLayout([1, 1, 8], [1, 2, 16], [KW, 1, 1], [2, 1, 0])
    xw = gl.arange(0, KW, gl.SliceLayout(1, gl.SliceLayout(2, XC)))
    xn = gl.arange(0, MP, gl.SliceLayout(0, gl.SliceLayout(2, XC)))
    xk = gl.arange(0, 128, gl.SliceLayout(0, gl.SliceLayout(1, XC)))
    x_off = (xw * per * 128)[:, None, None] + (xn * stride_xm)[None, :, None] + xk[None, None, :]
    x_mask = (xn < M)[None, :, None] & (xk < 128)[None, None, :] & (xw < KW)[:, None, None]  # (full shape)

    w_s = gl.allocate_shared_memory(gl.int32, [S, KW, 16, 4, 4], gl.SwizzledSharedLayout(1, 1, 1, [3, 2, 1, 0]))
    s_s = gl.allocate_shared_memory(gl.int32, [S * SW, KW, 16, 4], gl.SwizzledSharedLayout(1, 1, 1, [2, 1, 0]))
    x_s = gl.allocate_shared_memory(gl.bfloat16, [S, KW, MP, 128], gl.SwizzledSharedLayout(8, 1, 8, [2, 1, 0]))
    for pre in gl.static_range(S - 1):
        _issue(w_ptr, s_ptr, x_ptr, w_s, s_s, x_s, pre, pre, per, w_off, s_off, x_off, x_mask, SW)
    v = wv[None, None, None, :]
    acc = gl.zeros((KW, 16, MP), gl.float32, MMA)
    # (Gluon's barrier pass adds a CTA barrier after each wait and before each refill: the warps step together)
    for step in range(per):
        _issue(w_ptr, s_ptr, x_ptr, w_s, s_s, x_s, (step + S - 1) % S, step + S - 1, per, w_off, s_off, x_off,
               x_mask, SW)
        async_copy.wait_group(S - 1)
        cur = step % S
        w = w_s.index(cur).load(WL)
        s0 = s_s.index(SW * cur).load(SL)[:, :, :, None]
        s1 = s_s.index(SW * cur + 1).load(SL)[:, :, :, None] if NV else s0
        o0, o1, o2, o3, o4, o5, o6, o7 = decode_words(w, s0, s1, v, NV)
        a = gl.join(_stack4(o0, o2, o4, o6), _stack4(o1, o3, o5, o7))  # (KW, 16, t, v, m, b)
        a = gl.reshape(a, (KW, 16, 4, 4, 4, 2))
        a = gl.permute(a, (0, 1, 3, 4, 2, 5))  # k = 32 v + 8 m + 2 t + b
        a = gl.convert_layout(gl.reshape(a, (KW, 16, 128)), AL, assert_trivial=True)
        xb = x_s.index(cur).permute((0, 2, 1)).load(BL)
        acc = mma_v2(a, xb, acc)
    async_copy.wait_group(0)
    tot = gl.sum(acc, axis=0)  # (16, MP): the warps' K ranges
    OL: gl.constexpr = gl.SliceLayout(0, MMA)
    ri = gl.arange(0, 16, gl.SliceLayout(1, OL))
    rm = gl.arange(0, MP, gl.SliceLayout(0, OL))
    rn = nb * 64 + 16 * j + ri
    if ROW_ALPHA:
        alpha = alpha * gl.load(ra_ptr + rn, mask=rn < N, other=0.0)[:, None]
    gl.store(y_ptr + rm[None, :] * stride_ym + rn[:, None], (tot * alpha).to(gl.bfloat16),
             mask=(rm < M)[None, :] & (rn < N)[:, None])


@functools.cache
def _words_layout(kw: int):
    """(warp, row, t, v): words as the mma A fragment owns them (lane 4 r + t: rows r, r + 8, words 4 t..4 t + 3)."""
    return gl.BlockedLayout([1, 1, 1, 4], [1, 8, 4, 1], [kw, 1, 1, 1], [3, 2, 1, 0])


def fits(tw: TcWeight, rows: int) -> bool:
    """Whether QuantLinear sends this product here rather than to `ws_gemv` (K a multiple of 128 WARPS): the
    small weights, where `ws_gemv`'s cross-program K split costs the most, at up to 16 rows of x, and weights up
    to MAX_N x MAX_K at up to 8 rows. On the H200 (BENCHMARKS.md, session 17) it took 9-17% less time than
    `ws_gemv` at the Llama-3-8B qkv and o with one row (0-17% with 16), 16-22% at the 70B qkv with one row, was
    within 4% at 70B o with 1-8 rows, and took longer at 70B o with 16 rows and at NVFP4 8B gate_up and down."""
    N, K = tw.shape
    if rows > 16 or K % (CHUNK * WARPS):
        return False
    return N * K <= SMALL_WEIGHTS or (rows <= 8 and N <= MAX_N and K <= MAX_K)


def _stages(K: int, warps: int) -> int:
    """Ring depth: 2 up to 16 k chunks a warp (ramp-up dominates), else 4 (H200 sweep: 8B down 4 x 4 15.5 us
    against 17.2 us at 2 x 4; 2 stages were the fastest or within 3% at every K <= 8192 linear)."""
    return 2 if K // (CHUNK * warps) <= 16 else 4


def row_gemv(x: torch.Tensor, tw: TcWeight, alpha: float = 1.0, out: torch.Tensor | None = None,
             stages: int | None = None, warps: int = WARPS) -> torch.Tensor:
    """y (M, N) = alpha * x W^T (times W's row_alpha) in bf16, x (M <= 16, K) bf16, W a `TcWeight`."""
    M, K = x.shape
    N, Kw = tw.shape
    if Kw != K or M > 16 or K % (CHUNK * warps):
        raise MrgptqError(f"row_gemv: needs a weight with x's K (x {K}, W {Kw}), K a multiple of {CHUNK * warps} "
                          f"and at most 16 rows of x (got {M})")
    x = x.to(torch.bfloat16).contiguous()
    y = out if out is not None else torch.empty((M, N), dtype=torch.bfloat16, device=x.device)
    ra = tw.row_alpha
    _row_gemv_kernel[(triton.cdiv(N, 64) * 4,)](
        x, tw.words, tw.scales.view(torch.int32), y, alpha * 2.0 ** tw.shift, y if ra is None else ra, M, N, K,
        x.stride(0), y.stride(0), S=stages or _stages(K, warps), MP=8 if M <= 8 else 16, KW=warps,
        NV=tw.spec.scale_dtype == "e4m3", ROW_ALPHA=ra is not None, WL=_words_layout(warps), num_warps=warps)
    return y

