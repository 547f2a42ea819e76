"""The kernels' inline PTX, run instruction by instruction in a small emulator on the CPU, so CI checks the shipped
text itself (the GPU tests compare the kernels): the quantize encode (`kernels/bf16x2.py`) against formats.codec
and formats.pack on every finite bf16 value and the E2M1 ties, and the decode GEMMs' decode (`tcgemv._DECODE_PTX`,
used by tc_gemv, ws_gemv and row_gemv) on `tc_pack`'s words and re-encoded scales against formats.dequantize.

The emulator knows only the instructions that PTX uses; bf16 arithmetic is done exactly in float64 and rounded to
nearest even (through float32, exact for these operands: products of two bf16 values, sums with 128..132).
"""
import dataclasses
import re

import pytest
import torch

from mrgptq import formats
from mrgptq.formats import codec, pack
from mrgptq.kernels.bf16x2 import ROUND_PAIR, encode_ptx
from mrgptq.kernels.tcgemv import _DECODE_PTX, tc_pack

M32 = 0xFFFFFFFF


def _bf16_value(h):
    return (h.to(torch.int32) << 16).view(torch.float32).double()


def _bf16_bits(v):
    return v.float().to(torch.bfloat16).view(torch.int16).long() & 0xFFFF


def _per_half(fn, *xs):
    """fn applied to the low 16-bit halves of 32-bit words xs, then to the high halves; repacked."""
    return fn(*[x & 0xFFFF for x in xs]) | (fn(*[x >> 16 for x in xs]) << 16)


def _bf16_op(fn):
    """fn on bf16 halves as float64, rounded back to bf16 bits."""
    return lambda *h: _bf16_bits(fn(*[_bf16_value(x) for x in h]))


def _prmt(a, b, sel):
    src = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
    return sum(src[(sel >> (4 * i)) & 7] << (8 * i) for i in range(4))


def _min_pick(a, b):  # min of bf16 values, returning the chosen operand's bits
    va, vb = _bf16_value(a), _bf16_value(b)
    return torch.where(va <= vb, a, b)


OPS = {
    "mov.b32": lambda a: a,
    "cvt.rn.bf16x2.f32": lambda a, b: (_bf16_bits(a.to(torch.int32).view(torch.float32)) << 16)
    | _bf16_bits(b.to(torch.int32).view(torch.float32)),
    "mul.rn.bf16x2": lambda a, b: _per_half(_bf16_op(lambda x, y: x * y), a, b),
    "fma.rn.bf16x2": lambda a, b, c: _per_half(_bf16_op(lambda x, y, z: x * y + z), a, b, c),
    "abs.bf16x2": lambda a: a & 0x7FFF7FFF,
    "min.bf16x2": lambda a, b: _per_half(_min_pick, a, b),
    "min.u16x2": lambda a, b: _per_half(torch.minimum, a, b),
    "shr.b32": lambda a, b: a >> b,
    "shl.b32": lambda a, b: (a << b) & M32,
    "and.b32": lambda a, b: a & b,
    "or.b32": lambda a, b: a | b,
    "mad.lo.u32": lambda a, b, c: (a * b + c) & M32,
    "sub.u32": lambda a, b: (a - b) & M32,
    "add.u32": lambda a, b: (a + b) & M32,
    "prmt.b32": lambda a, b, c: _prmt(a, b, int(c)),  # (the default mode: byte selectors 0-7)
    "lop3.b32": lambda a, b, c, lut: _lop3(a, b, c, int(lut)),
}


def _lop3(a, b, c, lut):
    """Bit i of the result: bit (4 a_i + 2 b_i + c_i) of the 8-bit truth table lut."""
    idx = [((a >> i) & 1) * 4 + ((b >> i) & 1) * 2 + ((c >> i) & 1) for i in range(32)]
    return sum(((lut >> k) & 1) << i for i, k in enumerate(idx))


def run_ptx(text, inputs):
    """Emulate `text` (one tl.inline_asm_elementwise body) on int64 tensors of 32-bit words; `inputs` maps the $k
    operands it reads to their words; returns the $ registers it wrote."""
    regs = {}

    def val(tok):
        if tok.startswith("$") or re.fullmatch(r"[a-z]\w*", tok):
            return regs[tok] if tok in regs else inputs[tok]
        return torch.tensor(int(tok, 0), dtype=torch.int64)

    for line in text.splitlines():
        line = line.strip().rstrip(";")
        if not line or line in "{}" or line.startswith(".reg"):
            continue
        op, args = line.split(None, 1)
        pair = re.fullmatch(r"\{\s*(\S+),\s*(\S+)\s*\},\s*(\S+)", args)
        if op == "mov.b32" and pair:  # mov.b32 {lo, hi}, word: the word's 16-bit halves
            w = val(pair.group(3))
            regs[pair.group(1)], regs[pair.group(2)] = w & 0xFFFF, w >> 16
            continue
        packs = re.fullmatch(r"(\S+),\s*\{\s*(\S+),\s*(\S+)\s*\}", args)
        if op == "mov.b32" and packs:  # mov.b32 word, {lo, hi}: two 16-bit values into one word
            regs[packs.group(1)] = val(packs.group(2)) | (val(packs.group(3)) << 16)
            continue
        dst, *src = [t.strip() for t in args.split(",")]
        regs[dst] = OPS[op](*[val(s) for s in src])
    return {k: v for k, v in regs.items() if k.startswith("$")}


def _bits(x):
    return x.float().view(torch.int32).long() & M32


def _words(codes):
    """codes (n, 8) uint8 -> the packed little-endian 32-bit words formats.pack makes."""
    b = pack(codes).long()
    return b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16) | (b[:, 3] << 24)


def _encode(v, mx, scale_bits=None, arch=90):
    ins = {f"${i + 1}": _bits(v[:, i]) for i in range(8)}
    if mx:
        ins["$9"] = torch.full_like(ins["$1"], scale_bits)
    return run_ptx(encode_ptx(mx, arch), ins)["$0"]


def _all_finite_bf16():
    v = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    v = v[torch.isfinite(v)]
    return torch.cat([v, v[: -v.numel() % 8]]).reshape(-1, 8)


def test_mxfp4_encode_ptx_is_the_codec_on_every_bf16_value():
    """Every finite bf16 value, times 2^-e for three exponents, and float32 values that round onto them."""
    v = _all_finite_bf16()
    g = torch.Generator().manual_seed(0)
    v32 = v * (1 + (torch.rand(v.shape, generator=g) - 0.5) * 2 ** -7)  # not bf16: the cvt rounds first
    for e in (-2, 0, 3):
        scale = ((127 - e) << 7) * 0x00010001
        for x in (v, v32):
            ref = codec.encode_e2m1(x.to(torch.bfloat16).double() * 2.0 ** -e)
            assert torch.equal(_encode(x, True, scale), _words(ref)), e


@pytest.mark.parametrize("arch", [90, 80])  # Hopper's min.u16x2, and the integer form before it
def test_nvfp4_encode_ptx_is_the_codec_on_ties_and_their_neighbours(arch):
    """NVFP4 takes float32 quotients: round to odd bf16, then E2M1. Every E2M1 value and midpoint, one float32 ulp
    either side of each (where the odd rounding must not flip the decision), both signs, and random values
    (whose dropped low halves take every bit pattern, 0x8000 and 0xFFFF among them)."""
    pts = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0, 100.0])
    up, down = torch.nextafter(pts, torch.tensor(1e9)), torch.nextafter(pts, torch.tensor(-1e9))
    g = torch.Generator().manual_seed(1)
    rnd = (torch.rand(40_000, generator=g) * 16 - 8) * torch.exp2(torch.randint(-6, 2, (40_000,), generator=g))
    low = (_bits(pts.repeat(6)) & 0xFFFF0000) | torch.tensor([0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF, 0x0000]
                                                           ).repeat_interleave(pts.numel())
    v = torch.cat([pts, up, down, -pts, -up, -down, rnd, low.to(torch.int32).view(torch.float32)])
    v = torch.cat([v, v[: -v.numel() % 8]]).reshape(-1, 8)
    assert torch.equal(_encode(v, False, arch=arch), _words(codec.encode_e2m1(v)))
    assert ("min.u16x2" in encode_ptx(False, arch)) == (arch >= 90)


def test_round_pair_ptx_rounds_to_nearest_even_bf16():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(2, 50_000, generator=g) * torch.exp2(torch.randint(-30, 30, (2, 50_000), generator=g))
    out = run_ptx(ROUND_PAIR, {"$2": _bits(a), "$3": _bits(b)})
    for k, x in (("$0", a), ("$1", b)):
        assert torch.equal(out[k], _bits(x.to(torch.bfloat16).float()))


def _rotl8(x):
    return ((x << 8) | (x >> 24)) & M32


def test_decode_ptx_is_dequantize_on_tc_pack_words():
    """Word u = 4t + v (v = 2a + c) of a row's 128-wide chunk C decodes to the values at k = 128 C + 64 a + 32 g +
    16 c + 8 h + 2 t + b, in (m = 2g + h, b) order, times 2^-shift: exactly formats.dequantize's, for random
    heavy-tailed weights in both formats (MXFP4 exponents over a wide range, every E4M3 scale byte the data
    reaches, zero NVFP4 groups included). Its scale register is the row's scale word as the tcgemv docstring
    says: MXFP4 the one word, rotated left by 8 bits for v >= 2, masked; NVFP4 word v // 2, rotated for odd v,
    masked, exponent bits set."""
    from conftest import student_t

    from mrgptq.kernels.tcgemv import MX_SCALE_MASK, NV_SCALE_EXP, NV_SCALE_MASK

    for fmt in ("mxfp4", "nvfp4"):
        W = student_t((128, 512), df=3, seed=5) * torch.exp2(torch.randint(-12, 12, (128, 1),
                                                                             generator=torch.Generator().manual_seed(6)))
        W[3, 16:48] = 0  # whole zero groups (an NVFP4 scale of 0)
        q = formats.quantize(W, fmt)
        tw = tc_pack(pack(q.codes), q.scales, q.spec)
        # code x group scale, exact in float32; the kernels apply the per-tensor 1 / g through alpha
        unit = None if q.global_scale is None else torch.ones(())
        want = formats.dequantize(dataclasses.replace(q, global_scale=unit)).double() * 2.0 ** -tw.shift
        words = tw.words.long() & M32  # (N/64, C, 64, 16)
        nv = fmt == "nvfp4"
        sw = tw.scales.long() & M32  # (N/64, C, 64, 1 or 2) scale words
        u = torch.arange(16)
        t, v = u // 4, u % 4
        if nv:
            s = sw[..., v // 2]
            r = (torch.where(v % 2 == 1, _rotl8(s), s) & NV_SCALE_MASK.value) | NV_SCALE_EXP.value
        else:
            s = sw[..., [0]].expand(*sw.shape[:-1], 16)
            r = torch.where(v >= 2, _rotl8(s), s) & MX_SCALE_MASK.value
        out = run_ptx(_DECODE_PTX.value, {"$8": words, "$9": r})
        got = torch.stack([_bf16_value(out[f"${i}"]) for i in range(8)], -1)  # (N/64, C, 64, u, m b)
        mb = torch.arange(8)
        m, b = mb // 2, mb % 2
        k = (64 * (v // 2) + 16 * (v % 2) + 2 * t)[:, None] + (32 * (m // 2) + 8 * (m % 2) + b)[None, :]  # (u, m b)
        nb, C = words.shape[:2]
        rows = (torch.arange(nb)[:, None] * 64 + torch.arange(64)[None, :])[:, None, :, None, None]
        cols = (128 * torch.arange(C))[None, :, None, None, None] + k
        assert torch.equal(got, want[rows, cols]), fmt
