"""E2M1 codes of value pairs in bf16x2 arithmetic, two values per instruction (inline PTX, GPU only).

The quantize kernel is bound by instruction issue, so its encode runs on bf16 pairs. A pair becomes a bf16x2
word of magnitudes a = |v| clamped to 6, then formats.codec's rounding is three fma's into [128, 256), where
bf16's step is 1 and rounding is to nearest even: 128 + rint(2a) is the code below 2, 130 + rint(a) from 2 to 4
and 132 + rint(a / 2) from 4 up. Each is >= the right one outside its range, so their min minus 128 is the
magnitude's code (6 gives 135, code 7: the clamp saturates). The sign bit moves to bit 3 of each half. Pair i
holds coordinates i and i + 4, whose nibbles are 16^i apart in the output word, so packing is three
multiply-adds. tests/test_bf16x2_ptx.py runs this PTX in an emulator against formats.codec and formats.pack on
every finite bf16 value (CPU), and tests/test_kernels.py compares the kernels that use it with their float32
encode on the GPU.

How a pair becomes bf16x2 depends on the format:
- MXFP4: the pair is rounded to bf16 (the runtime rotates into bf16) and multiplied by 2^-e, which is exact.
- NVFP4: the pair is already divided by its scale in float32; it is rounded to bf16 *to odd* (truncate, then
  set the last bit if anything was dropped). E2M1's values and midpoints have at most 3 significant bits, so
  they are even bf16 values: the odd neighbour of an inexact value lies on the same side of each of them, and
  rounding it to E2M1 gives what rounding the float32 value would.

Portability: bf16x2 multiplies are fma's with -0 (`mul.bf16x2` is sm_90-only; ptxas turns the fma back into
the same multiply there, SASS unchanged), and before sm_90 the "anything dropped" flags take five integer
instructions instead of one `min.u16x2`.
"""
from __future__ import annotations

_CONSTANTS = ("mov.b32 k2, 0x40004000;\nmov.b32 k1, 0x3F803F80;\nmov.b32 kh, 0x3F003F00;\nmov.b32 k6, 0x40C040C0;\n"
              "mov.b32 k128, 0x43004300;\nmov.b32 k130, 0x43024302;\nmov.b32 k132, 0x43044304;\n"
              "mov.b32 one, 0x00010001;\nmov.b32 nz, 0x80008000;\n")

# Each pair prologue leaves p (its sign bits are the values') and a = |value| as bf16x2.
_MX_PAIR = ("cvt.rn.bf16x2.f32 p, {hi}, {lo};\n"  # bf16, then |.| times 2^-e (exact)
            "abs.bf16x2 a, p;\nfma.rn.bf16x2 a, a, {scale}, nz;\n")
_NV_PAIR = ("prmt.b32 p, {lo}, {hi}, 0x7632;\nprmt.b32 t, {lo}, {hi}, 0x5410;\n"  # truncated halves, dropped halves
            "{sticky}or.b32 a, p, t;\nand.b32 a, a, 0x7FFF7FFF;\n")  # round to odd, |.| (one lop3)
# t's halves -> 1 where nonzero: sm_90's min.u16x2; before it, bit 15 of ((t & 0x7FFF) + 0x7FFF) | t (no carry
# leaves a half) moved to bit 0
_STICKY_SM90 = "min.u16x2 t, t, one;\n"
_STICKY = ("and.b32 n, t, 0x7FFF7FFF;\nadd.u32 n, n, 0x7FFF7FFF;\nor.b32 n, n, t;\nshr.b32 n, n, 15;\n"
           "and.b32 t, n, 0x00010001;\n")

# |value| clamped to 6, then the three roundings and their min: 128 + the magnitude's code in each half; the sign
# bit (15, 31) goes to bit 3 (19).
_ENCODE = """min.bf16x2 a, a, k6;
fma.rn.bf16x2 n, a, k2, k128;
fma.rn.bf16x2 t, a, k1, k130;
min.bf16x2 n, n, t;
fma.rn.bf16x2 t, a, kh, k132;
min.bf16x2 n, n, t;
shr.b32 t, p, 12;
and.b32 t, t, 0x00080008;
or.b32 {out}, n, t;
"""

# Pair i holds coordinates i and i + 4 (nibbles i and i + 4 of the word), so the word is sum_i q_i 16^i, three
# multiply-adds, less the four pairs' 128s (0x4300 in every half) at once: 0x43004300 * 0x1111 mod 2^32.
_PACK = ("mad.lo.u32 q0, q1, 16, q0;\nmad.lo.u32 q0, q2, 256, q0;\nmad.lo.u32 q0, q3, 4096, q0;\n"
         f"sub.u32 $0, q0, {0x43004300 * 0x1111 % 2**32:#x};\n")


# ($0, $1) = float32 ($2, $3) rounded to nearest-even bf16: one paired conversion for two scalar ones and their shifts
ROUND_PAIR = """{
.reg .b32 p;
cvt.rn.bf16x2.f32 p, $3, $2;
shl.b32 $0, p, 16;
and.b32 $1, p, 0xFFFF0000;
}"""


def encode_ptx(mx: bool, arch: int = 90) -> str:
    """PTX for `tl.inline_asm_elementwise`: $1..$8 float32 values (consecutive coordinates), then for MXFP4
    $9 = 2^-e as bf16x2; $0 = their 4 code bytes, little-endian (coordinate c in nibble c). `arch`: the
    compute capability it is for (sm_80 and up)."""
    pair = _MX_PAIR if mx else _NV_PAIR.replace("{sticky}", _STICKY_SM90 if arch >= 90 else _STICKY)
    body = "".join((pair + _ENCODE).format(lo=f"${i + 1}", hi=f"${i + 5}", scale="$9", out=f"q{i}")
                   for i in range(4))
    return ("{\n.reg .b32 p, a, n, t, k2, k1, kh, k6, k128, k130, k132, one, nz, q0, q1, q2, q3;\n" + _CONSTANTS
            + body + _PACK + "}")


def column_order(width: int) -> list[int]:
    """H's column permutation for a rotation `width` (>= 32) columns wide: the MMA output column 8j + 2t + c
    (j < width/8; lane t of 4 holds its columns 2t, 2t+1 of every 8) is rotated coordinate 32 (j // 4) + 8 t +
    2 (j % 4) + c: each thread then holds runs of 8 consecutive coordinates."""
    return [32 * (j // 4) + 8 * t + 2 * (j % 4) + c for j in range(width // 8) for t in range(4) for c in range(2)]
