"""Decode GEMM for 33-128 tokens (Gluon, Hopper): one x tile in shared memory feeds several warpgroups.

`tc_gemv` gives each 64-row weight tile its own copy of x: at 128 tokens every 4 KB brick brings 32 KB of x from
L2 (100 MB for Llama-3-8B qkv), and above 64 tokens it is slower than cuBLAS bf16 (BENCHMARKS.md, session 24).
Here a program's tile is 64 W weight rows: W consumer warpgroups each decode their own brick (`tc_pack` layout,
`wsgemv.decode_words`) into the wgmma A operand, and all of them multiply it with one x tile, so x is read once
per 64 W rows. A one-warp producer fills a ring of S shared-memory stages by TMA: x's rows up to the next
multiple of 16 (`_producer`), the W bricks of the step as one box, their scale words as another; a stage's
`ready` barrier completes when its bytes land, its `empty` barrier when every warpgroup's wgmma has read it.

Work is split as in `ws_gemv`: units (tile, 128-wide k step) in tile-major order, program p takes
[p U / P, (p + 1) U / P), partial tiles meet in the workspace (`wsgemv._flush`, deterministic).

Measured (H200, session 25): the ring alone, with W = 1, is most of the gain at 65-128 tokens (8B qkv at 128
tokens 30.2 -> 21.9 us): `tc_gemv` has one step in flight, here S steps are. Sharing x (W = 2, 4) pays where
there are enough tiles to keep one program per SM (gate_up) or K is long (down); the warpgroups of a program
move in step (one `empty` arrival per stage), and at 128 tokens each warpgroup's wgmmas, not x, are the bound.
Decoding the next step while the wgmmas run (asynchronous wgmma) was tried: ptxas put the wait back before the
decode and one build gave wrong results; not kept. So was giving a tile's tokens to two warpgroups that decode the
same bricks (session 26: the decode done twice cost more than the overlap gained, except at 8B o above 64 tokens).
What does overlap them is ping-pong (64-row tiles): two warpgroups take the tile's units in turn and meet once
per tile in shared memory; the default wherever x is not shared (session 27: 8B qkv at 128 tokens 21.7 -> 19.1 us,
down 39.9 -> 34.4). Its gain showed only once x's TMA boxes stopped reaching past M (`_producer`).
"""
from __future__ import annotations

import functools

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma

from ..errors import MrgptqError
from . import LAUNCH
from .gluonapi import barrier, reinterpret, tma_load
from .tcgemv import CHUNK, WS_FLOATS, TcWeight, _workspace
from .wsgemv import _flush, _stack4, decode_words

MAX_ROWS = 128  # x rows one launch takes (one token tile)
STAGES = {False: 3, True: 4}  # the ring's depth without and with ping-pong (which needs an even one)
SK_FIXUP = 16  # k steps a stream-K program's partial tiles cost (write, wait, add), fitted on H200 (session 28)


@gluon.jit
def _x_boxes(x64, x32, x16, x_buf, bar, col, R: gl.constexpr):
    """x's first R rows (R a multiple of 16), 64 columns from `col`, into x_buf: boxes of 64 rows, then one of 32
    and one of 16 as R's binary digits ask."""
    for b in gl.static_range(R // 64):
        tma_load(x64, [b * 64, col], bar, x_buf.slice(b * 64, 64))
    if R % 64 >= 32:
        tma_load(x32, [R // 64 * 64, col], bar, x_buf.slice(R // 64 * 64, 32))
    if R % 32 == 16:
        tma_load(x16, [R - 16, col], bar, x_buf.slice(R - 16, 16))


@gluon.jit
def _produce(x64, x32, x16, w_desc, s_desc, x_bufs, w_bufs, s_bufs, ready, empty, u0, u1, steps, W: gl.constexpr,
             SW: gl.constexpr, BYTES: gl.constexpr, R: gl.constexpr):
    """Unit u's first R x rows, W bricks and scale words into stage u % S, by TMA."""
    S: gl.constexpr = ready.type.shape[0]
    for u in range(u0, u1):
        i = u - u0
        st = i % S
        mbarrier.wait(empty.index(st), ((i // S) & 1) ^ 1)
        n = u // steps
        t = u % steps
        bar = ready.index(st)
        mbarrier.expect(bar, BYTES + 2 * R * 64 * 2)
        _x_boxes(x64, x32, x16, x_bufs.index(2 * st), bar, t * 128, R)
        _x_boxes(x64, x32, x16, x_bufs.index(2 * st + 1), bar, t * 128 + 64, R)
        tma_load(w_desc, [n * W, t * 64, 0], bar, w_bufs.index(st))
        tma_load(s_desc, [n * W, t * (64 * SW)], bar, s_bufs.index(st))


@gluon.jit
def _producer(x64, x32, x16, w_desc, s_desc, x_bufs, w_bufs, s_bufs, ready, empty, u0, u1, steps, M,
              W: gl.constexpr, SW: gl.constexpr, BYTES: gl.constexpr):
    """One warp: x's rows in bounds only, 16 ceil(M / 16) of them, in one loop built for each such count (a box
    chosen inside the loop, by branch or predicate, cost more than it saved: session 27). A box reaching past M
    reads zero-filled rows, and those were slow: 8B qkv at 80 tokens took 25.9 us against 18.7 with the rows in
    bounds (ping-pong). The rows no box reaches keep stale values, which reach only the masked output columns."""
    MP: gl.constexpr = x_bufs.type.shape[1]
    q16 = gl.cdiv(M, 16)
    for r in gl.static_range(1, MP // 16 + 1):
        if q16 == r:
            _produce(x64, x32, x16, w_desc, s_desc, x_bufs, w_bufs, s_bufs, ready, empty, u0, u1, steps, W, SW,
                     BYTES, r * 16)


@gluon.jit
def _decode(w_buf, s_buf, v, AL: gl.constexpr, WL: gl.constexpr, SL: gl.constexpr, BN: gl.constexpr,
            NV: gl.constexpr):
    """A stage's W bricks as two bf16 wgmma A operands (BN x 64 each: k < 64, k >= 64)."""
    PLAIN2: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    w = reinterpret(w_buf, gl.int32, [BN, 16], PLAIN2).load(WL)
    if NV:  # row r's two scale words are adjacent
        s0, s1 = gl.split(reinterpret(s_buf, gl.int32, [BN, 2], PLAIN2).load(SL))
        s0 = gl.convert_layout(s0, gl.SliceLayout(1, WL))[:, None]
        s1 = gl.convert_layout(s1, gl.SliceLayout(1, WL))[:, None]
    else:
        s0 = reinterpret(s_buf, gl.int32, [BN], gl.SwizzledSharedLayout(1, 1, 1, [0])).load(
            gl.SliceLayout(1, WL))[:, None]
        s1 = s0
    o0, o1, o2, o3, o4, o5, o6, o7 = decode_words(w, s0, s1, v[None, :], NV)
    a = gl.join(_stack4(o0, o2, o4, o6), _stack4(o1, o3, o5, o7))  # (BN, 16 words u, m, b)
    a = gl.reshape(a, (BN, 4, 2, 2, 2, 2, 2))  # u = 4 t + 2 a + c, m = 2 g + h
    a = gl.permute(a, (0, 4, 3, 5, 1, 6, 2))  # (g, c, h, t, b, a): k = 64 a + 32 g + 16 c + 8 h + 2 t + b
    lo, hi = gl.split(gl.reshape(a, (BN, 64, 2)))
    return gl.convert_layout(lo, AL, assert_trivial=True), gl.convert_layout(hi, AL, assert_trivial=True)


@gluon.jit
def _consumer(j: gl.constexpr, PP: gl.constexpr, w_bufs, s_bufs, x_bufs, ready, empty, red, rb, y_ptr, ws_ptr,
              cnt_ptr, alpha, ra_ptr, M, N, stride_ym, u0, u1, U, P, p, steps, MP: gl.constexpr, W: gl.constexpr,
              WL: gl.constexpr, SL: gl.constexpr, NV: gl.constexpr, ROW_ALPHA: gl.constexpr):
    """W warpgroups: per unit, decode the stage's bricks and wgmma them with its x tile; flush each tile.

    Ping-pong (PP, W = 1): two such partitions j = 0, 1 take a tile's units in turn, so one decodes while the
    other's wgmmas run; at the tile's end j = 1 hands its partial sum over in shared memory (`red`, barriers
    rb: 0 = written, 1 = read) and j = 0 flushes the total. Partition j takes the program's units i = u - u0
    with i = j mod 2, not a tile's 2nd, 4th, ...: so on an even ring each stage has one user, whose wait on the
    stage's next phase cannot pass on the parity of the phase before it (the other's unit). Counting within the
    tile swapped the users where a tile began at an odd i (stream-K) and hung (session 27)."""
    S: gl.constexpr = ready.type.shape[0]
    BN: gl.constexpr = 64 * W
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4 * W, 1], instr_shape=[16, MP, 16])
    AL: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    v = gl.arange(0, 16, gl.SliceLayout(0, WL)) % 4  # word 4t + v
    for n in range(u0 // steps, gl.cdiv(u1, steps)):
        k = n - u0 // steps  # tiles done
        a_beg = gl.maximum(u0, n * steps)
        a_end = gl.minimum(u1, (n + 1) * steps)
        acc = gl.zeros((BN, MP), gl.float32, MMA)
        for u in range(a_beg + PP * ((a_beg - u0 + j) & 1), a_end, 1 + PP):  # PP: the units u - u0 = j mod 2
            i = u - u0
            st = i % S
            mbarrier.wait(ready.index(st), (i // S) & 1)
            a0, a1 = _decode(w_bufs.index(st), s_bufs.index(st), v, AL, WL, SL, BN, NV)
            acc = warpgroup_mma(a0, x_bufs.index(2 * st).permute((1, 0)), acc)
            acc = warpgroup_mma(a1, x_bufs.index(2 * st + 1).permute((1, 0)), acc)
            barrier()  # every warpgroup's wgmma has read the stage
            mbarrier.arrive(empty.index(st), count=1)
        if j == 1:
            if k > 0:
                mbarrier.wait(rb.index(1), (k - 1) & 1)  # the last tile's partial has been read
            red.store(acc)
            mbarrier.arrive(rb.index(0), count=1)
        else:
            if PP:
                mbarrier.wait(rb.index(0), k & 1)
                acc = acc + red.load(MMA)
                mbarrier.arrive(rb.index(1), count=1)
            _flush(acc, n, a_beg, a_end, y_ptr, ws_ptr, cnt_ptr, alpha, ra_ptr, M, N, stride_ym, u0, U, P, p, steps,
                   MP, MMA, ROW_ALPHA, BN)


@gluon.jit
def _mid_gemm_kernel(x64, x32, x16, w_desc, s_desc, y_ptr, ws_ptr, cnt_ptr, alpha, ra_ptr, M, N, K, stride_ym,
                     S: gl.constexpr, MP: gl.constexpr, W: gl.constexpr, WL: gl.constexpr, SL: gl.constexpr,
                     NV: gl.constexpr, ROW_ALPHA: gl.constexpr, BYTES: gl.constexpr, PREGS: gl.constexpr,
                     PP: gl.constexpr, CREGS: gl.constexpr):
    p = gl.program_id(0)
    P = gl.num_programs(0)
    steps = K // 128
    U = gl.cdiv(N, 64 * W) * steps
    u0 = p * U // P
    u1 = (p + 1) * U // P
    SW: gl.constexpr = 2 if NV else 1  # scale words per brick row
    x_bufs = gl.allocate_shared_memory(gl.bfloat16, [2 * S, MP, 64], x16.layout)  # every box's layout
    w_bufs = gl.allocate_shared_memory(gl.int32, [S, W, 64, 16], w_desc.layout)
    s_bufs = gl.allocate_shared_memory(gl.int32, [S, W, 64 * SW], s_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [S, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [S, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(S):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    if PP:  # each consumer takes the units of its parity: S even, so a stage's previous user is the same one
        red = gl.allocate_shared_memory(gl.float32, [64, MP], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
        rb = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        mbarrier.init(rb.index(0), count=1)
        mbarrier.init(rb.index(1), count=1)
        gl.warp_specialize([
            (_consumer, (0, True, w_bufs, s_bufs, x_bufs, ready, empty, red, rb, y_ptr, ws_ptr, cnt_ptr, alpha,
                         ra_ptr, M, N, stride_ym, u0, u1, U, P, p, steps, MP, W, WL, SL, NV, ROW_ALPHA)),
            (_consumer, (1, True, w_bufs, s_bufs, x_bufs, ready, empty, red, rb, y_ptr, ws_ptr, cnt_ptr, alpha,
                         ra_ptr, M, N, stride_ym, u0, u1, U, P, p, steps, MP, W, WL, SL, NV, ROW_ALPHA)),
            (_producer, (x64, x32, x16, w_desc, s_desc, x_bufs, w_bufs, s_bufs, ready, empty, u0, u1, steps, M,
                          W, SW, BYTES)),
        ], [4, 1], [CREGS, PREGS])
    else:  # one consumer partition: `red` and `rb` are never touched, any buffers stand in for them
        gl.warp_specialize([
            (_consumer, (0, False, w_bufs, s_bufs, x_bufs, ready, empty, x_bufs, ready, y_ptr, ws_ptr, cnt_ptr,
                         alpha, ra_ptr, M, N, stride_ym, u0, u1, U, P, p, steps, MP, W, WL, SL, NV, ROW_ALPHA)),
            (_producer, (x64, x32, x16, w_desc, s_desc, x_bufs, w_bufs, s_bufs, ready, empty, u0, u1, steps, M,
                          W, SW, BYTES)),
        ], [1], [PREGS])


@functools.cache
def _x_layout():
    """x's TMA boxes in shared memory, 64 bf16 (128 B) a row, 128-byte swizzle whatever the box's rows (cached:
    building it costs ~7 us of Python a call)."""
    return gl.NVMMASharedLayout.get_default_for([64, 64], gl.bfloat16)


@functools.cache
def _layouts(W: int):
    """(words, NVFP4 scale pairs) register layouts for 64 W rows: thread (warp w, lane 4 r + t) holds rows
    16 w + r + 8 i and words 4 t + v of each (the wgmma A fragment's rows, as `wsgemv.WORDS` for W = 1)."""
    warps = [[16 << j, 0] for j in range(2 + (W.bit_length() - 1))]
    words = gl.DistributedLinearLayout(reg_bases=[[0, 1], [0, 2], [8, 0]],
                                       lane_bases=[[0, 4], [0, 8], [1, 0], [2, 0], [4, 0]],
                                       warp_bases=warps, block_bases=[], shape=[64 * W, 16])
    pairs = gl.DistributedLinearLayout(reg_bases=[[0, 1], [8, 0]], lane_bases=[[0, 0], [0, 0], [1, 0], [2, 0], [4, 0]],
                                       warp_bases=warps, block_bases=[], shape=[64 * W, 2])
    return words, pairs


def _split(tiles: int, steps: int, sms: int) -> int:
    """The K split: the largest power of 2 that keeps one program per SM at most and 2+ k steps a program."""
    split = 1
    while tiles * split * 2 <= sms and split * 4 <= steps:
        split *= 2
    return split


def _pick(M: int, N: int, K: int, sms: int) -> tuple[int, int, int, bool, int]:
    """(warpgroups W, K split, stages, ping-pong, programs). x is shared by four warpgroups (256-row tiles) at up
    to 64 tokens where N / 256 tiles still fill 3/4 of the SMs (8B gate_up: 41.8 us against W = 2's 44.4 at 64
    tokens), by two at 65-128 tokens where N / 128 tiles fill the SMs 1.5 times (gate_up 66-70 us against 69-73
    with ping-pong), and at up to 32 tokens where K is long: by four where each program still has 32 k steps
    (70B down at 17-32 tokens: 54.9-55.3 us against W = 2's 60.3-61.3, qkv 32.5-33.1 against 33.4-34.0), else by
    two (8B down; 70B o, 16 steps with four: 22.6-23.0 against 21.8-22.0). Everywhere else 64-row tiles whose k
    steps two warpgroups take in turn (ping-pong; 4 stages): at 33-128 tokens 8B qkv 18.4-19.2 us against
    21.1-22.0 with one warpgroup, down 33-34 against 38-40 (and 25.4 against W = 2's 26.5 at 48 tokens). The K
    split keeps one program per SM at most (more was slower at every Llama-3-8B linear). Where the tiles overflow
    the SMs, one program per SM shares their k steps out evenly (stream-K) if the SMs idle in the last wave would
    sit out more than `SK_FIXUP` steps each on average, about what its partial tiles cost: 70B qkv (160 tiles, 64
    steps) at 48-128 tokens 36.7-56.5 us against 47.8-62.0, gate_up (W = 2: 448) at 96-128 tokens 225-234
    against 243-248, at 48-64 (W = 4: 224) 135-138 against 141-145, but 8B gate_up's 224 of 32 steps 70-71
    against 68-70. H200, sessions 25, 27 and 28 (BENCHMARKS.md)."""
    steps = K // CHUNK
    if M <= 64 and N / 256 >= 0.75 * sms:
        W = 4
    elif M <= 32 and K >= 8192:  # four where each program keeps 32 k steps or more
        W = 4 if steps // _split(triton.cdiv(N, 256), steps, sms) >= 32 else 2
    elif M > 64 and N / 128 >= 1.5 * sms:
        W = 2
    else:
        W = 1
    tiles = triton.cdiv(N, 64 * W)
    split = _split(tiles, steps, sms)
    pp = W == 1 and M > 32
    idle = -tiles % sms if tiles > sms else 0  # program slots left empty in the last wave
    programs = sms if idle * steps > SK_FIXUP * sms else tiles * split
    return W, split, STAGES[pp], pp, programs


def serves(M: int, N: int, K: int, sms: int) -> bool:
    """Whether QuantLinear should run this kernel for M bf16 rows: 33-128 rows, and 17-32 where it shares x
    (W > 1; with 64-row tiles `tc_gemv` was faster at 32 tokens: 8B qkv 12.5 against 14.1 us, o 9.9 against
    10.6). Its Triton gate is the other Gluon kernels' (`kernels.has_gluon`, checked by the caller)."""
    return K % CHUNK == 0 and (32 < M <= MAX_ROWS or (16 < M <= 32 and _pick(M, N, K, sms)[0] > 1))


def _weight_descriptors(tw: TcWeight, W: int):
    """TMA descriptors of the bricks (a step's W bricks: one (W, 64, 16) box) and their scale words, built once
    per weight and tile height."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    key = ("mid", W)
    if key not in tw.cache:
        n64, steps = tw.words.shape[0], tw.K // CHUNK
        sw = 2 if tw.spec.scale_dtype == "e4m3" else 1
        wd = TensorDescriptor(tw.words.view(n64, steps * 64, 16), [n64, steps * 64, 16], [steps * 1024, 16, 1],
                              [W, 64, 16], gl.NVMMASharedLayout(0, 32, rank=3))
        s = tw.scales.view(n64, steps * 64 * sw)
        sd = TensorDescriptor(s, [n64, steps * 64 * sw], [steps * 64 * sw, 1], [W, 64 * sw],
                              gl.NVMMASharedLayout(0, 32, rank=2))
        tw.cache[key] = wd, sd
    return tw.cache[key]


def mid_gemm(x: torch.Tensor, tw: TcWeight, alpha: float = 1.0, out: torch.Tensor | None = None,
             warpgroups: int | None = None, split: int | None = None, stages: int | None = None,
             programs: int | None = None, mp: int | None = None, maxnreg: int | None = None,
             pingpong: bool | None = None) -> torch.Tensor:
    """y (M, N) = alpha * x W^T (times W's row_alpha) in bf16, x (M <= 128, K) bf16, W a `TcWeight`.

    `warpgroups` W: weight rows per tile / 64 (1, 2 or 4); `split`: K splits (P = tiles x split programs);
    `programs` overrides P (stream-K; left out, `_pick`'s where W and the split are left out too); `stages`: the
    ring's depth; `mp`: token tile (16-128, >= M); `pingpong` (W = 1, an even ring, 4 deep by default): two
    warpgroups take a tile's k steps in turn, one decoding while the other's wgmmas run. Left out, all of these
    are `_pick`'s (ping-pong only with `warpgroups` left out too)."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from .gemm import _sm_count

    M, K = x.shape
    N, Kw = tw.shape
    if Kw != K or M > MAX_ROWS or K % CHUNK:
        raise MrgptqError(f"mid_gemm: needs a weight with x's K (x {K}, W {Kw}) and M <= {MAX_ROWS} rows (got {M})")
    W0, split0, _, pp0, P0 = _pick(M, N, K, _sm_count(x.device))
    W = warpgroups or W0
    if W not in (1, 2, 4):
        raise MrgptqError(f"mid_gemm: warpgroups must be 1, 2 or 4 (got {W})")
    pp = pp0 if pingpong is None and warpgroups is None else bool(pingpong)
    stages = stages or STAGES[pp]
    if pp and (W != 1 or stages % 2):
        raise MrgptqError(f"mid_gemm: ping-pong needs 64-row tiles and an even ring (got W={W}, stages={stages})")
    picked = warpgroups is None and split is None  # the pick's tiles and split: its grid too
    split = split or (split0 if warpgroups is None else 1)
    mp = mp or max(16, triton.next_power_of_2(M))
    if M > mp:
        raise MrgptqError(f"mid_gemm: M={M} rows do not fit a token tile of {mp}")
    tiles, steps = triton.cdiv(N, 64 * W), K // CHUNK
    P = min(programs or (P0 if picked else tiles * split), tiles * steps)
    ws, cnt = _workspace(x.device)
    if (P != tiles and 2 * P * 64 * W * mp > WS_FLOATS) or tiles > cnt.numel():  # P = tiles: no partial tiles
        raise MrgptqError(f"mid_gemm: workspace too small for {P} programs of {64 * W}x{mp} partial tiles")
    x = x.to(torch.bfloat16).contiguous()
    if x.data_ptr() % 16:
        x = x.clone()
    y = out if out is not None else torch.empty((M, N), dtype=torch.bfloat16, device=x.device)
    nv = tw.spec.scale_dtype == "e4m3"
    sw = 2 if nv else 1
    xds = [TensorDescriptor.from_tensor(x, [rows, 64], _x_layout()) for rows in (64, 32, 16)]
    wd, sd = _weight_descriptors(tw, W)
    words, pairs = _layouts(W)
    nbytes = W * 4096 + W * 256 * sw  # + x's boxes
    ra = tw.row_alpha
    _mid_gemm_kernel[(P,)](*xds, wd, sd, y, ws, cnt, alpha * 2.0 ** tw.shift, y if ra is None else ra, M, N, K,
                           y.stride(0), S=stages, MP=mp, W=W, WL=words, SL=pairs, NV=nv, ROW_ALPHA=ra is not None,
                           BYTES=nbytes, PREGS=24, PP=pp, CREGS=232, num_warps=4 * W, maxnreg=maxnreg,
                           **LAUNCH)
    return y
