"""Triton kernels against the formats/ reference, with poisoned outputs so an unwritten element fails.

On a CPU machine they run in Triton's interpreter (TRITON_INTERPRET=1, set in conftest.py; small shapes); with
a GPU, on the GPU at Llama-sized shapes. Quantize: codes and scales bit-exact. GEMMs: within bf16 rounding of the output.
"""
import os

import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from conftest import student_t

from mrgptq import formats
from mrgptq.kernels.fp4 import e4m3_saturate, e4m3_value, ptx_arch, rcp_rn
from mrgptq.kernels.gemm import fp4_matmul
from mrgptq.kernels.gemv import e2m1x8, fp4_gemv
from mrgptq.kernels.quantize import rotate, rotate_quantize
from mrgptq.kernels.tcgemv import tc_gemv, tc_pack
from mrgptq.transforms import Rotation

GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"
K_ACT = 4096 if GPU else 256
POISON = 0xAB


# On a GPU also the code paths older GPUs get, run on this one (`fp4.ptx_arch`): Ampere's (no fp8 types, no
# Hopper-only PTX) and Ada's (fp8, no Hopper-only PTX). That each builds for its own GPU is tests/test_targets.py's.
ARCHES = [None, 80, 89] if GPU else [None]


@pytest.fixture(params=ARCHES, ids=lambda a: f"sm{a}" if a else "native")
def arch(request, monkeypatch):
    from mrgptq import kernels

    if request.param:
        monkeypatch.setenv("MRGPTQ_PTX_ARCH", str(request.param))
    kernels.ws_enabled.cache_clear()  # (Hopper's Gluon kernels are off below sm_90)
    yield request.param
    kernels.ws_enabled.cache_clear()


def poisoned(shape, dtype):
    t = torch.empty(shape, dtype=torch.uint8 if dtype in (torch.uint8, torch.float8_e4m3fn) else dtype, device=DEV)
    t.fill_(POISON if t.dtype == torch.uint8 else float("nan"))
    return t.view(dtype)


CASES = [("mxfp4", "spec", None), ("mxfp4", "spec", 32), ("mxfp4", "rounded", 64), ("mxfp4", "four-thirds", 128),
         ("mxfp4", "ceil", 16), ("nvfp4", "spec", 16), ("nvfp4", "spec", 128), ("nvfp4", "spec", None)]


@pytest.mark.parametrize("fmt,rule,block", CASES)
def test_rotate_quantize_is_bit_exact(fmt, rule, block, arch):
    spec = formats.get_spec(fmt)
    M = 300 if GPU else 37  # not a multiple of the row tile
    g = torch.Generator().manual_seed(CASES.index((fmt, rule, block)))
    x = student_t((M, K_ACT), seed=CASES.index((fmt, rule, block))) * 0.3
    x[M // 2:] *= torch.exp2(torch.randint(-20, 20, (M - M // 2, 1), generator=g)).float()  # scales over 2^40
    x[::9] = 0.0  # zero groups (NVFP4: zero scales)
    x = x.to(torch.bfloat16).to(DEV)
    if block is None:
        xr = x.float()
    elif GPU:  # the tensor cores' fp32 sums may differ from fwht's by a bf16 step (test_rotate_matches_fwht):
        xr = rotate(x, block).float()  # quantization is checked on the kernel's own rotation (same dot)
    else:
        xr = Rotation(K_ACT, "hadamard", block).apply(x).float()  # rotated into bf16
    gs = formats.nv_global_scale(xr).reshape(1) if fmt == "nvfp4" else None
    ref = formats.quantize(xr, spec, scale_rule=rule, global_scale=gs)
    sdt = torch.float8_e4m3fn if fmt == "nvfp4" else torch.uint8
    out = (poisoned((M, K_ACT // 2), torch.uint8), poisoned((M, K_ACT // spec.group_size), sdt))
    packed, scales = rotate_quantize(x, spec, block, rule, gs, out=out)
    assert torch.equal(scales.view(torch.uint8), ref.scales.view(torch.uint8))
    assert torch.equal(formats.unpack(packed), ref.codes)


@pytest.mark.parametrize("fmt,block,bk", [("mxfp4", 32, 128), ("mxfp4", 64, 64), ("nvfp4", 16, 128)])
def test_persistent_grid_walks_every_unit(fmt, block, bk):
    """Fewer programs than (row block, K tile) units: each program walks several, its position carried from unit
    to unit (K tile wrapping into the next row blocks); the codes equal one unit per program, bit for bit."""
    spec = formats.get_spec(fmt)
    M, K = (300, 4096) if GPU else (37, 384)
    x = (student_t((M, K), seed=block + bk) * 0.3).to(torch.bfloat16).to(DEV)
    gs = formats.nv_global_scale(rotate(x, block).float()).reshape(1) if fmt == "nvfp4" else None
    sdt = torch.float8_e4m3fn if fmt == "nvfp4" else torch.uint8
    outs = []
    for per_sm in (1, 64):  # 1: fewer programs than units (4 on CPU, the SM count on a GPU)
        out = (poisoned((M, K // 2), torch.uint8), poisoned((M, K // spec.group_size), sdt))
        outs.append(rotate_quantize(x, spec, block, "spec", gs, out=out, config=(32 if GPU else 16, bk, per_sm, 4)))
    assert torch.equal(outs[0][1].view(torch.uint8), outs[1][1].view(torch.uint8))
    assert torch.equal(outs[0][0], outs[1][0])
    if not GPU:  # the interpreter rotates as fwht does: the codes are formats.quantize's
        ref = formats.quantize(Rotation(K, "hadamard", block).apply(x).float(), spec, global_scale=gs)
        assert torch.equal(formats.unpack(outs[0][0]), ref.codes)


@pytest.mark.skipif(not GPU, reason="the bf16x2 encode is inline PTX")
@pytest.mark.parametrize("fmt,rule,block", [("mxfp4", "spec", 16), ("mxfp4", "spec", 32), ("mxfp4", "rounded", 64),
                                            ("mxfp4", "ceil", 128), ("nvfp4", "spec", 16), ("nvfp4", "spec", 64),
                                            ("nvfp4", "spec", 128)])
def test_bf16x2_encode_matches_the_float32_encode(fmt, rule, block):
    """The kernel's encode on bf16 pairs with H's columns permuted (runs=True) against its float32 encode on the
    same tile: values on E2M1 ties and past the clamp, scales over 2^40, all-zero rows (zero NVFP4 scales)."""
    from mrgptq.kernels.gemm import _sm_count
    from mrgptq.kernels.quantize import _pick

    spec = formats.get_spec(fmt)
    g = torch.Generator().manual_seed(block)
    x = student_t((513, K_ACT), seed=block) * torch.exp2(torch.randint(-20, 20, (513, 1), generator=g)).float()
    x[::50] = 0.0
    x = x.to(torch.bfloat16).to(DEV)
    gs = formats.nv_global_scale(rotate(x, block).float()).reshape(1) if fmt == "nvfp4" else None
    cfg = _pick(513, K_ACT, max(block, 64), _sm_count(x.device), max(block, 32))  # one tile: the same sums
    sdt = torch.float8_e4m3fn if fmt == "nvfp4" else torch.uint8
    outs = []
    for runs in (True, False):
        out = (poisoned((513, K_ACT // 2), torch.uint8), poisoned((513, K_ACT // spec.group_size), sdt))
        outs.append(rotate_quantize(x, spec, block, rule, gs, out=out, config=cfg, runs=runs))
    assert torch.equal(outs[0][1].view(torch.uint8), outs[1][1].view(torch.uint8))
    assert torch.equal(outs[0][0], outs[1][0])


@pytest.mark.skipif(not (GPU and torch.cuda.get_device_capability() == (9, 0)), reason="Gluon kernel: Hopper")
@pytest.mark.parametrize("fmt,rule,block", [("mxfp4", "spec", 16), ("mxfp4", "spec", 32), ("mxfp4", "rounded", 64),
                                            ("mxfp4", "ceil", 128), ("nvfp4", "spec", 16), ("nvfp4", "spec", 32),
                                            ("nvfp4", "spec", 64), ("nvfp4", "spec", 128)])
def test_gluon_rotate_quantize_is_the_triton_kernel_bit_for_bit(fmt, rule, block):
    """The register-operand kernel (`regquant.py`: x loaded into the wgmma's A fragment, H's rows permuted) against
    the Triton kernel with the same encode: values spanning 2^40, all-zero rows, a partial last row block, the
    default grid and one of a single program per SM walking many units."""
    spec = formats.get_spec(fmt)
    g = torch.Generator().manual_seed(7 * block)
    x = student_t((333, K_ACT), seed=block + 1) * torch.exp2(torch.randint(-20, 20, (333, 1), generator=g)).float()
    x[::40] = 0.0
    x = x.to(torch.bfloat16).to(DEV)
    gs = formats.nv_global_scale(rotate(x, block).float()).reshape(1) if fmt == "nvfp4" else None
    sdt = torch.float8_e4m3fn if fmt == "nvfp4" else torch.uint8
    ref = rotate_quantize(x, spec, block, rule, gs, kernel="triton")
    for config in (None, (64 if block == 128 else 32, 128, 1, 4)):
        out = (poisoned((333, K_ACT // 2), torch.uint8), poisoned((333, K_ACT // spec.group_size), sdt))
        packed, scales = rotate_quantize(x, spec, block, rule, gs, out=out, config=config, kernel="gluon")
        assert torch.equal(scales.view(torch.uint8), ref[1].view(torch.uint8))
        assert torch.equal(packed, ref[0])


def test_gluon_kernels_run_only_on_the_tritons_they_are_written_for(monkeypatch):
    """Gluon's API changes between Triton releases (3.9 removed async_copy_global_to_shared and thread_barrier):
    the Gluon kernels run on the GLUON_TRITON releases they were checked on (3.6, 3.9), the Triton-language
    kernels elsewhere; MRGPTQ_GLUON forces either way."""
    import importlib.util

    from mrgptq import kernels

    if importlib.util.find_spec("triton.experimental.gluon") is None:
        pytest.skip("this Triton ships no Gluon")
    monkeypatch.delenv("MRGPTQ_GLUON", raising=False)
    for version, on in (("3.6.0", True), ("3.6.1+git0123", True), ("3.5.1", False), ("3.7.0", False),
                        ("3.9.0", True), ("3.10.0", False)):
        monkeypatch.setattr(triton, "__version__", version)
        kernels.has_gluon.cache_clear()
        assert kernels.has_gluon() == on, version
    for force, on in (("1", True), ("0", False)):
        monkeypatch.setenv("MRGPTQ_GLUON", force)
        kernels.has_gluon.cache_clear()
        assert kernels.has_gluon() == on
    monkeypatch.undo()
    kernels.has_gluon.cache_clear()


def test_kernels_need_an_ampere_or_newer_gpu(monkeypatch):
    """QuantLinear and GPTQ use the kernels from sm_80 on (bf16 tensor cores) and their PyTorch paths before it;
    the arch is the GPU's, or the one Triton is told to build for."""
    from mrgptq import kernels
    from mrgptq.kernels import fp4

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(fp4, "INTERPRET", False)  # (the interpreter runs no PTX: arch 0 whatever is set)
    for var, value, on in (("MRGPTQ_PTX_ARCH", "75", False), ("MRGPTQ_PTX_ARCH", "80", True),
                           ("TRITON_OVERRIDE_ARCH", "sm70", False), ("TRITON_OVERRIDE_ARCH", "sm90a", True)):
        monkeypatch.delenv("MRGPTQ_PTX_ARCH", raising=False)
        monkeypatch.setenv(var, value)
        assert kernels.available() == on, (var, value)
        assert ptx_arch(torch.device("cuda")) == int(value.strip("sma"))


@pytest.mark.parametrize("width", [32, 64, 128])
def test_gluon_fragment_order_undoes_the_kernels_load_permute(width):
    """The Gluon kernel loads x in 4-coordinate runs and permutes each 16-wide step (t, h, b) -> (h, t, b) into
    the wgmma fragment's k order; launch() permutes H's rows by `fragment_order`. Those must cancel: x H is
    unchanged. The same reshape/permute in torch (Gluon's are the same logical operations), on the CPU."""
    pytest.importorskip("triton.experimental.gluon")
    from mrgptq.kernels.regquant import fragment_order

    x = student_t((64, width), seed=width)
    h = student_t((width, width), seed=width + 1)
    xa = x.reshape(64, width // 16, 4, 2, 2).permute(0, 1, 3, 2, 4).reshape(64, width)
    assert sorted(fragment_order(width)) == list(range(width))
    assert torch.equal(xa, x[:, fragment_order(width)])
    assert torch.allclose(xa @ h[fragment_order(width)], x @ h, rtol=1e-5, atol=1e-4)


def test_gluon_kernel_refuses_where_it_cannot_run():
    """kernel="gluon" where it cannot run (here float32 input; also the CPU, other GPUs) is one clear error."""
    from mrgptq.errors import MrgptqError

    x = student_t((64, K_ACT), seed=3).to(DEV)
    with pytest.raises(MrgptqError, match="Gluon kernel needs a Triton that ships Gluon, a Hopper GPU, rotated bf16"):
        rotate_quantize(x, formats.get_spec("mxfp4"), 32, kernel="gluon")
    with pytest.raises(MrgptqError, match="kernel must be 'gluon', 'triton' or None"):
        rotate_quantize(x, formats.get_spec("mxfp4"), 32, kernel="cuda")


def test_rotate_quantize_runs_on_a_triton_without_gluon(monkeypatch):
    """`triton>=3.2` is allowed and Gluon is newer: without it rotate_quantize runs the Triton kernel (the Gluon
    modules are never imported) and refuses only an explicit kernel="gluon"."""
    import sys

    from mrgptq import kernels
    from mrgptq.errors import MrgptqError

    monkeypatch.setattr(kernels, "has_gluon", lambda: False)
    monkeypatch.setitem(sys.modules, "mrgptq.kernels.wsgemv", None)  # importing it now fails
    spec = formats.get_spec("mxfp4")
    x = student_t((40, K_ACT), seed=4).to(torch.bfloat16).to(DEV)
    packed, scales = rotate_quantize(x, spec, 64)
    ref = formats.quantize(rotate(x, 64).float(), spec)
    assert torch.equal(scales, ref.scales) and torch.equal(formats.unpack(packed), ref.codes)
    with pytest.raises(MrgptqError, match="needs a Triton that ships Gluon"):
        rotate_quantize(x, spec, 64, kernel="gluon")


@pytest.mark.parametrize("block", [16, 32, 128])
def test_rotate_matches_fwht(block):
    x = student_t((33, K_ACT), seed=block).to(torch.bfloat16).to(DEV)
    ref = Rotation(K_ACT, "hadamard", block).apply(x)
    y = rotate(x, block)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    if GPU:  # tensor-core fp32 sums may round in another order: at most one bf16 step apart
        bad = ((y.float() - ref.float()).abs() > ref.float().abs() * 2**-7 + 1e-30).nonzero()[:5].tolist()
        assert not bad, [(i, j, y[i, j].item(), ref[i, j].item()) for i, j in bad]
    else:
        assert torch.equal(y, ref)


def _weights(fmt, N, K, seed):
    W = student_t((N, K), seed=seed) * 0.02
    q = formats.quantize(W, fmt)
    return q, formats.pack(q.codes).to(DEV), q.scales.to(DEV), formats.dequantize(q).to(DEV)


def _alpha(q):
    return 1.0 if q.global_scale is None else 1.0 / float(q.global_scale)


def _close(y, ref):
    """bf16 output rounding: per-element half-ulp of bf16 plus fp32 accumulation-order noise."""
    err = (y.float() - ref).abs()
    assert torch.isfinite(y).all(), "unwritten (poisoned) or overflowed outputs"
    assert (err <= ref.abs() * 2**-8 + ref.abs().max() * 1e-4).all(), f"max err {err.max().item()}"


SHAPES = [(6144, 4096), (4096, 14336)] if GPU else [(96, 512), (64, 256)]


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("M", [1, 5, 16, 70])
def test_w4a16_gemm(fmt, M):
    for i, (N, K) in enumerate(SHAPES):
        q, wp, ws, wdq = _weights(fmt, N, K, seed=i)
        x = student_t((M, K), seed=M).to(torch.bfloat16).to(DEV)
        ref = x.float() @ wdq.T
        y = fp4_matmul(x, wp, ws, q.spec, _alpha(q), out=poisoned((M, N), torch.bfloat16))
        _close(y, ref)
        if M == 1:  # the single-pass path against the split-K one (fp32 atomics)
            y2 = fp4_matmul(x, wp, ws, q.spec, _alpha(q), config=(16, 64, 64, 1, 4, 2))
            _close(y2, ref)


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("M", [1, 3])
def test_w4a16_gemv(fmt, M, arch):
    """The decode GEMV (CUDA cores, byte-permute decode of 8-code words, one scale per group sum), heuristic
    tiles and split-K with fp32 atomics; on the GPU also the plain-integer decode."""
    for i, (N, K) in enumerate(SHAPES):
        q, wp, ws, wdq = _weights(fmt, N, K, seed=10 + i)
        x = student_t((M, K), seed=M + 7).to(torch.bfloat16).to(DEV)
        ref = x.float() @ wdq.T
        _close(fp4_gemv(x, wp, ws, q.spec, _alpha(q), out=poisoned((M, N), torch.bfloat16)), ref)
        _close(fp4_gemv(x, wp, ws, q.spec, _alpha(q), config=(8, 16, 2, 4, 1)), ref)
        _close(fp4_gemv(x, wp, ws, q.spec, _alpha(q), config=(16, 32, 1, 4, 2), lut=False), ref)


TC_SHAPES = [(6144, 4096), (4096, 14336), (100, 512)] if GPU else [(100, 256), (64, 384)]


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("M", [1, 5, 20, 40, 70])
def test_w4a16_tensor_core_decode_gemm(fmt, M):
    """Weights re-laid for the wgmma A fragment, decoded by shifts and one bf16x2 scale multiply: heuristic
    tiles (128 weight rows for a 64-token tile: M = 40), forced K splits (the last program sums the partials)
    and 128-wide k steps; the interpreter runs the plain-integer decode. Partial tiles (N = 100) and padded token
    columns are covered."""
    for i, (N, K) in enumerate(TC_SHAPES):
        q, wp, ws, wdq = _weights(fmt, N, K, seed=20 + i)
        tw = tc_pack(wp, ws, q.spec)
        x = student_t((M, K), seed=M + 3).to(torch.bfloat16).to(DEV)
        ref = x.float() @ wdq.T
        mp = max(16, 1 << (M - 1).bit_length())
        for cfg in (None, (64, 16, mp, 3, 4, 2), (128, 16, mp, 1, 4, 1), (128, 32, mp, 2, 4, 1)):
            if cfg and K % (cfg[1] * 8):
                continue
            _close(tc_gemv(x, tw, _alpha(q), config=cfg, out=poisoned((M, N), torch.bfloat16)), ref)


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_row_alpha_scales_each_row_as_its_own_launch_would(fmt):
    """TcWeight.row_alpha (siblings with per-tensor scales of their own) multiplies each output row by its
    factor bit for bit as a launch with that scalar alpha does: tc_gemv and, on Hopper, the warp-specialized
    and row-split kernels."""
    N, K = TC_SHAPES[-1]
    q, wp, ws, _ = _weights(fmt, N, K, seed=60)
    tw = tc_pack(wp, ws, q.spec)
    x = student_t((5, K), seed=61).to(torch.bfloat16).to(DEV)
    factors, edges = (0.37, 1.0, 2.5e-3), (0, 40, 64, N)  # three members' 1 / g_w and their rows
    ra = torch.cat([torch.full((b - a,), f, dtype=torch.float32) for f, a, b in zip(factors, edges, edges[1:])])
    fns = [tc_gemv]
    if _ws_ok():
        from mrgptq.kernels.midgemm import mid_gemm
        from mrgptq.kernels.rowgemv import row_gemv
        from mrgptq.kernels.wsgemv import ws_gemv

        fns += [ws_gemv, row_gemv, mid_gemm]
    for fn in fns:
        tw.row_alpha = None
        plain = [fn(x, tw, f) for f in factors]
        tw.row_alpha = ra.to(DEV)
        y = fn(x, tw, 1.0, out=poisoned((5, N), torch.bfloat16))
        for p, a, b in zip(plain, edges, edges[1:]):
            assert torch.equal(y[:, a:b], p[:, a:b]), (fn.__name__, a, b)


def _ws_ok():
    from mrgptq.kernels import ws_enabled

    return GPU and ws_enabled(torch.device("cuda"))


@pytest.mark.skipif(not _ws_ok(), reason="the warp-specialized decode GEMM needs a Hopper GPU and Triton's Gluon")
@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("M", [1, 5, 16, 27])
def test_warp_specialized_decode_gemm_is_tc_gemv_bit_for_bit(fmt, M):
    """Same decode, same K splits, same partial-sum order: the producer/consumer kernel equals tc_gemv exactly
    (heuristic K splits and a forced split, one or two bricks a stage); stream-K grids (programs that end inside
    tiles) stay within bf16 rounding of the reference and give the same bits twice."""
    from mrgptq.kernels.wsgemv import _pick, ws_gemv

    for i, (N, K) in enumerate(TC_SHAPES):
        q, wp, ws, wdq = _weights(fmt, N, K, seed=50 + i)
        tw = tc_pack(wp, ws, q.spec)
        x = student_t((M, K), seed=M + 7).to(torch.bfloat16).to(DEV)
        ref = x.float() @ wdq.T
        split = _pick(M, N, K, torch.cuda.get_device_properties(0).multi_processor_count)[0]
        for kw in ({}, {"split": 2, "bricks": 2}, {"split": 4, "bricks": 1, "stages": 2}):
            s = kw.get("split", split)
            if (K // 128) % (s * kw.get("bricks", 1)):
                continue
            y = ws_gemv(x, tw, _alpha(q), out=poisoned((M, N), torch.bfloat16), **kw)
            want = tc_gemv(x, tw, _alpha(q), config=(64, 16, 16 if M <= 16 else 32, s, 4, 1))
            assert torch.equal(y, want), (N, K, M, kw)
        for programs in (7, 133):
            y = ws_gemv(x, tw, _alpha(q), programs=programs, out=poisoned((M, N), torch.bfloat16))
            _close(y, ref)
            assert torch.equal(y, ws_gemv(x, tw, _alpha(q), programs=programs))


@pytest.mark.skipif(not _ws_ok(), reason="the shared-x decode GEMM needs a Hopper GPU and Triton's Gluon")
@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("M", [17, 40, 64, 72, 100, 128])
def test_shared_x_decode_gemm(fmt, M):
    """One x tile fed by TMA to 1, 2 or 4 warpgroups (64-256 weight rows; 64 also as two ping-pong warpgroups
    taking turns): within bf16 rounding of the dequantized reference for the heuristic, forced K splits, ring
    depths and stream-K grids (programs ending inside tiles), on partial tiles (N = 100) and token tiles whose rows
    past M no box reaches (x's rows in 64/32/16-row boxes: M = 17, 40, 72, 100 take 32, 32+16, 64+16, 64+32+16)
    and hold NaN left by a full tile run just before; every output written, the same bits twice; the pick's own
    stream-K grid where 64-row tiles overflow the SMs; more rows than one token tile are refused."""
    from mrgptq.errors import MrgptqError
    from mrgptq.kernels.midgemm import _pick, mid_gemm

    for i, (N, K) in enumerate(TC_SHAPES):
        q, wp, ws, wdq = _weights(fmt, N, K, seed=80 + i)
        tw = tc_pack(wp, ws, q.spec)
        x = student_t((M, K), seed=M + 13).to(torch.bfloat16).to(DEV)
        ref = x.float() @ wdq.T
        stale = torch.full((max(16, 1 << (M - 1).bit_length()), K), float("nan"), dtype=torch.bfloat16, device=DEV)
        for kw in ({}, {"warpgroups": 1, "split": 2}, {"warpgroups": 2, "stages": 2}, {"warpgroups": 4, "split": 4},
                   {"warpgroups": 2, "programs": 7}, {"warpgroups": 1, "programs": 133, "stages": 4},
                   {"warpgroups": 1, "pingpong": True}, {"warpgroups": 1, "pingpong": True, "split": 2},
                   {"warpgroups": 1, "pingpong": True, "programs": 7, "stages": 2}):
            if (K // 128) < kw.get("split", 1):
                continue
            mid_gemm(stale, tw, **kw)  # NaN in every x row of the ring
            y = mid_gemm(x, tw, _alpha(q), out=poisoned((M, N), torch.bfloat16), **kw)
            _close(y, ref)
            assert torch.equal(y, mid_gemm(x, tw, _alpha(q), **kw)), (N, K, M, kw)
    with pytest.raises(MrgptqError, match="M <= 128"):
        mid_gemm(student_t((129, K), seed=1).to(torch.bfloat16).to(DEV), tw)
    with pytest.raises(MrgptqError, match="even ring"):
        mid_gemm(x, tw, warpgroups=1, stages=3, pingpong=True)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    N, K = 64 * (sms + 3) - 28, 2560  # 3 tiles (the last partial) past the SMs: the pick's own stream-K grid
    assert _pick(M, N, K, sms)[4] == sms
    q, wp, ws, wdq = _weights(fmt, N, K, seed=90)
    x = student_t((M, K), seed=M + 14).to(torch.bfloat16).to(DEV)
    y = mid_gemm(x, tc_pack(wp, ws, q.spec), _alpha(q), out=poisoned((M, N), torch.bfloat16))
    _close(y, x.float() @ wdq.T)


def test_shared_x_pick_and_rows_served():
    """What QuantLinear hands the shared-x decode GEMM, and how it splits the work (pure arithmetic, so checked on
    CPU): 33-128 rows at any Llama shape, 17-32 only where x is shared (W > 1), never 1-16 or 129+, never a K
    that is not a whole number of 128-wide steps; a power-of-2 K split that leaves each program at least 2 steps
    and one program per SM at most, x shared only at up to 64 tokens or where 128-row tiles fill the SMs 1.5
    times (at up to 32 tokens on long K, by four warpgroups only where each program keeps 32 steps), two
    ping-pong warpgroups on an even ring wherever it is not shared above 32 tokens, and one program per SM
    sharing the k steps out (stream-K) exactly where the tiles overflow the SMs and the last wave would idle SMs
    for longer than stream-K's fix-ups take."""
    import importlib.util

    if importlib.util.find_spec("triton.experimental.gluon") is None:
        pytest.skip("this Triton ships no Gluon")
    from mrgptq.kernels.midgemm import SK_FIXUP, _pick, serves

    shapes = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (10240, 8192), (57344, 8192), (100, 512)]
    for sms in (132, 114, 78):
        for N, K in shapes:
            for M in range(1, 160):
                W, split, stages, pp, programs = _pick(M, N, K, sms)
                tiles, steps = -(-N // (64 * W)), K // 128
                assert W in (1, 2, 4) and stages >= 2 and split & (split - 1) == 0, (M, N, K, sms)
                idle = (sms - tiles % sms) % sms if tiles > sms else 0  # empty slots in the last wave
                assert programs == (sms if idle * steps > SK_FIXUP * sms else tiles * split), (M, N, K, sms)
                assert programs <= max(tiles, sms) and (split == 1 or programs == tiles * split)
                assert pp == (W == 1 and M > 32) and not (pp and stages % 2), (M, N, K, sms)
                assert split == 1 or (tiles * split <= sms and split * 2 <= steps), (M, N, K, sms, split)
                assert M <= 64 or W == 1 or N / 128 >= 1.5 * sms, (M, N, K, sms, W)
                assert not (M <= 32 and K >= 8192 and N / 256 < 0.75 * sms and W == 4) or steps // split >= 32
                want = 32 < M <= 128 or (16 < M <= 32 and W > 1)
                assert serves(M, N, K, sms) == want, (M, N, K, sms)
                assert not serves(M, N, K + 64, sms)
    assert _pick(64, 28672, 4096, 132)[0] == 4 and _pick(128, 28672, 4096, 132)[0] == 2  # 8B gate_up
    assert _pick(32, 4096, 14336, 132)[0] == 2 and _pick(64, 4096, 14336, 132)[3]  # 8B down
    assert _pick(48, 10240, 8192, 132)[4] == 132 and _pick(96, 57344, 8192, 132)[4] == 132  # 70B qkv, gate_up
    assert _pick(96, 28672, 4096, 132)[4] == 224  # 8B gate_up: a last wave too short to be worth stream-K
    assert _pick(24, 8192, 28672, 132)[:2] == (4, 4) and _pick(24, 8192, 8192, 132)[:2] == (2, 2)  # 70B down, o


@pytest.mark.skipif(not _ws_ok(), reason="the row-split decode GEMM needs a Hopper GPU and Triton's Gluon")
@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("M", [1, 2, 3, 5, 9, 16])
def test_row_split_decode_gemm(fmt, M):
    """16 weight rows a program, K split over its warps and summed in shared memory: within bf16 rounding of the
    dequantized reference for rings of 1-4 stages of one or two k chunks and 2, 4 or 8 warps (partial 64-row
    blocks, N = 100; 1-16 rows, so copies of 1, 2, 4, 8 and 16 tokens, zero-filled past M, into 8- and 16-token
    tiles), every output written, the same bits twice, and at 4 warps the same bits with every ring and with the
    loop's CTA barriers kept; what it cannot take is refused. The loop's barriers were made warp barriers
    (warpbarrier.py)."""
    from mrgptq.errors import MrgptqError
    from mrgptq.kernels.rowgemv import _row_gemv_kernel, fits, row_gemv
    from mrgptq.kernels.warpbarrier import MARKER

    for i, (N, K) in enumerate(TC_SHAPES):
        q, wp, ws, wdq = _weights(fmt, N, K, seed=70 + i)
        tw = tc_pack(wp, ws, q.spec)
        x = student_t((M, K), seed=M + 11).to(torch.bfloat16).to(DEV)
        ref = x.float() @ wdq.T
        for kw in ({}, {"stages": 3}, {"stages": 4, "warps": 2}, {"stages": 2, "warps": 8}, {"warp_barriers": False},
                   {"chunks": 2}, {"stages": 3, "chunks": 2}, {"stages": 1, "chunks": 2}):
            if K % (128 * kw.get("warps", 4) * kw.get("chunks", 1)):
                continue
            y = row_gemv(x, tw, _alpha(q), out=poisoned((M, N), torch.bfloat16), **kw)
            _close(y, ref)
            assert torch.equal(y, row_gemv(x, tw, _alpha(q), **kw)), (N, K, M, kw)
            if not kw:
                y_default = y
            elif "warps" not in kw:  # neither the ring's depth nor the barriers change the order of the sums
                assert torch.equal(y, y_default), (N, K, M, kw)
    ptx = [k.asm["ptx"] for cache in _row_gemv_kernel.device_caches.values() for k in cache[0].values()]
    marked = [p for p in ptx if MARKER in p]
    assert marked and all("bar.warp.sync" in p for p in marked)  # the hook ran on every marked build
    assert all("bar.warp.sync" not in p for p in ptx if MARKER not in p)
    assert fits(tw, 16) and not fits(tw, 17)
    with pytest.raises(MrgptqError, match="at most 16 rows"):
        row_gemv(student_t((17, K), seed=1).to(torch.bfloat16).to(DEV), tw)
    with pytest.raises(MrgptqError, match="a multiple of 1024"):  # K = 512 over 8 warps
        row_gemv(x, tw, warps=8)
    with pytest.raises(MrgptqError, match="do not split into stages of 2"):  # K = 512: one chunk a warp
        row_gemv(x, tw, chunks=2)


def test_row_gemv_ring_keeps_the_chunks_in_flight():
    """`rowgemv._ring` on every Llama-3 linear, token count and a few SM counts: session 19's k chunks in flight
    (4 where a warp has over 16 chunks or few programs share an SM at up to 4 tokens, else 2), as 2 stages of 2
    chunks where a warp's chunks split evenly and four are in flight, and where one token is copied (then 4 in
    flight); session 33's 6 (3 stages of 2) where a warp has over 16 chunks, at most 2 programs share an SM and
    at most 8 tokens are copied (8B down, not 70B down's 512 programs); a stage's chunks always divide a warp's
    range."""
    import importlib.util

    if importlib.util.find_spec("triton.experimental.gluon") is None:
        pytest.skip("this Triton ships no Gluon")
    from mrgptq.kernels.rowgemv import WARPS, _ring

    shapes = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (10240, 8192), (8192, 8192),
              (57344, 8192), (8192, 28672), (4096, 1536), (256, 512)]
    for N, K in shapes:
        per, programs = K // (128 * WARPS), -(-N // 64) * 4
        for M in range(1, 17):
            mc = 1 << (M - 1).bit_length()
            for sms in (78, 114, 132):
                stages, chunks = _ring(K, WARPS, programs, mc, sms)
                deep = per > 16 or (mc <= 4 and programs <= 3 * sms)
                two = per % 2 == 0 and (deep or mc == 1)
                six = per % 2 == 0 and per > 16 and programs <= 2 * sms and mc <= 8
                assert per % chunks == 0 and (chunks == 2) == two, (N, K, M, sms)
                assert stages * chunks == (6 if six else 4 if deep or two else 2), (N, K, M, sms)
    assert _ring(4096, 4, 256, 1, 132) == (2, 2) and _ring(4096, 4, 384, 16, 132) == (2, 1)  # 8B o; qkv at 16
    assert _ring(14336, 4, 256, 1, 132) == (3, 2) and _ring(14336, 4, 256, 16, 132) == (2, 2)  # 8B down at 1, 16
    assert _ring(28672, 4, 512, 1, 132) == (2, 2)  # 70B down
    assert _ring(1536, 4, 256, 1, 132) == (4, 1) and _ring(1536, 4, 1024, 1, 132) == (2, 1)  # 3 chunks a warp


def test_row_gemv_pick_shrinks_with_rows():
    """`rowgemv.fits` (QuantLinear's choice between the row-split and the warp-specialized decode GEMM): a weight
    it takes at r rows it takes at fewer; one row of x goes to it whatever the weight; never past 16 rows or with
    K that 4 warps' 128-wide chunks do not divide; and the ranges BENCHMARKS.md session 31 measured on the
    Llama-3 linears (8B gate_up to 8 rows, 70B gate_up to 4, 70B down to 8, the rest to 16)."""
    import importlib.util
    from types import SimpleNamespace

    if importlib.util.find_spec("triton.experimental.gluon") is None:
        pytest.skip("this Triton ships no Gluon")
    from mrgptq.kernels.rowgemv import fits

    llama = {(6144, 4096): 16, (4096, 4096): 16, (28672, 4096): 8, (4096, 14336): 16, (10240, 8192): 16,
             (8192, 8192): 16, (57344, 8192): 4, (8192, 28672): 8}
    shapes = list(llama) + [(N, K) for N in (64, 4096, 12288, 12352, 65536) for K in (512, 16384, 16896, 65536)]
    for N, K in shapes:
        tw = SimpleNamespace(shape=(N, K))
        taken = [r for r in range(1, 33) if fits(tw, r)]
        assert taken == list(range(1, len(taken) + 1)) and 1 in taken and len(taken) <= 16, (N, K, taken)
        if (N, K) in llama:
            assert len(taken) == llama[N, K], (N, K, taken)
    assert not fits(SimpleNamespace(shape=(4096, 4096 + 128)), 1)


def _offsets(layout):
    """logical coordinates -> element offset of a Gluon SharedLinearLayout (each offset bit's basis XORed in); a
    coordinate two offsets share keeps the last (the callers' size checks then fail)."""
    out = {}
    for off in range(1 << len(layout.offset_bases)):
        c = [0] * len(layout.offset_bases[0])
        for i, b in enumerate(layout.offset_bases):
            if off >> i & 1:
                c = [u ^ v for u, v in zip(c, b)]
        out[tuple(c)] = off
    return out


@pytest.mark.parametrize("kw,mp", [(4, 8), (4, 16), (2, 8), (8, 16)])
def test_row_gemv_x_buffer_views_agree_and_have_no_bank_conflicts(kw, mp):
    """rowgemv writes a stage of x's first mc tokens through one view (warp, k group, token, 8 k) and reads it as
    the B operand of mp tokens through another (warp, k, token): every copied element must be read back where it
    was written, the tile's tokens past mc must read only bytes past the stage's (its output columns past mc are
    discarded, so any bytes will do) and only bytes its own warp copies (so a warp barrier orders all the loop
    needs: warpbarrier.py), and both the copies' 8 groups of a token and ldmatrix's 8 tokens of a group must fall
    in 8 distinct 16-byte slots of 128 bytes."""
    pytest.importorskip("triton.experimental.gluon")
    from mrgptq.kernels.rowgemv import _x_copy_view, _x_view

    read = _offsets(_x_view(kw, mp))
    assert len(read) == kw * 128 * mp  # one element per offset
    for mc in (m for m in (1, 2, 4, 8, 16) if m <= mp):
        write = _offsets(_x_copy_view(kw, mc))
        stage = kw * 128 * mc
        assert len(write) == stage and set(write.values()) == set(range(stage))
        for (w, g, n, e), off in write.items():
            assert read[(w, 8 * g + e, n)] == off
        assert all(off >= stage for (_, _, n), off in read.items() if n >= mc)
        owner = {off: w for (w, _, _, _), off in write.items()}
        assert all(owner[off % stage] == w for (w, _, _), off in read.items())
        for w in range(kw):
            for n in range(mc):
                for h in (0, 8):
                    assert len({write[(w, g + h, n, 0)] // 8 % 8 for g in range(8)}) == 8
    for w in range(kw):
        for g in range(16):
            for n0 in range(0, mp, 8):
                assert len({read[(w, 8 * g, n0 + n)] // 8 % 8 for n in range(8)}) == 8


PTX = """\t bar.sync \t0;
$L__BB0_1:
\tbar.sync \t0;
$L__BB0_2:
\tbar.sync \t0;
\tcp.async.wait_group \t1;
\tbar.sync \t0;
{mark}
\t@%p1 bra \t$L__BB0_2;
\tbar.sync \t0;
\t@%p2 bra \t$L__BB0_1;
\tbar.sync \t0;
{late}"""

ROTATED = """\tbar.sync \t0;
\tbra.uni \t$L__BB0_2;
$L__BB0_4:
\tbar.sync \t0;
{mark}
\t@%p2 bra \t$L__BB0_5;
$L__BB0_2:
\t@%p1 bra \t$L__BB0_4;
\tbar.sync \t0;
\tbra.uni \t$L__BB0_4;
$L__BB0_5:
\tbar.sync \t0;"""


def test_warp_barriers_rewrite_only_the_marked_loop():
    """warpbarrier.warp_barriers turns the CTA barriers of the innermost loop around the marker into warp barriers
    and nothing else: not those before, after or in an outer loop, and nothing at all without a marker or with
    one outside every loop (those kernels keep the always-correct CTA barrier)."""
    pytest.importorskip("triton.experimental.gluon")
    from mrgptq.kernels.warpbarrier import MARKER, warp_barriers

    line = f"\tmov.b32 %r1, %r2; // {MARKER}"
    out = warp_barriers(PTX.format(mark=line, late="")).split("\n")
    changed = [i for i, (a, b) in enumerate(zip(PTX.format(mark=line, late="").split("\n"), out)) if a != b]
    assert changed == [4, 6] and all(out[i] == "\tbar.warp.sync \t-1;" for i in changed)
    for ptx in (PTX.format(mark="", late=""), PTX.format(mark="", late=line), PTX.format(mark=line, late=line)):
        assert warp_barriers(ptx) == ptx
    # a rotated loop with a conditional block (row_gemv's refill): LLVM places the header after the body, and
    # the block's barrier sits between the first back edge and the last
    out = warp_barriers(ROTATED.format(mark=line)).split("\n")
    changed = [i for i, (a, b) in enumerate(zip(ROTATED.format(mark=line).split("\n"), out)) if a != b]
    assert changed == [3, 8] and all(out[i] == "\tbar.warp.sync \t-1;" for i in changed)


def test_warp_barrier_hook_chains_and_rewrites(monkeypatch):
    """install() puts the rewrite after the hook already in Triton's knob (which still runs, and still gives its
    part of the cache key where Triton asks for one), once per process, and wraps only the PTX stage."""
    pytest.importorskip("triton.experimental.gluon")
    from triton import knobs

    from mrgptq.kernels import warpbarrier

    calls = []

    def previous(*args):
        calls.append(len(args))
        return ("prev-key", "prev-hash") if not args else None

    monkeypatch.setattr(knobs.runtime, "add_stages_inspection_hook", previous)
    monkeypatch.setattr(warpbarrier, "_installed", False)
    warpbarrier.install()
    hook = knobs.runtime.add_stages_inspection_hook
    warpbarrier.install()
    assert knobs.runtime.add_stages_inspection_hook is hook is not previous
    key, digest = hook()
    assert key.startswith("prev-key") and warpbarrier._KEY in key and digest.startswith("prev-hash")
    marked = PTX.format(mark=f"\tmov.b32 %r1, %r2; // {warpbarrier.MARKER}", late="")
    stages = {"ttgir": len, "ptx": lambda src, metadata: marked, "cubin": len}
    hook(None, stages, None, None, 90)
    assert calls == [0, 5] and stages["ttgir"] is len and stages["cubin"] is len
    assert stages["ptx"]("src", {}) == warpbarrier.warp_barriers(marked) != marked
    monkeypatch.setattr(knobs.runtime, "add_stages_inspection_hook", None)
    monkeypatch.setattr(warpbarrier, "_installed", False)
    warpbarrier.install()  # no hook before it: its key alone
    assert knobs.runtime.add_stages_inspection_hook() == (warpbarrier._KEY, warpbarrier._KEY)


def test_tc_pack_refuses_what_it_cannot_hold():
    q, wp, ws, _ = _weights("mxfp4", 64, 256, seed=0)
    big = ws.clone()
    big[0, 0] = 149  # a group scale of 2^22: outside the re-encoded exponent range
    assert tc_pack(wp, big, q.spec) is None
    q2, wp2, ws2, _ = _weights("mxfp4", 64, 96, seed=0)  # K not a multiple of the 128-wide layout chunk
    assert tc_pack(wp2, ws2, q2.spec) is None


@triton.jit
def _decode_words(w_ptr, o_ptr, n, LUT: tl.constexpr):
    i = tl.arange(0, 64)
    w = tl.load(w_ptr + i, mask=i < n, other=0)
    v0, v1, v2, v3, v4, v5, v6, v7 = e2m1x8(w, LUT)
    tl.store(o_ptr + i * 8 + 0, v0, mask=i < n)
    tl.store(o_ptr + i * 8 + 1, v1, mask=i < n)
    tl.store(o_ptr + i * 8 + 2, v2, mask=i < n)
    tl.store(o_ptr + i * 8 + 3, v3, mask=i < n)
    tl.store(o_ptr + i * 8 + 4, v4, mask=i < n)
    tl.store(o_ptr + i * 8 + 5, v5, mask=i < n)
    tl.store(o_ptr + i * 8 + 6, v6, mask=i < n)
    tl.store(o_ptr + i * 8 + 7, v7, mask=i < n)


@triton.jit
def _scale_helpers(v_ptr, rcp_ptr, byte_ptr, e4m3_ptr, n, BLOCK: tl.constexpr, INTERP: tl.constexpr,
                   ARCH: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(v_ptr + i, mask=i < n, other=1.0)
    tl.store(rcp_ptr + i, rcp_rn(v, INTERP), mask=i < n)
    byte, val = e4m3_saturate(v, ARCH)
    tl.store(byte_ptr + i, byte.to(tl.uint8), mask=i < n)
    tl.store(e4m3_ptr + i, val, mask=i < n)


@pytest.mark.parametrize("by_hand", [False, True] if GPU else [True])
def test_scale_helpers_are_exact(by_hand):
    """NVFP4's per-group helpers: rcp_rn is 1/d correctly rounded (float64 division then float32 rounding is
    exact for a quotient: 53 >= 2 * 24 + 2 bits) on every float32 of [1, 2) on the GPU, and across binades;
    e4m3_saturate equals torch's cast after formats.scales' clamp to 448, byte and value, from E4M3's
    subnormals to past 448: with sm_89's conversion and by hand (before sm_89, and in the interpreter)."""
    from mrgptq.kernels.fp4 import INTERPRET

    n_mant = 1 << 23 if GPU else 1 << 12
    mant = (torch.arange(n_mant, dtype=torch.int64) * ((1 << 23) // n_mant) + 0x3F800000).to(torch.int32)
    grid = torch.exp2(torch.arange(-100, 101, 7, dtype=torch.float64))  # d and 1/d normal
    v = torch.cat([mant.view(torch.float32),
                   (student_t((4096,), seed=1).abs().double() * grid.repeat_interleave(4096 // grid.numel() + 1)[
                       :4096]).float().clamp_min(2.0 ** -100),
                   torch.exp2(torch.arange(-12, 10, 0.125))]).to(DEV)  # E4M3 subnormals .. 448 and past it
    n = v.numel()
    rcp, val = poisoned((n,), torch.float32), poisoned((n,), torch.float32)
    byte = poisoned((n,), torch.uint8)
    _scale_helpers[(triton.cdiv(n, 1024),)](v, rcp, byte, val, n, BLOCK=1024, INTERP=INTERPRET,
                                            ARCH=(80 if GPU else 0) if by_hand else ptx_arch(v.device))
    assert torch.equal(rcp.cpu(), (1.0 / v.cpu().double()).float())
    ref = v.cpu().clamp_max(448.0).to(torch.float8_e4m3fn)
    assert torch.equal(byte.cpu(), ref.view(torch.uint8))
    assert torch.equal(val.cpu(), ref.float())


@triton.jit
def _e4m3_values(b_ptr, o_ptr, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    b = tl.load(b_ptr + i, mask=i < n, other=0)
    tl.store(o_ptr + i, e4m3_value(b), mask=i < n)


def test_e4m3_bytes_decode_exactly():
    """Every E4M3 byte but the two NaNs, subnormals and -0 included, is torch's value bit for bit: the kernels
    read NVFP4 scales as bytes (Triton has no fp8 type before sm_89)."""
    b = torch.tensor([c for c in range(256) if c & 0x7F != 0x7F], dtype=torch.uint8)
    out = poisoned((b.numel(),), torch.float32)
    _e4m3_values[(1,)](b.to(DEV), out, b.numel(), BLOCK=256)
    assert torch.equal(out.cpu().view(torch.int32), b.view(torch.float8_e4m3fn).float().view(torch.int32))


@pytest.mark.parametrize("lut", [True, False] if GPU else [False])
def test_e2m1_word_decode_is_exact(lut):
    """Every code in every nibble position becomes its exact float32 (-0 included), through the byte-permute
    tables (GPU) and the plain integer path."""
    codes = torch.randint(0, 16, (64, 8), generator=torch.Generator().manual_seed(0), dtype=torch.int64)
    codes[:16] = torch.arange(16)[:, None]  # each code in all 8 positions
    words = (codes << (4 * torch.arange(8))).sum(1).to(torch.int64)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32).to(DEV)
    out = poisoned((64 * 8,), torch.float32)
    _decode_words[(1,)](words, out, 64, LUT=lut)
    ref = formats.codec.decode(codes.reshape(-1).to(torch.uint8), formats.get_spec("mxfp4")).float()
    assert torch.equal(out.cpu().view(torch.int32), ref.view(torch.int32))


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("M", [3, 130])
def test_w4a4_gemm(fmt, M, arch):
    N, K = SHAPES[0]
    q, wp, ws, wdq = _weights(fmt, N, K, seed=3)
    x = (student_t((M, K), seed=M) * 0.5).to(torch.bfloat16).to(DEV)
    gs = formats.nv_global_scale(x.float()).reshape(1) if fmt == "nvfp4" else None
    xq = formats.quantize(x.float(), q.spec, global_scale=gs)
    ref = formats.dequantize(xq) @ wdq.T
    ap, asc = rotate_quantize(x, q.spec, None, "spec", gs)
    alpha = _alpha(q) / (1.0 if gs is None else float(gs))
    y = fp4_matmul(ap, wp, ws, q.spec, alpha, a_scales=asc, out=poisoned((M, N), torch.bfloat16))
    _close(y, ref)


def test_mxfp4_as_fp8_rows_is_exact():
    """E4M3 values times the per-row 2^(e_max - 6) equal formats.dequantize bit for bit while every group is
    within 2^14 of its row's largest; a group far below it keeps only E4M3-subnormal precision."""
    from mrgptq.kernels.fp8 import fp8_rows

    N, K = SHAPES[1][0] - 5, SHAPES[1][1]  # not a multiple of the row tile
    W = student_t((N, K), seed=9) * 0.02
    W[1, 64:96] *= 2.0**-10  # a small group, still exact
    W[2, :32] *= 2.0**-30  # far below: rounded
    W[3, :] = 0  # an all-zero row: zero values, any scale
    q = formats.quantize(W, "mxfp4")
    v8, rs = fp8_rows(formats.pack(q.codes).to(DEV), q.scales.to(DEV), q.spec)
    y = (v8.float() * rs[:, None]).cpu()
    ref = formats.dequantize(q)
    exact = torch.ones(N, dtype=torch.bool)
    exact[2] = False
    assert torch.equal(y[exact], ref[exact])
    assert torch.equal(y[2, 32:], ref[2, 32:])
    assert ((y[2, :32] - ref[2, :32]).abs() <= ref[2].abs().max() * 2**-19).all()


@pytest.mark.skipif(not GPU, reason="torch._scaled_mm needs an FP8 GPU")
def test_mxfp4_w4a4_fp8_gemm():
    from mrgptq.kernels.fp8 import mxfp4_w4a4_matmul

    N, K = SHAPES[0]
    M = 256
    q, wp, ws, wdq = _weights("mxfp4", N, K, seed=4)
    x = (student_t((M, K), seed=5) * 0.5).to(torch.bfloat16).to(DEV)
    ref = formats.dequantize(formats.quantize(x.float(), q.spec)) @ wdq.T
    ap, asc = rotate_quantize(x, q.spec, None, "spec")
    _close(mxfp4_w4a4_matmul(ap, asc, wp, ws, q.spec, 1.0), ref)


@pytest.mark.parametrize("fmt,dtype", [("mxfp4", torch.bfloat16), ("nvfp4", torch.bfloat16),
                                       ("nvfp4", torch.float16), ("nvfp4", torch.float32)])
def test_dequantize_kernel_is_bit_exact(fmt, dtype, arch):
    """Every element equals formats.dequantize's in each output dtype (pairs of 16-bit values per word, or
    two float32 stores), including all-zero groups and a partial last row tile."""
    from mrgptq.kernels.gemm import dequantize

    N, K = SHAPES[1][0] - 5, SHAPES[1][1]  # not a multiple of the row tile
    W = student_t((N, K), seed=8) * 0.02
    W[0, :64] = 0  # all-zero groups: zero scales
    q = formats.quantize(W, fmt)
    gs = 1.0 if q.global_scale is None else float(q.global_scale)
    y = dequantize(formats.pack(q.codes).to(DEV), q.scales.to(DEV), q.spec, gs, dtype).cpu()
    ref = formats.dequantize(q, dtype)
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    bad = (y.view(bits) != ref.view(bits)).nonzero()
    assert len(bad) == 0, f"{len(bad)} differ, first at {bad[0].tolist()}: {y[tuple(bad[0])]} vs {ref[tuple(bad[0])]}"


@pytest.mark.skipif(not GPU, reason="QuantLinear dispatches to the kernels on CUDA only")
@pytest.mark.parametrize("w4a4", [False, True])
@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("tokens", [1, 7, 16, 300])  # 4, 28, 64, 1200 rows: the decode GEMMs, dequantize + cuBLAS
def test_quantlinear_dispatch_matches_pytorch_path(w4a4, fmt, tokens, arch):
    from mrgptq.algorithms import ActQuantizer
    from mrgptq.runtime import QuantLinear

    spec = formats.get_spec(fmt)
    rot = Rotation(2048, "hadamard", 32)
    q = formats.quantize(rot.fuse(student_t((512, 2048), seed=1) * 0.02), spec)
    act = None
    x = student_t((4, tokens, 2048), seed=2).to(torch.bfloat16).to(DEV)
    if w4a4:
        act = ActQuantizer(spec, rot, rule="rounded" if fmt == "mxfp4" else "spec")
        act.observe(x)
        act.finalize()
    m = QuantLinear.from_quantized(q, None, rot, act, dtype=torch.bfloat16).to(DEV)
    os.environ["MRGPTQ_KERNELS"] = "0"
    ref = m(x).float()
    os.environ["MRGPTQ_KERNELS"] = "1"
    y = m(x).float()
    assert ((y - ref).norm() / ref.norm()).item() < 1e-2


@pytest.mark.parametrize("w4a4", [False, True])
def test_inputs_past_int32_offsets_run_in_row_chunks(w4a4, monkeypatch):
    """The kernels index elements with int32: an input with more elements than that runs in row chunks (the limit
    lowered here so that 300 rows make 4 chunks), as each chunk alone; `rotate`/`rotate_quantize` called
    directly refuse it in one line."""
    from mrgptq import kernels
    from mrgptq.algorithms import ActQuantizer
    from mrgptq.errors import MrgptqError
    from mrgptq.runtime import QuantLinear

    K = 256
    spec = formats.get_spec("mxfp4")
    rot = Rotation(K, "hadamard", 32)
    q = formats.quantize(rot.fuse(student_t((64, K), seed=11) * 0.02), spec)
    x = student_t((3, 100, K), seed=12).to(torch.bfloat16).to(DEV)
    act = None
    if w4a4:
        act = ActQuantizer(spec, rot, rule="rounded")
        act.observe(x)
        act.finalize()
    m = QuantLinear.from_quantized(q, None, rot, act, dtype=torch.bfloat16).to(DEV)
    calls = []
    real = kernels.fp4_linear
    monkeypatch.setattr(kernels, "fp4_linear", lambda x, *a, **k: calls.append(x.numel() // K) or real(x, *a, **k))
    monkeypatch.setattr(kernels, "MAX_ELEMENTS", 80 * K)
    y = kernels.fp4_linear(x, m)
    assert calls == [300, 80, 80, 80, 60] and y.shape == (3, 100, 64)
    monkeypatch.setattr(kernels, "MAX_ELEMENTS", 2**31 - 1)
    each = torch.cat([real(x.reshape(300, K)[i:i + 80], m, use_group=False) for i in range(0, 300, 80)])
    assert torch.equal(y.reshape(300, 64), each)
    monkeypatch.setenv("MRGPTQ_KERNELS", "0")
    ref = m(x).float()  # the PyTorch path
    assert ((y.float() - ref).norm() / ref.norm()).item() < 1e-2
    monkeypatch.setattr(kernels, "MAX_ELEMENTS", 80 * K)  # called directly, the kernels refuse instead
    with pytest.raises(MrgptqError, match="past the kernels' int32 offsets; pass fewer rows"):
        rotate(x, 32)
    with pytest.raises(MrgptqError, match="past the kernels' int32 offsets; pass fewer rows"):
        rotate_quantize(x, spec, 32)


def _siblings(fmt, w4a4, sizes=(512, 128, 128), tokens=(3, 2)):
    from mrgptq.algorithms import ActQuantizer
    from mrgptq.runtime import QuantLinear

    spec = formats.get_spec(fmt)
    rot = Rotation(1024, "hadamard", 32)
    x = student_t((*tokens, 1024), seed=5).to(torch.bfloat16).to(DEV)
    act = None
    if w4a4:
        act = ActQuantizer(spec, rot, rule="spec")
        act.observe(x)
        act.finalize()
    parent = torch.nn.Module()
    for i, (name, n) in enumerate(zip(("q_proj", "k_proj", "v_proj"), sizes)):
        q = formats.quantize(rot.fuse(student_t((n, 1024), seed=30 + i) * 0.02), spec)
        bias = student_t((n,), seed=40 + i) * 0.1
        setattr(parent, name, QuantLinear.from_quantized(q, bias, rot, act, dtype=torch.bfloat16).to(DEV))
    return parent, x


def test_sibling_group_serves_each_member_once_per_input():
    """One fused product per input; each member gets its own slice; a new input (or a member asking twice)
    recomputes; the group drops its reference to the input once every member was served."""
    from mrgptq.kernels.siblings import Siblings

    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 2)
    for m, n in ((a, 3), (b, 2)):
        m.out_features = n
    g = Siblings([a, b])
    calls = []

    def compute(x):
        calls.append(x)
        return torch.arange(5.0) + x

    x1, x2 = torch.tensor(10.0), torch.tensor(20.0)
    assert torch.equal(g.output(a, x1, lambda: compute(x1)), torch.tensor([10.0, 11, 12]))
    assert torch.equal(g.output(b, x1, lambda: compute(x1)), torch.tensor([13.0, 14]))
    assert len(calls) == 1 and g.last is None
    assert torch.equal(g.output(b, x2, lambda: compute(x2)), torch.tensor([23.0, 24]))
    assert torch.equal(g.output(b, x2, lambda: compute(x2)), torch.tensor([23.0, 24]))
    assert len(calls) == 3


def test_fused_nvfp4_siblings_apply_each_members_global_scale():
    """NVFP4 q/k/v divide their group scales by per-tensor scales of their own: the one fused decode product
    (here Triton's interpreter on CPU) applies each member's per output row and matches the members' outputs."""
    from mrgptq.kernels import sibling_product
    from mrgptq.kernels.siblings import Siblings

    parent, x = _siblings("nvfp4", False, sizes=(128, 64, 64), tokens=(1, 3))
    ms = [parent.q_proj, parent.k_proj, parent.v_proj]
    assert len({m.global_divisors()[0] for m in ms}) == 3
    os.environ["MRGPTQ_KERNELS"] = "0"
    ref = torch.cat([m(x).float() for m in ms], -1)
    os.environ["MRGPTQ_KERNELS"] = "1"
    group = Siblings(ms)
    y = sibling_product(x, group).float()
    assert group.per_row and group.weight().row_alpha is not None
    assert ((y - ref).norm() / ref.norm()).item() < 1e-2


@pytest.mark.skipif(not GPU, reason="sibling fusion is part of the CUDA dispatch")
@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])  # NVFP4: each member has its own per-tensor weight scale
@pytest.mark.parametrize("w4a4", [False, True])
@pytest.mark.parametrize("tokens", [(3, 2), (2, 150)])  # decode: one fused GEMM; prefill: one shared operand
def test_fused_siblings_match_separate_linears(fmt, w4a4, tokens):
    from mrgptq.kernels.siblings import fuse_siblings

    parent, x = _siblings(fmt, w4a4, tokens=tokens)
    if fmt == "nvfp4":
        assert len({getattr(parent, n).global_divisors()[0] for n in ("q_proj", "k_proj", "v_proj")}) == 3
    os.environ["MRGPTQ_KERNELS"] = "0"
    refs = [getattr(parent, n)(x).float() for n in ("q_proj", "k_proj", "v_proj")]
    os.environ["MRGPTQ_KERNELS"] = "1"
    assert fuse_siblings(parent) == 1
    ys = [getattr(parent, n)(x).float() for n in ("q_proj", "k_proj", "v_proj")]
    for y, ref in zip(ys, refs):
        assert y.shape == ref.shape
        assert ((y - ref).norm() / ref.norm()).item() < 1e-2


@pytest.mark.parametrize("fmt,scales,act_order", [("mxfp4", "static", False), ("nvfp4", "dynamic", False),
                                                  ("nvfp4", "static", True)])
def test_gptq_lazy_block_kernel_matches_the_reference(fmt, scales, act_order, monkeypatch):
    """The Triton GPTQ loop (float32) against the column-by-column reference (float64): the same codes up to
    rounding-boundary noise, the same scales, the same layer error."""
    import sys

    from mrgptq.model.pipeline import relative_output_error

    G = sys.modules["mrgptq.algorithms.gptq"]  # the module (the package exports the function under its name)

    rows, cols = (512, 1024) if GPU else (24, 160)  # 160: a short last lazy block (zero-padded tile)
    W = (student_t((rows, cols), seed=21) * 0.02).to(DEV)
    X = student_t((4 * cols, cols), seed=22).to(DEV)
    X[:, 3] = X[:, 4]  # a duplicated input: a singular Hessian, as real layers have
    H = 2 * X.T @ X / X.shape[0]
    spec = formats.get_spec(fmt)
    kw = {"scale_rule": "mse", "scales": scales, "act_order": act_order, "block_size": 128}
    monkeypatch.setattr(G, "_kernel_ok", lambda W, spec: False)
    ref = G.gptq(W.cpu(), H.cpu(), spec, **kw)
    monkeypatch.setattr(G, "_kernel_ok", lambda W, spec: True)
    out = G.gptq(W, H, spec, **kw)
    same = (out.codes.cpu() == ref.codes).float().mean().item()
    assert same > 0.99, same
    if scales == "static":
        assert torch.equal(out.scales.cpu().view(torch.uint8), ref.scales.view(torch.uint8))
    e_ref = relative_output_error(W.cpu(), formats.dequantize(ref), H.cpu())
    e_out = relative_output_error(W.cpu(), formats.dequantize(out).cpu(), H.cpu())
    assert abs(e_out - e_ref) < 0.02 * e_ref, (e_out, e_ref)
