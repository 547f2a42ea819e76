"""Decode GEMM on tensor cores: y (M, N) = alpha x W^T for M <= 128 rows of x and packed FP4 weights W.

At batch 1 the work is reading W (4.25 bits a weight) and turning codes into numbers; the multiply-adds are
free on tensor cores if the decoded weights can feed them straight from registers. So the operands swap:
W is the MMA's A operand (64 weight rows x 16 k per wgmma, from registers), x^T the B operand (k x 16..128
tokens, from shared memory; padding tokens are zeros). Three choices make the decode cheap:

1. Layout. `tc_pack` reorders each row's codes once, at load time, so that the 32-bit word a thread loads holds
   exactly the 8 values that thread owns in Hopper's wgmma A-operand fragment: within each 128-wide k chunk,
   word u = 4t + v (v = 2a + c) holds pairs m = 2g + h (values b = 0, 1) at k = 64a + 32g + 16c + 8h + 2t + b,
   i.e. MMA k-steps 4a + c (m = 0, 1) and 4a + 2 + c (m = 2, 3). A word's first two pairs then share one group
   scale and its last two another (MXFP4: groups 2a, 2a + 1; NVFP4: 4a + c, 4a + 2 + c), so one register of two
   bf16 scales serves it (3.). Loads, decode and MMA meet in one register layout: no shared-memory shuffle of
   decoded values (`tc_gemv` first swaps c and g within each thread, `_swap_cg`, as Triton lowers only that
   order's permutation without shared memory; the Gluon kernels lay the fragment out themselves). Words are
   stored in 4 KB bricks (64 rows x 128 k, row block-major), so every load is whole contiguous kilobytes
   (gate_up 40.2 -> 32.1 us on the H100).
2. Bits. Each bf16 pair (k, k+1) is two shifts and masks of the word: a magnitude code c placed at bits 6..8
   of a bf16 is the number c_value * 2^-126 (E2M1's subnormal 0.5 included), the sign goes to bit 15. Per
   half-word: pair 0 magnitude bits 0-2 and sign bit 9, pair 1 3-5 / 12, pair 2 6-8 / 10, pair 3 13-15 / 11;
   pairs 0 and 1 are one shift and one mask each, 2 and 3 two shifts, a mask and a lop3. ~1.4 instructions
   per code.
3. Scales. One bf16x2 multiply per pair (written as an fma with -0: `mul.bf16x2` needs sm_90, and ptxas makes
   the fma that same multiply there) applies the group scale and undoes the 2^-126. A row's group scales are
   re-encoded at load time into scale words from which a mask (MXFP4: `& 0x7F807F80`, the E8M0 exponent
   e + 106 as a bf16 exponent field) or a mask and an or (NVFP4: `& 0x0FF00FF0 | 0x70007000`, E4M3 as a bf16
   with 3 mantissa bits) gives a register of two bf16 scales, and the same after an 8-bit rotation gives two
   more (`scale_word`): 3 instructions a row for MXFP4's four scales, 6 for NVFP4's eight (ptxas adds a move
   of the mask per or), where a byte extraction and a multiply-add per scale took 2 each (row-split loop per
   2 chunks: 369 -> 351 instructions MXFP4, 403 -> 378 NVFP4; 1-4% faster on the H200, session 32). A word's
   pairs 0, 1 take the register's low half and 2, 3 its high half, as operand selects of the multiply (HMUL2
   `.H0_H0` / `.H1_H1`: no instruction). The register holds each scale times 2^126 * 2^D. Every product is
   exact (a 2-bit code times a 4-bit scale fits bf16's 8 bits); alpha absorbs 2^-D (D = -20 MXFP4, -19 NVFP4,
   which keeps products far from bf16's and fp32's subnormals).

Few weight tiles (N = 4096 has 64) would leave SMs idle, so K splits across programs; the last program of a
tile to finish (an atomic counter that resets itself) sums the fp32 partials and stores y: no zeroed buffer,
no extra launch, CUDA-graph safe. The CPU interpreter runs the same kernel with the decode in plain integer and
float32 ops (inline PTX needs a GPU).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl

from ..errors import MrgptqError
from ..formats import FormatSpec, unpack
from . import LAUNCH
from .fp4 import INTERPRET, store_rounded

CHUNK = 128  # k per layout chunk (16 words): the packing is defined per chunk
MX_SHIFT, NV_SHIFT = 20, 19  # -D: products are computed 2^D times too small, alpha multiplies by 2^-D
MX_EXP_MAX = 148  # MXFP4 exponents (biased) the re-encoding keeps exact: e + 106 <= 254

# Scale words (`tc_pack`): two bf16 scales at the bits these masks keep (NVFP4 also sets the exponent's top 3
# bits, `NV_SCALE_EXP`), two more after an 8-bit left rotation.
MX_SCALE_MASK, NV_SCALE_MASK = tl.constexpr(0x7F807F80), tl.constexpr(0x0FF00FF0)
NV_SCALE_EXP = tl.constexpr(0x70007000)

# $0..$7: the 8 bf16 values of word $8 in (m, b) order; pairs 0, 1 times the low bf16 of $9, pairs 2, 3 times its
# high one (ptxas folds the broadcasts into the multiplies' operand selects).
_DECODE_PTX = tl.constexpr("""{
.reg .b32 a, b, c, d, z, sa, sb;
.reg .b16 sl, sh;
mov.b32 z, 0x80008000;
mov.b32 {sl, sh}, $9;
mov.b32 sa, {sl, sl};
mov.b32 sb, {sh, sh};
shl.b32 a, $8, 6;
and.b32 a, a, 0x81C081C0;
fma.rn.bf16x2 a, a, sa, z;
mov.b32 {$0, $1}, a;
shl.b32 b, $8, 3;
and.b32 b, b, 0x81C081C0;
fma.rn.bf16x2 b, b, sa, z;
mov.b32 {$2, $3}, b;
shl.b32 c, $8, 5;
and.b32 c, c, 0x80008000;
lop3.b32 c, $8, 0x01C001C0, c, 0xEA;
fma.rn.bf16x2 c, c, sb, z;
mov.b32 {$4, $5}, c;
shl.b32 d, $8, 4;
and.b32 d, d, 0x80008000;
shr.b32 a, $8, 7;
lop3.b32 d, a, 0x01C001C0, d, 0xEA;
fma.rn.bf16x2 d, d, sb, z;
mov.b32 {$6, $7}, d;
}""")


@triton.jit
def scale_word(s0, s1, v, NV: tl.constexpr):
    """The two bf16 scales (low, high half) of word 4t + v, from its row's scale word(s) s0 (NVFP4: s0, s1):
    MXFP4 s0, NVFP4 word v // 2, itself or rotated left by 8 bits for MXFP4's v >= 2 and NVFP4's odd v (every
    decode GEMM's, the Gluon ones' through `wsgemv.decode_words`)."""
    s = tl.where(v >= 2, s1, s0) if NV else s0
    rot = (v % 2 == 1) if NV else (v >= 2)
    x = tl.where(rot, (s << 8) | ((s >> 24) & 0xFF), s)
    if NV:
        return (x & NV_SCALE_MASK) | NV_SCALE_EXP
    else:
        return x & MX_SCALE_MASK


@triton.jit
def _pair_bits(w):
    """The four bf16x2 bit patterns (unscaled, 2^-126 units) of words w: the PTX above in Triton ops."""
    p0 = (w << 6) & -2118090304  # 0x81C081C0
    p1 = (w << 3) & -2118090304
    p2 = (w & 0x01C001C0) | ((w << 5) & -2147450880)  # 0x80008000
    p3 = ((w >> 7) & 0x01C001C0) | ((w << 4) & -2147450880)
    return p0, p1, p2, p3


@triton.jit
def _halves(p, s):
    """float32 (low, high) of bf16x2 bits p times the bf16x2 scale bits s (float32 math, exact)."""
    sf = (s << 16).to(tl.float32, bitcast=True)
    return (p << 16).to(tl.float32, bitcast=True) * sf, (p & -65536).to(tl.float32, bitcast=True) * sf


@triton.jit
def _decode8(w, r, LUT: tl.constexpr):
    if LUT:
        return tl.inline_asm_elementwise(_DECODE_PTX, "=h,=h,=h,=h,=h,=h,=h,=h,r,r", [w, r],
                                         dtype=(tl.bfloat16,) * 8, is_pure=True, pack=1)
    else:
        p0, p1, p2, p3 = _pair_bits(w)
        v0, v1 = _halves(p0, r)
        v2, v3 = _halves(p1, r)
        rh = (r >> 16) & 0xFFFF
        v4, v5 = _halves(p2, rh)
        v6, v7 = _halves(p3, rh)
        return v0, v1, v2, v3, v4, v5, v6, v7


@triton.jit
def _stack4(a, b, c, d):
    """(..., 2, 2) with index 2i + j -> a, b, c, d."""
    return tl.join(tl.join(a, c), tl.join(b, d))


@triton.jit
def _fetch(w_rows, s_rows, x_cols, t, t1, rn, nmask, rm, mmask, R: tl.constexpr, BK: tl.constexpr):
    """Step t's weight words, their scale-word pieces and x^T tile; nothing is read past the program's last
    step."""
    wm = (nmask & (rn * 0 + t < t1))[:, None]  # (the interpreter wants tensor & tensor masks)
    xm = (mmask & (rm * 0 + t < t1))[None, :]
    w = tl.load(w_rows + t * (R * 1024), mask=wm, other=0)
    s = tl.load(s_rows + t * (R * 256), mask=wm, other=0)
    return w, s, tl.load(x_cols + t * BK, mask=xm, other=0.0)


@triton.jit
def _scale_words3(s, BN: tl.constexpr, R: tl.constexpr, NV: tl.constexpr):
    """The rows' scale words (s0, s1), each (row, 4r + t, 1), from the pieces word 4t + v loaded
    (`_tc_gemv_kernel`), reassembled within the thread: MXFP4 its 4 bytes (s1 = s0), NVFP4 two words of 2
    halves."""
    v = tl.arange(0, 4)[None, None, :]
    p = tl.reshape(s, (BN, 4 * R, 4)).to(tl.int32)  # (unsigned pieces: zero-extended)
    if NV:
        s0 = tl.sum(tl.where(v < 2, p << (16 * v), 0), axis=2)[:, :, None]
        s1 = tl.sum(tl.where(v >= 2, p << (16 * v - 32), 0), axis=2)[:, :, None]
    else:
        s0 = tl.sum(p << (8 * v), axis=2)[:, :, None]  # (disjoint bytes: the sum is the word)
        s1 = s0
    return s0, s1


@triton.jit
def _swap_cg(p, q, BN: tl.constexpr, R: tl.constexpr):
    """Values (row, 4r + t, v = 2a + c) of pairs with g = 0 (p) and g = 1 (q) -> those with c = 0 and c = 1,
    indexed (row, 4r + t, 2a + g): a transpose of two register dimensions (no data moves between threads)."""
    p0, p1 = tl.split(tl.reshape(p, (BN, 4 * R, 2, 2)))
    q0, q1 = tl.split(tl.reshape(q, (BN, 4 * R, 2, 2)))
    return tl.reshape(tl.join(p0, q0), (BN, 4 * R, 4)), tl.reshape(tl.join(p1, q1), (BN, 4 * R, 4))


@triton.jit
def _step(acc, w, s, xt, BN: tl.constexpr, BK: tl.constexpr, R: tl.constexpr, NV: tl.constexpr,
          LUT: tl.constexpr):
    """acc += decode(w, s) x^T: decode in the wgmma fragment layout, one dot. w: the step's words (BN, BW); s:
    their scale-word pieces (`_scale_words3`). Every reshape, split and join below moves values between a
    thread's registers only, so the decoded tile reaches wgmma without shared memory (tests/test_targets.py)."""
    REP: tl.constexpr = BN // 64
    v = tl.arange(0, 4)[None, None, :]
    s0, s1 = _scale_words3(s, BN, R, NV)
    r = scale_word(s0, s1, v, NV)
    o0, o1, o2, o3, o4, o5, o6, o7 = _decode8(tl.reshape(w, (BN, 4 * R, 4)), r, LUT)  # value (m, b): o_{2m+b}
    # word v = 2a + c's pair m = 2g + h is k = 64a + 32g + 16c + 8h + 2t + b = 32 v' + 8 m' + 2t + b for
    # v' = 2a + g, m' = 2c + h: swapping c and g (within o_j, o_{j+4}) gives each v' its own tensor
    o0, o4 = _swap_cg(o0, o4, BN, R)
    o1, o5 = _swap_cg(o1, o5, BN, R)
    o2, o6 = _swap_cg(o2, o6, BN, R)
    o3, o7 = _swap_cg(o3, o7, BN, R)
    a = tl.join(_stack4(o0, o2, o4, o6), _stack4(o1, o3, o5, o7))  # (BN, 4R, v', m', b)
    a = tl.reshape(a, (REP, 2, 4, 8, R, 4, 4, 4, 2))  # rows (j, i, w, l), words (r, t, v'), (m', b)
    a = tl.permute(a, (0, 2, 1, 3, 4, 6, 7, 5, 8))  # rows (j, w, i, l) as wgmma's, k = (r, v', m', t, b)
    a = tl.reshape(a, (BN, BK))
    if LUT:
        return tl.dot(a, xt, acc)
    else:
        return tl.dot(a, xt.to(tl.float32), acc, input_precision="ieee")


@triton.jit
def _tc_gemv_kernel(x_ptr, w_ptr, s_ptr, y_ptr, ws_ptr, cnt_ptr, alpha, ra_ptr, M, N, K, stride_xm, stride_ym,
                    split, BN: tl.constexpr, BW: tl.constexpr, MP: tl.constexpr, PF: tl.constexpr,
                    SPLIT: tl.constexpr, NV: tl.constexpr, LUT: tl.constexpr, ROW_ALPHA: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    BK: tl.constexpr = BW * 8
    R: tl.constexpr = BW // 16
    rn = pid_n * BN + tl.arange(0, BN)
    nmask = rn < tl.cdiv(N, 64) * 64  # rows are padded to whole 64-row blocks
    rm = pid_m * MP + tl.arange(0, MP)
    mmask = rm < M
    steps = K // BK
    per = tl.cdiv(steps, split)
    t0 = pid_k * per
    t1 = tl.minimum(t0 + per, steps)
    wi = tl.arange(0, BW)
    # bricks of 64 rows x 128 k (16 words, 4 KB) stored whole, row block-major: each step reads contiguous KBs
    brick = (rn // 64) * (K // 128) * 64 + rn % 64
    w_rows = w_ptr + brick[:, None] * 16 + ((wi // 16) * 1024 + wi % 16)[None, :]
    # scale words: word 4t + v loads piece v of its row's (MXFP4: byte v of the word; NVFP4: half v of the
    # two), so that a thread's four words load the whole as one access, laid out as the words are
    s_rows = (s_ptr.to(tl.pointer_type(tl.uint16 if NV else tl.uint8)) + brick[:, None] * 4
              + ((wi // 16) * 256 + wi % 4)[None, :])
    x_cols = x_ptr + rm[None, :] * stride_xm + tl.arange(0, BK)[:, None]
    # prefetch by hand, PF steps ahead (num_stages=1): Triton's software pipeline would split the dot into
    # k16 pieces with a wait between each, which makes ptxas serialize every wgmma
    acc = tl.zeros((BN, MP), dtype=tl.float32)
    w, s, xt = _fetch(w_rows, s_rows, x_cols, t0, t1, rn, nmask, rm, mmask, R, BK)
    if PF == 2:  # two buffers in fixed registers, two steps per iteration (no register rotation)
        w2, s2, x2 = _fetch(w_rows, s_rows, x_cols, t0 + 1, t1, rn, nmask, rm, mmask, R, BK)
        for t in range(t0, t1, 2):
            acc = _step(acc, w, s, xt, BN, BK, R, NV, LUT)
            w, s, xt = _fetch(w_rows, s_rows, x_cols, t + 2, t1, rn, nmask, rm, mmask, R, BK)
            acc = _step(acc, w2, s2, x2, BN, BK, R, NV, LUT)  # past the end: masked zeros, adds nothing
            w2, s2, x2 = _fetch(w_rows, s_rows, x_cols, t + 3, t1, rn, nmask, rm, mmask, R, BK)
    else:
        for t in range(t0, t1):
            w2, s2, x2 = _fetch(w_rows, s_rows, x_cols, t + 1, t1, rn, nmask, rm, mmask, R, BK)
            acc = _step(acc, w, s, xt, BN, BK, R, NV, LUT)
            w, s, xt = w2, s2, x2
    rd = tl.arange(0, BN)  # MMA row (j, w, i, l) holds loaded row l + 8 w + 32 i + 64 j
    phys = pid_n * BN + (rd % 8) + 8 * ((rd // 16) % 4) + 32 * ((rd // 8) % 2) + 64 * (rd // 64)
    yp = y_ptr + rm[None, :] * stride_ym + phys[:, None]
    ym = mmask[None, :] & (phys < N)[:, None]
    if ROW_ALPHA:  # a factor per output row (TcWeight.row_alpha)
        alpha = alpha * tl.load(ra_ptr + phys, mask=phys < N, other=0.0)[:, None]
    if not SPLIT:
        store_rounded(yp, acc * alpha, ym)
    else:
        tile = (pid_m * tl.num_programs(0) + pid_n)
        part = ws_ptr + tile * (split * BN * MP) + rd[:, None] * MP + tl.arange(0, MP)[None, :]
        tl.store(part + pid_k * (BN * MP), acc)
        tl.debug_barrier()
        done = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if done == split - 1:  # last of the tile: sum the partials in a fixed order, reset the counter
            tot = tl.load(part, cache_modifier=".cg")
            for j in range(1, split):
                tot += tl.load(part + j * (BN * MP), cache_modifier=".cg")
            store_rounded(yp, tot * alpha, ym)
            tl.atomic_xchg(cnt_ptr + tile, 0, sem="relaxed", scope="gpu")


@dataclass
class TcWeight:
    """A packed FP4 weight in the tensor-core decode layout (see the module docstring)."""
    words: torch.Tensor  # int32 bricks (N/64, K/128, 64, 16), rows padded to a multiple of 64
    scales: torch.Tensor  # int32 scale words (N/64, K/128, 64, 1 MXFP4 / 2 NVFP4), `_scale_words`
    spec: FormatSpec
    shift: int  # alpha multiplies by 2^shift
    N: int
    K: int
    # float32 (N,): a factor per output row, y = alpha row_alpha x W^T (sibling linears whose per-tensor scales
    # differ, kernels/siblings.py)
    row_alpha: torch.Tensor | None = None
    cache: dict = field(default_factory=dict, repr=False)  # what other kernels build once per weight (midgemm.py)

    @property
    def shape(self):
        return self.N, self.K


_MAG_POS = (0, 3, 6, 13)  # magnitude field of pair m in a half-word
_SIGN_POS = (9, 12, 10, 11)


def tc_supported(spec: FormatSpec, K: int) -> bool:
    return spec.is_fp4 and spec.symmetric and K % CHUNK == 0 and spec.group_size in (16, 32) \
        and (spec.scale_dtype == "e4m3") == (spec.group_size == 16)


def tc_pack(packed: torch.Tensor, scales: torch.Tensor, spec: FormatSpec) -> TcWeight | None:
    """Reorder (N, K/2) packed codes + group scales into the decode layout, once per weight.

    None where the layout cannot hold the weight exactly (K not a multiple of 128, an MXFP4 exponent above
    148, i.e. group scales over 2^21): callers keep the CUDA-core GEMV for those. Works in slices of rows so
    the int64 temporaries stay small next to the weight."""
    N, K = packed.shape[0], packed.shape[1] * 2
    if not tc_supported(spec, K):
        return None
    nv = spec.scale_dtype == "e4m3"
    if nv:
        s = scales.view(torch.float8_e4m3fn).float() if scales.dtype != torch.float32 else scales.float()
        zero = s <= 0
        mant, exp = torch.frexp(s)  # s = mant 2^exp, mant in [0.5, 1): E' = exp - 1, 1.mmm = 2 mant
        mmm = ((mant * 2 - 1) * 8).round().to(torch.int32)
        enc = ((exp - 1 + 10) << 3) | mmm  # bf16 exponent field E' + 234 = NV_SCALE_EXP's 224 | (E' + 10)
        enc8 = torch.where(zero, torch.zeros_like(enc), enc)
        shift = NV_SHIFT
    else:
        if int(scales.max()) > MX_EXP_MAX:
            return None
        zero = None
        enc8 = scales.to(torch.int32) + 106
        shift = MX_SHIFT
    n = N + (-N % 64)
    c = K // CHUNK
    dev = packed.device
    mpos = torch.tensor(_MAG_POS, device=dev).view(4, 1) + 16 * torch.arange(2, device=dev)
    spos = torch.tensor(_SIGN_POS, device=dev).view(4, 1) + 16 * torch.arange(2, device=dev)
    words = torch.zeros((n, c, 16), dtype=torch.int32, device=dev)  # padded rows: code 0
    sw = torch.zeros((n, c, 2 if nv else 1), dtype=torch.int32, device=dev)  # and scale words 0
    for r0 in range(0, N, 1024):
        p = packed[r0:r0 + 1024]
        r = p.shape[0]
        codes = unpack(p).to(torch.int64)
        if zero is not None:  # a zero NVFP4 scale: its group decodes to zeros whatever the codes
            codes = codes.view(r, -1, spec.group_size).masked_fill(zero[r0:r0 + r, :, None], 0).view(r, K)
        # k = 128 C + 64 a + 32 g + 16 c + 8 h + 2 t + b  ->  word (C, u = 4 t + 2 a + c), fields of (m = 2 g + h, b)
        cv = codes.view(r, c, 2, 2, 2, 2, 4, 2).permute(0, 1, 6, 2, 4, 3, 5, 7).reshape(r, c, 4, 4, 4, 2)
        word = (((cv & 7) << mpos) | ((cv >> 3) << spos)).sum(dim=(-1, -2))  # disjoint fields: sum == or
        words[r0:r0 + r] = _int32(word).view(r, c, 16)
        sw[r0:r0 + r] = _scale_words(enc8[r0:r0 + r].to(torch.int64).view(r, c, -1, 4), nv)
    bricks = words.view(n // 64, 64, c, 16).transpose(1, 2).contiguous()
    sc = sw.view(n // 64, 64, c, -1).transpose(1, 2).contiguous()
    return TcWeight(bricks, sc, spec, shift, N, K)


def _int32(x: torch.Tensor) -> torch.Tensor:
    """int64 holding 32-bit patterns -> int32 with those bits."""
    return torch.where(x >= 2 ** 31, x - 2 ** 32, x).to(torch.int32)


def _scale_words(e: torch.Tensor, nv: bool) -> torch.Tensor:
    """Re-encoded scales (..., 4) of one word's groups -> int32 words (...) that `scale_word` reads: bf16 scale
    fields (MXFP4 an exponent at bits 7-14, NVFP4 5 exponent and 3 mantissa bits at 4-11, of each half) for
    the register (e0 | e1 << 16), and rotated right by 8 for (e2 | e3 << 16). MXFP4's word holds a row's
    groups 0-3 in that order; NVFP4's word a its groups 4a + (0, 2, 1, 3): words v = 2a (groups 4a, 4a + 2)
    take the register, words 2a + 1 (4a + 1, 4a + 3) the rotated one."""
    if nv:
        e = e[..., [0, 2, 1, 3]]
    p = 4 if nv else 7
    lo = (e[..., 0] << p) | (e[..., 1] << (p + 16))
    hi = (e[..., 2] << p) | (e[..., 3] << (p + 16))
    return _int32(lo | (hi >> 8) | ((hi << 24) & 0xFFFFFFFF))


def packed_once(tw, device, pack):
    """A cached TcWeight: `tw` if it was built on `device`, else `pack()` (False: the layout cannot hold it)."""
    if tw is None or (tw and tw.words.device != device):
        tw = pack() or False
    return tw


_WORKSPACE: dict = {}
WS_FLOATS = 1 << 23  # 32 MB of fp32 partials per device, allocated once (CUDA graphs keep the pointer)
MAX_TILES = 1 << 14


def _workspace(device):
    key = (device.type, device.index)
    if key not in _WORKSPACE:
        _WORKSPACE[key] = (torch.empty(WS_FLOATS, dtype=torch.float32, device=device),
                           torch.zeros(MAX_TILES, dtype=torch.int32, device=device))
    return _WORKSPACE[key]


def _pick(M: int, N: int, K: int, sms: int):
    """(BN, BW, MP, SPLIT_K, warps, PF): 64 weight rows x 128-wide k steps (the load layout then matches the
    wgmma fragment: no shuffle), one step prefetched; K splits until the tiles cover the SMs 2.5 times (the
    best of 1..16 on the H100 for every Llama-3-8B linear: BENCHMARKS.md). Token tiles of 64 and 128 are
    compute- and L2-bound instead (x is re-read for every weight tile): 64 tokens take 128 weight rows (one x
    tile for twice the rows), and both split K only until the programs cover the SMs 1.4 times (H200, the
    Llama-3-8B linears, session 24: 8B o at 64 tokens 14.2 against 16.5 us, at 128 tokens 19.4 against 24.6)."""
    mp = max(16, triton.next_power_of_2(min(M, 128)))
    bn, bw = (128 if mp == 64 else 64), 16
    tiles = triton.cdiv(N, bn) * triton.cdiv(M, mp)
    steps = K // (bw * 8)
    cover = 1.4 if mp >= 64 else 2.5  # programs per SM the K split aims for
    split = 1
    while tiles * split < cover * sms and split * 2 <= min(steps // 2, 16):
        split *= 2
    return bn, bw, mp, split, 4, 1


def tc_gemv(x: torch.Tensor, tw: TcWeight, alpha: float = 1.0, out_dtype=torch.bfloat16, config=None,
            lut: bool | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """y (M, N) = alpha * x W^T (times W's row_alpha), x (M, K) bf16 (any M; best for M <= 128), W in the
    `tc_pack` layout.

    `config` = (BN, BW, MP, SPLIT_K, warps, PF): weight rows (64 x warp groups), 8-code words per k step,
    token tile, K splits, steps prefetched ahead (1 or 2)."""
    from .gemm import _sm_count

    M, K = x.shape
    N, Kw = tw.shape
    if Kw != K:
        raise MrgptqError(f"tc_gemv: x has K={K}, W has K={Kw}")
    bn, bw, mp, split, warps, pf = config or _pick(M, N, K, _sm_count(x.device))
    if K % (bw * 8) or bn % 64:
        raise MrgptqError(f"tc_gemv: K={K} must be a multiple of the k step {bw * 8} and BN={bn} of 64")
    if x.stride(-1) != 1:
        x = x.contiguous()
    if not INTERPRET and x.dtype != torch.bfloat16:
        x = x.to(torch.bfloat16)
    y = out if out is not None else torch.empty((M, N), dtype=out_dtype, device=x.device)
    grid = (triton.cdiv(N, bn), split, triton.cdiv(M, mp))
    ws, cnt = _workspace(x.device)
    if split > 1 and (grid[0] * grid[2] * split * bn * mp > ws.numel() or grid[0] * grid[2] > cnt.numel()):
        split, grid = 1, (grid[0], 1, grid[2])
    nv = tw.spec.scale_dtype == "e4m3"
    ra = tw.row_alpha
    _tc_gemv_kernel[grid](x, tw.words, tw.scales, y, ws, cnt, alpha * 2.0 ** tw.shift, y if ra is None else ra, M, N,
                          K, x.stride(0), y.stride(0), split, BN=bn, BW=bw, MP=mp,
                          PF=pf, SPLIT=split > 1, NV=nv, LUT=(not INTERPRET) if lut is None else lut,
                          ROW_ALPHA=ra is not None, num_warps=warps, num_stages=1, **LAUNCH)
    return y
