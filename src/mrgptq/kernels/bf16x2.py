"""E2M1 codes of value pairs in bf16x2 arithmetic, two values per instruction (inline PTX, GPU only).

The quantize kernel is bound by instruction issue, so its encode runs on bf16 pairs. A pair becomes a bf16x2
word, then formats.codec's rounding is three fma's into [128, 256), where bf16's step is 1 and rounding is to
nearest even: 128 + rint(2|v|) is the code below 2, 130 + rint(|v|) from 2 to 4 and 132 + rint(|v| / 2) from 4
up. Each is >= the right one outside its range, so their min (and 135, code 7, for saturation) minus 128 is
the code. That rule matched `encode_e2m1` on all 65,280 finite bf16 values in a one-off check, and
tests/test_kernels.py compares the kernels that use it with their float32 encode on the GPU.

How a pair becomes bf16x2 depends on the format:
- MXFP4: the pair is rounded to bf16 (the runtime rotates into bf16) and multiplied by 2^-e, which is exact.
- NVFP4: the pair is already divided by its scale in float32; it is rounded to bf16 *to odd* (truncate, then
  set the last bit if anything was dropped). E2M1's values and midpoints have at most 3 significant bits, so
  they are even bf16 values: the odd neighbour of an inexact value lies on the same side of each of them, and
  rounding it to E2M1 gives what rounding the float32 value would.
"""
from __future__ import annotations

_CONSTANTS = ("mov.b32 k2, 0x40004000;\nmov.b32 k1, 0x3F803F80;\nmov.b32 kh, 0x3F003F00;\n"
              "mov.b32 k128, 0x43004300;\nmov.b32 k130, 0x43024302;\nmov.b32 k132, 0x43044304;\n"
              "mov.b32 k135, 0x43074307;\nmov.b32 one, 0x00010001;\n")

_MX_PAIR = "cvt.rn.bf16x2.f32 p, {hi}, {lo};\nmul.rn.bf16x2 p, p, {scale};\n"  # bf16, then times 2^-e (exact)
_NV_PAIR = ("prmt.b32 p, {lo}, {hi}, 0x7632;\nprmt.b32 t, {lo}, {hi}, 0x5410;\n"  # truncated halves, dropped halves
            "min.u16x2 t, t, one;\nor.b32 p, p, t;\n")  # round to odd

_ENCODE = """and.b32 a, p, 0x7FFF7FFF;
fma.rn.bf16x2 n, a, k2, k128;
fma.rn.bf16x2 t, a, k1, k130;
min.bf16x2 n, n, t;
fma.rn.bf16x2 t, a, kh, k132;
min.bf16x2 n, n, t;
min.bf16x2 n, n, k135;
sub.u32 n, n, 0x43004300;
shr.b32 t, p, 12;
and.b32 t, t, 0x00080008;
or.b32 {out}, n, t;
"""

# q_i holds the codes of pair i at bits 0-3 and 16-19; two pairs fold into two bytes (low nibble: the first value)
_FOLD = "shl.b32 {b}, {b}, 8;\nor.b32 {a}, {a}, {b};\nshr.b32 {b}, {a}, 12;\nor.b32 {a}, {a}, {b};\n"


# ($0, $1) = float32 ($2, $3) rounded to nearest-even bf16: one paired conversion for two scalar ones and their shifts
ROUND_PAIR = """{
.reg .b32 p;
cvt.rn.bf16x2.f32 p, $3, $2;
shl.b32 $0, p, 16;
and.b32 $1, p, 0xFFFF0000;
}"""


def encode_ptx(mx: bool) -> str:
    """PTX for `tl.inline_asm_elementwise`: $1..$8 float32 values (consecutive coordinates), then for MXFP4
    $9 = 2^-e as bf16x2; $0 = their 4 code bytes, little-endian."""
    pair = _MX_PAIR if mx else _NV_PAIR
    body = "".join((pair + _ENCODE).format(lo=f"${2 * i + 1}", hi=f"${2 * i + 2}", scale="$9", out=f"q{i}")
                   for i in range(4))
    body += _FOLD.format(a="q0", b="q1") + _FOLD.format(a="q2", b="q3") + "prmt.b32 $0, q0, q2, 0x5410;\n"
    return ("{\n.reg .b32 p, a, n, t, k2, k1, kh, k128, k130, k132, k135, one, q0, q1, q2, q3;\n" + _CONSTANTS
            + body + "}")


def column_order(width: int) -> list[int]:
    """H's column permutation for a rotation `width` (>= 32) columns wide: the MMA output column 8j + 2t + c
    (j < width/8; lane t of 4 holds its columns 2t, 2t+1 of every 8) is rotated coordinate 32 (j // 4) + 8 t +
    2 (j % 4) + c: each thread then holds runs of 8 consecutive coordinates."""
    return [32 * (j // 4) + 8 * t + 2 * (j % 4) + c for j in range(width // 8) for t in range(4) for c in range(2)]
