"""Element codecs: scaled real value -> 4-bit code, and back.

E2M1 rounding follows the OCP MX spec: nearest value, ties to the even code, saturating at +-6.
The sign lives in bit 3, so -x has code `code(x) | 8` (negative zero included).
"""
from __future__ import annotations

import torch

from .spec import FormatSpec

# Decision boundaries between consecutive E2M1 magnitudes, and whether a tie goes up (to the even
# upper code) or stays down (the lower code is even). Code i is even <=> its mantissa bit is 0.
_E2M1_BOUNDS = ((0.25, False), (0.75, True), (1.25, False), (1.75, True), (2.5, False), (3.5, True), (5.0, False))


def encode_e2m1(v: torch.Tensor) -> torch.Tensor:
    """Round already-scaled float values to E2M1 codes (uint8 0..15)."""
    a = v.abs()
    mag = torch.zeros(v.shape, dtype=torch.uint8, device=v.device)
    for bound, tie_up in _E2M1_BOUNDS:
        mag += (a >= bound if tie_up else a > bound).to(torch.uint8)
    sign = torch.signbit(v).to(torch.uint8) << 3
    return mag | sign


def encode_int4(v: torch.Tensor, zero: torch.Tensor | None = None) -> torch.Tensor:
    """Round scaled values to INT4 codes: symmetric codes are offset binary (q + 8), asymmetric q + zero."""
    q = torch.round(v)  # half to even
    if zero is None:
        return (q.clamp(-8, 7) + 8).to(torch.uint8)
    return (q + zero.float()).clamp(0, 15).to(torch.uint8)


def encode(v: torch.Tensor, spec: FormatSpec, zero: torch.Tensor | None = None) -> torch.Tensor:
    return encode_e2m1(v) if spec.is_fp4 else encode_int4(v, zero)


def decode(codes: torch.Tensor, spec: FormatSpec, zero: torch.Tensor | None = None) -> torch.Tensor:
    """Code -> unscaled float32 value (a table lookup, so it is exact)."""
    vals = spec.grid(codes.device)[codes.long()]
    if zero is not None:  # asymmetric int4: value = code - zero (grid is code - 8)
        vals = vals + 8.0 - zero.float()
    return vals
