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
from . import LAUNCH
from .bf16x2 import ROUND_PAIR, column_order, encode_ptx
from .fp4 import (
    INTERPRET,
    RULE_IDS,
    bf16_round_trip,
    div_rn_by,
    e2m1_encode,
    e4m3_saturate,
    mx_exponent,
    pow2,
    ptx_arch,
    rcp_rn,
    split8,
    store_rounded,
)

_PTX_MX8 = tl.constexpr(encode_ptx(mx=True))
_PTX_NV8 = tl.constexpr(encode_ptx(mx=False))
_PTX_NV8_SM80 = tl.constexpr(encode_ptx(mx=False, arch=80))  # before Hopper (no min.u16x2)
_PTX_ROUND_PAIR = tl.constexpr(ROUND_PAIR)


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
    y = tl.reshape(y, (BLOCK_M, BLOCK_K))
    if INV_SQRT_B != 1.0:  # (1: folded into h, a power of two)
        y = y * INV_SQRT_B
    return y


RCP6 = tl.constexpr(float(torch.tensor(1 / 6, dtype=torch.float32)))  # 1/6 rounded to float32 (div_rn_by)


@triton.jit
def _nv_scales(amax, gs, rcp_gs, INTERP: tl.constexpr, ARCH: tl.constexpr):
    """NVFP4 group scales from group maxima (formats.scales): the stored E4M3 byte, the effective scale
    s / global, and the divisor for the codes with its correctly rounded reciprocal (1 where the scale is 0,
    whose codes are then set to 0)."""
    stored, s = e4m3_saturate(gs * div_rn_by(amax, 6.0, RCP6, INTERP), ARCH)
    eff = div_rn_by(s, gs, rcp_gs, INTERP)
    d = tl.where(eff > 0, eff, 1.0)
    return stored.to(tl.uint8), eff, d, rcp_rn(d, INTERP)


@triton.jit
def _abs_max3(y):
    """max |y| over the last three axes (a group spread over lanes and registers)."""
    return tl.max(tl.max(tl.max(tl.abs(y), axis=4), axis=3), axis=2)


@triton.jit
def _encode_runs(y, gs, rcp_gs, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, NV: tl.constexpr,
                 RULE: tl.constexpr, ARCH: tl.constexpr):
    """(code words (BLOCK_M, BLOCK_K / 8) int32, scale bytes (BLOCK_M, BLOCK_K / G) uint8) of a rotated tile y,
    float32, with the encode on bf16 pairs (`bf16x2.py`), 8 codes per call.

    y comes in the rotation MMA's output order: H's columns are permuted (`bf16x2.column_order`; B >= 32), so each
    thread holds runs of 8 consecutive rotated coordinates: 4 code bytes, one 32-bit word. Chunks of 32
    coordinates are the 4 lanes t of one row; a scale group is G/8 of those lanes (MXFP4 4, NVFP4 2). Shared by
    the Triton kernel and the Gluon one (`regquant.py`): no aranges, so it takes either's layouts."""
    G: tl.constexpr = 16 if NV else 32
    CN: tl.constexpr = BLOCK_K // 32
    NG: tl.constexpr = BLOCK_K // G
    TG: tl.constexpr = G // 8
    y = tl.permute(tl.reshape(y, (BLOCK_M, CN, 4, 4, 2)), (0, 1, 3, 2, 4))  # (row, chunk, t, j, c)
    yg = tl.reshape(y, (BLOCK_M, NG, TG, 4, 2))  # (row, group, lane in the group, j, c)
    if NV:  # v = y / scale in float32 (correctly rounded), rounded to odd bf16 in the PTX
        lo, hi = tl.inline_asm_elementwise(_PTX_ROUND_PAIR, "=f,=f,f,f", list(tl.split(yg)),
                                           dtype=(tl.float32, tl.float32), is_pure=True, pack=1)
        yg = tl.join(lo, hi)  # the runtime rotates into bf16
        stored, eff, d, rcp_d = _nv_scales(_abs_max3(yg), gs, rcp_gs, False, ARCH)
        v = div_rn_by(yg, d[:, :, None, None, None], rcp_d[:, :, None, None, None], False)
        v0, v1, v2, v3, v4, v5, v6, v7 = split8(tl.reshape(v, (BLOCK_M, CN, 4, 4, 2)))
        PTX: tl.constexpr = _PTX_NV8 if ARCH >= 90 else _PTX_NV8_SM80
        words = tl.inline_asm_elementwise(PTX, "=r,r,r,r,r,r,r,r,r", [v0, v1, v2, v3, v4, v5, v6, v7],
                                          dtype=tl.int32, is_pure=True, pack=1)
        words = tl.where(_per_word(eff > 0, yg, y), words, 0)  # a zero scale: its codes are 0 (formats.quantize)
    else:  # bf16 rounding is monotone: the max of the rounded values is the rounded max
        amax = bf16_round_trip(_abs_max3(yg), False)
        e = mx_exponent(amax, RULE)
        stored = (e + 127).to(tl.uint8)
        inv = _per_word(((127 - e) << 7) * 0x00010001, yg, y)  # 2^-e as bf16x2
        v0, v1, v2, v3, v4, v5, v6, v7 = split8(y)
        words = tl.inline_asm_elementwise(_PTX_MX8, "=r,r,r,r,r,r,r,r,r,r", [v0, v1, v2, v3, v4, v5, v6, v7, inv],
                                          dtype=tl.int32, is_pure=True, pack=1)
    return tl.reshape(words, (BLOCK_M, BLOCK_K // 8)), stored


@triton.jit
def _per_word(per_group, yg, y):
    """A group's value (row, group) in the layout of the words `split8(y)` makes: broadcast the way yg is laid
    out and taken apart as y is (Gluon converts no layouts implicitly; in Triton this is free as well)."""
    full = tl.reshape(tl.broadcast_to(per_group[:, :, None, None, None], yg.shape), y.shape)
    return split8(full)[0]


@triton.jit
def _runs(x, h, gs, rcp_gs, packed_ptr, scale_ptr, rows, rmask, kt, K, B: tl.constexpr, BLOCK_M: tl.constexpr,
          BLOCK_K: tl.constexpr, NV: tl.constexpr, RULE: tl.constexpr, INV_SQRT_B: tl.constexpr,
          ARCH: tl.constexpr):
    """Rotate and quantize one tile with `_encode_runs` (H's columns in `bf16x2.column_order`)."""
    G: tl.constexpr = 16 if NV else 32
    y = _block_rotate(x, h, B, BLOCK_M, BLOCK_K, INV_SQRT_B, False)
    words, stored = _encode_runs(y, gs, rcp_gs, BLOCK_M, BLOCK_K, NV, RULE, ARCH)
    wcols = kt * (BLOCK_K // 8) + tl.arange(0, BLOCK_K // 8)
    tl.store(packed_ptr.to(tl.pointer_type(tl.int32)) + rows[:, None] * (K // 8) + wcols[None, :], words,
             mask=rmask[:, None])
    scols = kt * (BLOCK_K // G) + tl.arange(0, BLOCK_K // G)
    tl.store(scale_ptr + rows[:, None] * (K // G) + scols[None, :], stored.to(scale_ptr.dtype.element_ty,
             bitcast=True), mask=rmask[:, None])


@triton.jit
def _first_unit(k_tiles, PROGRAMS):
    """This program's first (row block, K tile) of the row-major unit list, and the step to the unit PROGRAMS
    further on (rb + rb_step, kt + kt_step, before the wrap), so the walk divides once, not every unit."""
    rb = tl.program_id(0) // k_tiles
    kt = tl.program_id(0) - rb * k_tiles
    rb_step = PROGRAMS // k_tiles
    return rb, kt, rb_step, PROGRAMS - rb_step * k_tiles


@triton.jit
def _advance(rb, kt, rb_step, kt_step, k_tiles):
    """The unit PROGRAMS further on: the K tile wraps into the next row block as arithmetic, not a branch, so
    Triton still software-pipelines the loop. Shared by the Triton and the Gluon (`regquant.py`) kernels."""
    kt = kt + kt_step
    wrap = (kt >= k_tiles).to(tl.int32)
    return rb + rb_step + wrap, kt - wrap * k_tiles


@triton.jit(do_not_specialize=["PROGRAMS"])
def _rotate_quantize_kernel(
    x_ptr, h_ptr, packed_ptr, scale_ptr, gs_ptr, M, K, stride_xm, PROGRAMS,
    B: tl.constexpr, G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    ROTATE: tl.constexpr, NV: tl.constexpr, RULE: tl.constexpr, GDIV: tl.constexpr, INV_SQRT_B: tl.constexpr,
    F32_DOT: tl.constexpr, RUNS: tl.constexpr, ARCH: tl.constexpr,
):
    """Persistent: the (row block, K tile) units are one row-major list and program p takes units p, p +
    PROGRAMS, ... (H loaded once per program; a fixed number of programs per SM, so no partial last wave).

    The kernel is bound by instruction issue, not bytes (~23 instructions per element here): one product, one
    bf16 rounding, the group max, one multiply by 2^-e (MXFP4: an exact division) or a correctly rounded
    division (NVFP4), the bit-trick encode and half a pack. Rotated bf16 input on the GPU takes `_runs`
    instead, which encodes two elements per instruction (MXFP4 ~15 instructions per element)."""
    if ROTATE:
        h = _load_h(h_ptr, B)
    gs = 1.0
    rcp_gs = 1.0
    if NV:
        gs = tl.load(gs_ptr)
        rcp_gs = tl.math.div_rn(1.0, gs)
    k_tiles = K // BLOCK_K
    rb, kt, rb_step, kt_step = _first_unit(k_tiles, PROGRAMS)
    for _ in range(tl.program_id(0), tl.cdiv(M, BLOCK_M) * k_tiles, PROGRAMS):
        rows = rb * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = rows < M
        cols = kt * BLOCK_K + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=rmask[:, None], other=0.0)
        if RUNS:
            _runs(x, h, gs, rcp_gs, packed_ptr, scale_ptr, rows, rmask, kt, K, B, BLOCK_M, BLOCK_K, NV, RULE,
                  INV_SQRT_B, ARCH)
        else:
            if ROTATE:
                y = _block_rotate(x, h, B, BLOCK_M, BLOCK_K, INV_SQRT_B, F32_DOT)
                if x.dtype == tl.bfloat16:  # the runtime rotates into bf16, then quantizes
                    y = bf16_round_trip(y, F32_DOT)
                elif x.dtype == tl.float16:
                    y = y.to(tl.float16).to(tl.float32)
            else:
                y = x.to(tl.float32)
            yg = tl.reshape(y, (BLOCK_M, BLOCK_K // G, G))
            amax = tl.max(tl.abs(yg), axis=2)
            if NV:
                stored, eff, d, rcp_d = _nv_scales(amax, gs, rcp_gs, F32_DOT, ARCH)
                codes = e2m1_encode(div_rn_by(yg, d[:, :, None], rcp_d[:, :, None], F32_DOT))
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
        rb, kt = _advance(rb, kt, rb_step, kt_step, k_tiles)


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


def rotate(x: torch.Tensor, block: int, block_m: int | None = None) -> torch.Tensor:
    """x R for a power-of-two block Hadamard R (leading dims flattened), in x's dtype.

    Up to 128-wide blocks the tile has at least 64 rows of blocks, so the product is a wgmma as in
    `rotate_quantize`'s default tiles: tensor-core instructions of other shapes may round the fp32 sums
    differently (by a bf16 step)."""
    K = x.shape[-1]
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    block_k = max(block, 64)
    block_m = block_m or (max(32, 64 * block // block_k) if block <= 128 else 32)
    if K % block_k:
        raise MrgptqError(f"rotate: K={K} must be a multiple of {block_k}")
    _check_int32(x2, "rotate")
    y = torch.empty_like(x2)
    grid = (triton.cdiv(x2.shape[0], block_m), K // block_k)
    h, factor = _hadamard_pm1(block, x.device)
    _rotate_kernel[grid](x2, h, y, x2.shape[0], K, x2.stride(0), B=block, BLOCK_M=block_m, BLOCK_K=block_k,
                         INV_SQRT_B=factor, F32_DOT=INTERPRET, **LAUNCH)
    return y.reshape(x.shape)


_H_CACHE: dict = {}


def _check_int32(x2: torch.Tensor, name: str):
    """The kernels address x with int32 offsets: refuse what would overflow them (QuantLinear splits rows first)."""
    from . import MAX_ELEMENTS

    if x2.shape[0] * max(x2.stride(0), x2.shape[1]) > MAX_ELEMENTS:
        raise MrgptqError(f"{name}: {x2.shape[0]} x {x2.shape[1]} elements are past the kernels' int32 offsets; "
                          "pass fewer rows at a time")


def _hadamard_pm1(b: int, device, runs: bool = False):
    """(h, the factor left to multiply by) for x R = (x h) * factor, R the block-b Hadamard / sqrt(b).

    h is the +-1 Sylvester block, times 1/sqrt(b) where that is a power of two (b = 16, 64, 256: exact in any
    float, and a multiply per element less); `runs`: columns in `bf16x2.column_order`, and a 16-wide block as
    diag(H_16, H_16), so that each thread of the rotation's MMA still holds runs of 8 coordinates (`_runs`)."""
    key = (b, str(device), runs)
    if key not in _H_CACHE:
        h = sylvester(b).to(torch.float32)
        factor = float(b) ** -0.5
        if b.bit_length() % 2:  # b = 4^j: 1/sqrt(b) = 2^-j
            h, factor = h * factor, 1.0
        if runs:
            h = torch.block_diag(*[h] * max(1, 32 // b))
            h = h[:, column_order(h.shape[0])]
        _H_CACHE[key] = h.to(device).contiguous(), factor
    return _H_CACHE[key]


def _pick(M: int, K: int, min_k: int, sms: int, runs_block: int | None = None):
    """(BLOCK_M, BLOCK_K, PER_SM, warps): 32 x 128 tiles, 8 programs per SM: within 2-4% of the best of the
    H200 sweeps for both formats at M=4096, K 4096 and 14336 (BENCHMARKS.md), with Triton's default pipeline
    (two x tiles in flight). A deeper one (stages 4) gained NVFP4 2-4%, but as the default it failed the GPU's
    bit-exact test once (NVFP4 b16) and then passed the same data four times: unexplained, so not the default.
    The best tile, 16 x 256, sums the rotation's products on the tensor cores in another order: an NVFP4 b128
    value then landed a bf16 step away from `rotate`'s, against which the GPU test checks codes bit-exact;
    32 x 128 agrees there.
    `runs_block`: the rotation's width where `_runs` can run; it needs a rotation tile of >= 64 rows (a
    wgmma), so blocks of 128 get 64-row tiles, 2 programs per SM (shared memory; the best of the sweep)."""
    bk = 128 if K % 128 == 0 and min_k <= 128 else min_k
    if runs_block and 32 * bk // runs_block < 64:
        return 64 * runs_block // bk, bk, 2, 4
    return 32, bk, 8, 4


def rotate_quantize(x: torch.Tensor, spec: FormatSpec, block: int | None, rule: str = "spec",
                    global_scale: torch.Tensor | None = None, out=None, config=None, runs: bool | None = None,
                    kernel: str | None = None):
    """(packed codes (M, K/2) uint8, scales (M, K/g)) of Q(x R), R the block-`block` Hadamard (None: no R).

    Leading dims of x are flattened. NVFP4 needs its static per-tensor `global_scale`.
    `config` = (BLOCK_M, BLOCK_K, PER_SM, warps[, stages[, maxnreg]]) overrides the heuristic (benchmarks sweep
    it): tile, programs per SM of the persistent grid (at most as many as are resident: `occupancy.py`), the
    software pipeline's depth (x tiles in flight + 1; the Gluon kernel: x tiles loaded ahead, 1 or 2) and a
    register cap (None: the defaults).
    `runs=False` turns off the bf16x2 encode (`_runs`), which is otherwise used where it applies: rotated bf16
    input on the GPU, rotation blocks up to 128. There, on Hopper, 64-wide blocks run the Gluon kernel
    (`regquant.py`: x straight into the rotation's registers); `kernel="triton"` keeps the Triton kernel,
    `kernel="gluon"` asks for the Gluon one at any block (an error where it cannot run).
    """
    from ..formats.scales import FOUR_THIRDS_GLOBAL
    from . import has_gluon
    from .gemm import _sm_count
    from .occupancy import persistent_programs

    if not spec.is_fp4:
        raise MrgptqError(f"rotate_quantize: {spec.name} is not an FP4 format")
    if kernel not in (None, "gluon", "triton"):
        raise MrgptqError(f"rotate_quantize: kernel must be 'gluon', 'triton' or None (the default), not {kernel!r}")
    K = x.shape[-1]
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M = x2.shape[0]
    _check_int32(x2, "rotate_quantize")
    g = spec.group_size
    b = block or g
    if block is not None and (block & (block - 1) or block < 16 or block > 256):
        raise MrgptqError(f"rotate_quantize: rotation block {block} must be a power of two in 16..256")
    min_k = max(b, g, 64)
    if K % min_k:
        raise MrgptqError(f"rotate_quantize: K={K} must be a multiple of {min_k}")
    nv = spec.scale_dtype == "e4m3"
    gdiv = FOUR_THIRDS_GLOBAL if (not nv and rule == "four-thirds") else 1.0
    # the bf16x2 encode (`_runs`) is inline PTX (GPU only), for bf16 input, rotated, with MXFP4's plain
    # power-of-two scales or NVFP4; 256-wide blocks stay out (H and a 64-row tile overflow shared memory)
    runs_ok = runs is not False and not INTERPRET and gdiv == 1.0 and x2.dtype == torch.bfloat16 \
        and block is not None and block <= 128
    sms = _sm_count(x.device)
    pair_width = max(b, 32)  # the rotation's width on the pair path (16-wide blocks run in pairs: _hadamard_pm1)
    bm, bk, per_sm, warps, *opts = config or _pick(M, K, min_k, sms, pair_width if runs_ok else None)
    if bk % min_k or K % bk:
        raise MrgptqError(f"rotate_quantize: K tile {bk} must divide K={K} and be a multiple of {min_k}")
    if nv and global_scale is None:
        raise MrgptqError("rotate_quantize: NVFP4 needs the static activation global scale")
    sdt = torch.float8_e4m3fn if nv else torch.uint8
    if out is None:
        packed = torch.empty((M, K // 2), dtype=torch.uint8, device=x.device)
        scales = torch.empty((M, K // g), dtype=sdt, device=x.device)
    else:
        packed, scales = out
    runs = runs_ok and bm * bk // pair_width >= 64 and bk % 32 == 0 and packed.data_ptr() % 4 == 0
    # (a rotation tile of >= 64 rows is a wgmma, whose output columns column_order assumes)
    h, factor = _hadamard_pm1(b, x.device, runs) if block is not None else (packed, 1.0)  # (dummy pointer)
    gs = global_scale.reshape(1).float().to(x.device) if nv else packed
    # the Gluon kernel by default only where it measured faster: 64-wide rotations (H200: 9-10% less time); at 32
    # they tie, at 128 its register-held x tile leaves 3 programs per SM (BENCHMARKS.md, session 15)
    gluon = False
    if runs and kernel != "triton" and has_gluon():  # (older Tritons have no Gluon: the Triton kernel only)
        from . import regquant
        from .wsgemv import gluon_ok

        gluon = gluon_ok(x.device) and regquant.fits(bm, bk, pair_width, warps) \
            and (kernel == "gluon" or pair_width == 64)
    if kernel == "gluon" and not gluon:
        raise MrgptqError("rotate_quantize: the Gluon kernel needs a Triton that ships Gluon, a Hopper GPU, rotated "
                          "bf16 input, blocks up to 128 without the four-thirds rule and a tile of whole 64-row wgmmas "
                          f"(got {bm} x {bk})")
    if gluon:
        regquant.launch(x2, h, factor, packed, scales, gs, nv, RULE_IDS.get(rule, 0), bm, bk, per_sm, sms, *opts)
        return packed.reshape(*x.shape[:-1], K // 2), scales.reshape(*x.shape[:-1], K // g)
    meta = dict(B=h.shape[0] if block is not None else b, G=g, BLOCK_M=bm, BLOCK_K=bk, ROTATE=block is not None,
                NV=nv, RULE=RULE_IDS.get(rule, 0), GDIV=gdiv, INV_SQRT_B=factor, F32_DOT=INTERPRET, RUNS=runs,
                ARCH=ptx_arch(x.device), num_warps=warps, **LAUNCH,
                **{k: v for k, v in zip(("num_stages", "maxnreg"), opts) if v})
    args = (x2, h, packed, scales.view(torch.uint8), gs, M, K, x2.stride(0))  # (E4M3 as bytes: fp8 from sm_89)
    programs = persistent_programs(_rotate_quantize_kernel, args, meta, x.device, triton.cdiv(M, bm) * (K // bk),
                                   per_sm, sms)
    _rotate_quantize_kernel[(programs,)](*args, programs, **meta)
    return packed.reshape(*x.shape[:-1], K // 2), scales.reshape(*x.shape[:-1], K // g)
