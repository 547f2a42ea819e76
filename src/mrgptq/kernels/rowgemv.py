"""Decode GEMM with no K split across programs (Gluon, Hopper): 16 weight rows a program, K split over its warps.

`ws_gemv` works on 64-row bricks (wgmma's M), so N = 4096 has only 64 tiles and K must split across programs to
cover the SMs; the partial sums then meet through global memory (a store, a release fence, an atomic, a re-read),
which costs each small Llama-3-8B linear 1.4-1.8 us on the H100 (BENCHMARKS.md, session 16). Here a program owns
16 rows, the M of `mma.sync` m16n8k16, whose A fragment is per warp the register layout of wgmma's: the
`tc_pack` bricks feed it unchanged, and a warp's 16 rows of a brick are 1 KB contiguous. N / 16 programs cover
the SMs (256 for N = 4096); each of a program's KW warps takes a contiguous quarter (KW = 4) of K, and the KW
partial sums meet in shared memory inside the program: no workspace, no atomics, deterministic.

Every warp streams its range through a ring of S stages of CPS k chunks with cp.async: 16-byte copies of its
words and of x's 8-wide k groups, one copy of its rows' scale word(s) (4 or 8 bytes). The loop's copies carry no
predicates (the stage it refills is checked once; past the range it commits an empty group), and two chunks a
stage halve the copies' address work, the wait and the barrier per chunk (`_ring`). The decode is `tcgemv`'s PTX
(`wsgemv.decode_words`). Only x's M real tokens are copied (M rounded up to a power of 2), into a layout with
no bank conflicts (`_x_view`): copying all 8 tokens of the MMA tile at M = 1, as session 17 did, cost 8B gate_up
24.5 against 23.2 us and down 15.4 against 14.3 (MXFP4, H200, session 18). A stage's x buffer holds only those
tokens (1 KB at one row, was 8 KB): a program of 2 stages takes 19 KB of shared memory instead of 26, one of 4
stages 31 KB instead of 52 (MXFP4). At the default depths that changed no time (session 19). Triton 3.9 refuses
a view larger than its buffer, so there a stage holds the tile's MP tokens (`gluonapi.OUTGROWING_VIEWS`; 4 stages
53 KB at one row): no slower on the H200 than 3.6's build (session 23). As no warp reads another's bytes, the
loop's barriers are warp barriers (`warpbarrier.py`): 1-9% faster than the CTA barriers Gluon puts there, bit for
bit the same (H200, session 20).
"""
from __future__ import annotations

import functools

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy, mma_v2

from ..errors import MrgptqError
from . import LAUNCH
from .gemm import _sm_count
from .gluonapi import OUTGROWING_VIEWS, async_load, reinterpret
from .tcgemv import CHUNK, TcWeight
from .warpbarrier import install as _warp_barriers
from .warpbarrier import mark
from .wsgemv import _stack4, decode_words

WARPS = 4  # warps a program: each takes K / WARPS
# QuantLinear's choice (`fits`): any weight at M <= 4, up to MID_WEIGHTS values at M <= 8, up to MAX_N x MAX_K
# at M <= 16
MID_WEIGHTS, MAX_N, MAX_K = 1 << 28, 12288, 16384


@gluon.jit
def _issue(w_ptr, s_ptr, x_ptr, w_s, s_s, x_s, st, step, nst, w_off, s_off, x_off, x_mask, SW: gl.constexpr,
           KW: gl.constexpr, MC: gl.constexpr, XW: gl.constexpr, CPS: gl.constexpr, PRED: gl.constexpr,
           XM: gl.constexpr):
    """Stage `step` (CPS k chunks) of every warp's range into ring slot st, one cp.async group. PRED: each copy
    predicated on step < nst (the prologue, where a short range may end first); else the caller has checked it,
    so the loop's copies carry no predicates, and x's none either where all of the MC copied tokens are real
    (XM False)."""
    wm = None
    sm = None
    xm = x_mask if XM else None
    if PRED:
        live = step < nst
        wm = (w_off >= 0) & live
        sm = (s_off >= 0) & live
        xm = x_mask & live
    for c in gl.static_range(CPS):
        ch = step * CPS + c
        b = st * CPS + c
        async_load(w_s.index(b), w_ptr + ch * 1024 + w_off, mask=wm)
        async_load(s_s.index(b), s_ptr + ch * (64 * SW) + s_off, mask=sm)
        async_load(reinterpret(x_s.index(b), gl.bfloat16, [KW, 16, MC, 8], XW), x_ptr + ch * 128 + x_off, mask=xm)
    async_copy.commit_group()


@gluon.jit
def _row_gemv_kernel(x_ptr, w_ptr, s_ptr, y_ptr, alpha, ra_ptr, M, N, K, stride_xm, stride_ym,
                     S: gl.constexpr, MP: gl.constexpr, KW: gl.constexpr, NV: gl.constexpr,
                     ROW_ALPHA: gl.constexpr, WL: gl.constexpr, MC: gl.constexpr, XV: gl.constexpr,
                     XW: gl.constexpr, XS: gl.constexpr, WB: gl.constexpr, CPS: gl.constexpr,
                     XM: gl.constexpr):
    """Program p: rows 16 p .. 16 p + 15 (brick row block p // 4, its rows 16 (p % 4) + i); warp w: k chunks
    [w per, (w + 1) per) of them, per = K / (128 KW), CPS chunks a ring stage."""
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
    # scale word u of (warp w, row i) of the same chunk, one copy of the SW words for each t (its own)
    SC: gl.constexpr = gl.BlockedLayout([1, 1, 1, SW], [1, 8, 4, 1], [KW, 1, 1, 1], [3, 2, 1, 0])
    sw = gl.arange(0, KW, gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, SC))))
    si = gl.arange(0, 16, gl.SliceLayout(0, gl.SliceLayout(2, gl.SliceLayout(3, SC))))
    st4 = gl.arange(0, 4, gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(3, SC))))
    su = gl.arange(0, SW, gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, SC))))
    s_row = (nb * C + sw[:, None, None] * per) * 64 + 16 * j + si[None, :, None] + st4[None, None, :] * 0
    s_off = s_row[:, :, :, None] * SW + su[None, None, None, :]
    # x (warp w, k group g, token n, 8 k) of chunk w * per + step, 16 bytes a copy, only the first MC tokens (M
    # rounded up to a power of 2; rows n >= M zero-filled), laid out as `_x_view` says. A stage holds just those
    # MC tokens; the MMA tile's tokens past MC read the next stages' (or the padding's) bytes: their output
    # columns depend on nothing else and are not stored.
    XC: gl.constexpr = gl.BlockedLayout([1, 1, 1, 8], [1, 16, 2, 1], [KW, 1, 1, 1], [3, 1, 2, 0])  # lane: g + 16 n
    xw = gl.arange(0, KW, gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, XC))))
    xg = gl.arange(0, 16, gl.SliceLayout(0, gl.SliceLayout(2, gl.SliceLayout(3, XC))))
    xn = gl.arange(0, MC, gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(3, XC))))
    xe = gl.arange(0, 8, gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, XC))))
    x_off = ((xw * per * 128)[:, None, None, None] + (xg * 8)[None, :, None, None]
             + (xn * stride_xm)[None, None, :, None] + xe[None, None, None, :])
    x_mask = (xn < M)[None, None, :, None] & (x_off >= 0)  # (full shape)

    w_s = gl.allocate_shared_memory(gl.int32, [S * CPS, KW, 16, 4, 4], gl.SwizzledSharedLayout(1, 1, 1, [3, 2, 1, 0]))
    s_s = gl.allocate_shared_memory(gl.int32, [S * CPS, KW, 16, 4, SW], gl.SwizzledSharedLayout(1, 1, 1, [3, 2, 1, 0]))
    # S stages of XS tokens (MC, or MP where views may not outgrow their source), and room for the last
    # stage's reads of the MMA tile's tokens past XS
    x_s = gl.allocate_shared_memory(gl.bfloat16, [S * CPS + MP // XS - 1, KW, 16, XS, 8],
                                    gl.SwizzledSharedLayout(1, 1, 1, [3, 2, 1, 0]))
    nst = per // CPS
    for pre in gl.static_range(S - 1):
        _issue(w_ptr, s_ptr, x_ptr, w_s, s_s, x_s, pre, pre, nst, w_off, s_off, x_off, x_mask, SW, KW, MC, XW, CPS,
               True, XM)
    v = wv[None, None, None, :]
    acc = gl.zeros((KW, 16, MP), gl.float32, MMA)
    # Gluon's barrier pass adds a CTA barrier after each wait and before each refill; each warp copies and reads
    # only its own slice of a stage (dimension 0 of every buffer and layout), so with WB they are warp barriers
    for step in range(nst):
        nxt = step + S - 1
        if nxt < nst:
            _issue(w_ptr, s_ptr, x_ptr, w_s, s_s, x_s, nxt % S, nxt, nst, w_off, s_off, x_off, x_mask, SW, KW, MC,
                   XW, CPS, False, XM)
        else:  # an empty group, so that the wait below still leaves the S - 1 newest in flight
            async_copy.commit_group()
        async_copy.wait_group(S - 1)
        if WB:
            mark(step)
        for c in gl.static_range(CPS):
            cur = (step % S) * CPS + c
            w = w_s.index(cur).load(WL)
            sv = s_s.index(cur).load(SC)
            if NV:
                s0, s1 = gl.split(sv)
                s0 = gl.convert_layout(s0, SL)[:, :, :, None]
                s1 = gl.convert_layout(s1, SL)[:, :, :, None]
            else:
                s0 = gl.convert_layout(gl.reshape(sv, [KW, 16, 4]), SL)[:, :, :, None]
                s1 = s0
            o0, o1, o2, o3, o4, o5, o6, o7 = decode_words(w, s0, s1, v, NV)
            a = gl.join(_stack4(o0, o2, o4, o6), _stack4(o1, o3, o5, o7))  # (KW, 16, t, v, m, b)
            a = gl.reshape(a, (KW, 16, 4, 2, 2, 2, 2, 2))  # v = 2 a + c, m = 2 g + h
            a = gl.permute(a, (0, 1, 3, 5, 4, 6, 2, 7))  # k = 64 a + 32 g + 16 c + 8 h + 2 t + b
            a = gl.convert_layout(gl.reshape(a, (KW, 16, 128)), AL, assert_trivial=True)
            xb = reinterpret(x_s.index(cur), gl.bfloat16, [KW, 128, MP], XV).load(BL)
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


def _bits(n: int) -> list[int]:
    """The powers of 2 below n (a power of 2): one layout basis each."""
    return [1 << i for i in range(n.bit_length() - 1)]


@functools.cache
def _x_view(kw: int, mp: int):
    """x's stage buffer as the (warp, k, token) B operand. A 128-byte line holds one token's 8-wide k groups
    g = 8 h .. 8 h + 7, group g in the line's 16-byte slot (g mod 8) xor (token mod 8): ldmatrix's 8 tokens of a
    group and the copies' 8 groups of a token both fall in 8 distinct slots (no bank conflicts). Offset bits,
    low to high: k's low 3, the slot (k's next 3), h, the warp, the token (each bit also flips the slot). The
    token bits are the top ones, so a stage of mc tokens is the first mc / mp of this view's bytes: its other
    tokens read the bytes that follow."""
    return gl.SharedLinearLayout([[0, b, 0] for b in (1, 2, 4, 8, 16, 32)] + [[0, 64, 0]]
                                 + [[b, 0, 0] for b in _bits(kw)]
                                 + [[0, 8 * b if b < 8 else 0, b] for b in _bits(mp)])


@functools.cache
def _x_copy_view(kw: int, mc: int):
    """A stage of mc tokens as the (warp, k group, token, 8 k) destination of the copies, laid out as `_x_view`."""
    return gl.SharedLinearLayout([[0, 0, 0, b] for b in (1, 2, 4)] + [[0, b, 0, 0] for b in (1, 2, 4)]
                                 + [[0, 8, 0, 0]] + [[b, 0, 0, 0] for b in _bits(kw)]
                                 + [[0, b if b < 8 else 0, b, 0] for b in _bits(mc)])


def fits(tw: TcWeight, rows: int) -> bool:
    """Whether QuantLinear sends this product here rather than to `ws_gemv` (K a multiple of 128 WARPS), by the
    H200 A/B of session 31 (BENCHMARKS.md; after session 29's ring): any weight at up to 4 rows of x (70B gate_up
    76.0 vs 78.7 us at 4, MXFP4); up to 2^28 values (all but 70B gate_up) at up to 8 (8B gate_up 24.0 vs 26.1,
    70B down 43.5 vs 44.8); at most MAX_N x MAX_K (8B qkv, o, down; 70B qkv, o) at up to 16 (8B down 16.3 vs
    17.3, 70B qkv 22.1 vs 28.1 and `tc_gemv`'s 23.5; 70B o level, 18.2 vs 18.2, NVFP4 19.1 vs 18.5). Outside
    these `ws_gemv` was faster: 8B gate_up at 12-16 rows 28.2-28.7 vs 31.8-32.8, 70B down 49.2-50.1 vs 57.2-57.3."""
    N, K = tw.shape
    if rows > 16 or K % (CHUNK * WARPS):
        return False
    return rows <= 4 or (rows <= 8 and N * K <= MID_WEIGHTS) or (N <= MAX_N and K <= MAX_K)


def _ring(K: int, warps: int, programs: int, mc: int, sms: int) -> tuple[int, int]:
    """(stages, k chunks a stage). Chunks in flight: 4 where a warp has more than 16 k chunks (H200: 8B down 14.4
    us against 17.0 at 2), or where at most 4 tokens are copied and there are at most 3 programs an SM, so that
    the deeper ring costs no residency (8B o at one row 6.2 against 6.6 us, qkv 7.5 against 7.7); else 2 (8B
    gate_up's 1792 programs: 23.3 against 24.6 us at 4; at 16 tokens 8B qkv 9.8 against 14.1). BENCHMARKS.md,
    session 19. Four go as 2 stages of 2 chunks: a stage's copies, wait and barrier then serve two chunks,
    which took 12% of the loop's instructions off each and was as fast or faster at every Llama-3 linear, one
    row (70B down 43.2 -> 41.2 us, 8B down NVFP4 14.6 -> 13.8); so does one row's 2, where 4 chunks in 2 stages
    cost as little residency (70B gate_up 74.6 -> 73.2 us). Session 29. Six (3 stages of 2) where a warp has
    more than 16 k chunks and there are at most 2 programs an SM (8B down: 12.9 against 13.3 us at one row, 12.9
    against 13.8 at four; 70B down's 512 programs lose, 41.8 against 40.6) and at most 8 tokens (16: 20.5
    against 16.0, the MMA tile's x buffers cost residency). Session 33."""
    per = K // (CHUNK * warps)
    deep = per > 16 or (mc <= 4 and programs <= 3 * sms)
    if per % 2 == 0 and per > 16 and programs <= 2 * sms and mc <= 8:
        return 3, 2
    if per % 2 == 0 and (deep or mc == 1):
        return 2, 2
    return (4 if deep else 2), 1


def row_gemv(x: torch.Tensor, tw: TcWeight, alpha: float = 1.0, out: torch.Tensor | None = None,
             stages: int | None = None, warps: int = WARPS, warp_barriers: bool = True,
             chunks: int | None = None) -> torch.Tensor:
    """y (M, N) = alpha * x W^T (times W's row_alpha) in bf16, x (M <= 16, K) bf16, W a `TcWeight`. The ring is
    `_ring`'s unless `stages` or `chunks` (k chunks a stage) is given (then 2 stages, 1 chunk for the other);
    `warp_barriers=False` keeps the loop's CTA barriers (`warpbarrier.py`; for A/B runs)."""
    M, K = x.shape
    N, Kw = tw.shape
    if Kw != K or M > 16 or K % (CHUNK * warps):
        raise MrgptqError(f"row_gemv: needs a weight with x's K (x {K}, W {Kw}), K a multiple of {CHUNK * warps} "
                          f"and at most 16 rows of x (got {M})")
    x = x.to(torch.bfloat16).contiguous()
    y = out if out is not None else torch.empty((M, N), dtype=torch.bfloat16, device=x.device)
    ra = tw.row_alpha
    mp = 8 if M <= 8 else 16  # tokens in the MMA tile
    mc = triton.next_power_of_2(M)  # tokens copied a step
    programs = triton.cdiv(N, 64) * 4
    if stages is None and chunks is None:
        stages, chunks = _ring(K, warps, programs, mc, _sm_count(x.device))
    stages, chunks = stages or 2, chunks or 1
    if (K // (CHUNK * warps)) % chunks:
        raise MrgptqError(f"row_gemv: a warp's {K // (CHUNK * warps)} k chunks do not split into stages of {chunks}")
    if warp_barriers:
        _warp_barriers()
    _row_gemv_kernel[(programs,)](
        x, tw.words, tw.scales, y, alpha * 2.0 ** tw.shift, y if ra is None else ra, M, N, K,
        x.stride(0), y.stride(0), S=stages, MP=mp, KW=warps,
        NV=tw.spec.scale_dtype == "e4m3", ROW_ALPHA=ra is not None, WL=_words_layout(warps),
        MC=mc, XV=_x_view(warps, mp), XW=_x_copy_view(warps, mc), XS=mc if OUTGROWING_VIEWS else mp,
        WB=warp_barriers, CPS=chunks, XM=M != mc, num_warps=warps, **LAUNCH)
    return y

