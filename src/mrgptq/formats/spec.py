"""One description of each number format, read by algorithms, exporters and kernels alike.

Nothing outside this package re-derives group sizes, grids or scale encodings: they ask a `FormatSpec`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import MrgptqError

# E2M1 magnitudes indexed by the 3-bit code (sign is bit 3). OCP MX spec v1.0, table 5.
E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_MAX = 6.0
E4M3_MAX = 448.0
E8M0_BIAS = 127
E8M0_NAN = 0xFF


class FormatError(MrgptqError):
    """Bad input to a format function: the message names the problem and the fix."""


@dataclass(frozen=True)
class FormatSpec:
    """A 4-bit block format: element grid + per-group scale encoding (+ optional per-tensor scale)."""

    name: str  # "mxfp4" | "nvfp4" | "int4"
    group_size: int
    element: str  # "e2m1" | "int4"
    scale_dtype: str  # "e8m0" | "e4m3" | "fp32"
    global_scale: bool  # NVFP4 only: FP32 per-tensor scale
    symmetric: bool = True  # INT4 may be asymmetric (then a uint8 zero point per group)

    @property
    def bits_per_weight(self) -> float:
        scale_bits = {"e8m0": 8, "e4m3": 8, "fp32": 16}[self.scale_dtype]  # int4 scales exported as fp16
        zero_bits = 0 if self.symmetric else 4
        return 4 + (scale_bits + zero_bits) / self.group_size

    @property
    def is_fp4(self) -> bool:
        return self.element == "e2m1"

    @property
    def max_code_value(self) -> float:
        return E2M1_MAX if self.is_fp4 else 7.0

    def grid(self, device=None) -> torch.Tensor:
        """Values of the 16 codes (before scaling), float32. INT4 codes are offset binary (code - 8)."""
        if self.is_fp4:
            mags = torch.tensor(E2M1_GRID, dtype=torch.float32, device=device)
            return torch.cat([mags, -mags])
        return torch.arange(16, dtype=torch.float32, device=device) - 8.0


_BASE = {
    "mxfp4": FormatSpec("mxfp4", 32, "e2m1", "e8m0", False),
    "nvfp4": FormatSpec("nvfp4", 16, "e2m1", "e4m3", True),
    "int4": FormatSpec("int4", 32, "int4", "fp32", False, True),
    "int4-asym": FormatSpec("int4", 32, "int4", "fp32", False, False),
}
FORMAT_NAMES = ("mxfp4", "nvfp4", "int4", "int4-asym")


def get_spec(fmt: str | FormatSpec, group_size: int | None = None) -> FormatSpec:
    """Look up a format by name; `group_size` overrides the format's default group."""
    if isinstance(fmt, FormatSpec):
        spec = fmt
    else:
        key = str(fmt).lower()
        if key not in _BASE:
            raise FormatError(f"unknown format {fmt!r}: choose one of {', '.join(FORMAT_NAMES)}")
        spec = _BASE[key]
    if group_size is not None and group_size != spec.group_size:
        if group_size <= 0:
            raise FormatError(f"group_size must be positive, got {group_size}")
        if spec.name == "mxfp4" and group_size != 32:
            # The MX spec fixes k=32; we allow other sizes for research but keep the encoding.
            pass
        spec = replace(spec, group_size=int(group_size))
    return spec
