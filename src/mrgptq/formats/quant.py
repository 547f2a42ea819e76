"""quantize / dequantize along the last dimension: the reference every kernel is checked against."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import codec, scales
from .spec import FormatError, FormatSpec, get_spec


@dataclass
class QuantizedTensor:
    """Unpacked 4-bit codes (same shape as the input) and their group scales."""

    codes: torch.Tensor  # uint8, 0..15
    scales: torch.Tensor  # stored encoding: uint8 E8M0 | float8_e4m3fn | float32, shape (..., K // g)
    global_scale: torch.Tensor | None  # float32 scalar, dequant divides by it (NVFP4; MXFP4 'four-thirds'); else None
    spec: FormatSpec
    zeros: torch.Tensor | None = None  # asymmetric INT4 zero points, uint8 (..., K // g)

    @property
    def shape(self):
        return self.codes.shape

    def effective_scales(self) -> torch.Tensor:
        """float32 (..., K // g): value = grid[code] * effective scale."""
        return effective_scales(self.scales, self.spec, self.global_scale)


def effective_scales(stored: torch.Tensor, spec: FormatSpec, global_scale=None) -> torch.Tensor:
    if spec.scale_dtype == "e8m0":
        s = scales.e8m0_to_float(stored)
        return s if global_scale is None else s / global_scale.float()
    if spec.scale_dtype == "e4m3":
        return stored.float() / global_scale.float()
    return stored.float()


def check_input(x: torch.Tensor, spec: FormatSpec, name: str = "tensor") -> None:
    """One clear error for each way an input can be unusable."""
    if not isinstance(x, torch.Tensor):
        raise FormatError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise FormatError(f"{name}: dtype {x.dtype} is not a float type; cast it with .float() first")
    if x.dim() == 0:
        raise FormatError(f"{name}: a scalar cannot be group-quantized; pass a tensor of shape (..., K)")
    k = x.shape[-1]
    if k % spec.group_size:
        raise FormatError(
            f"{name}: last dimension {k} is not divisible by the {spec.name} group size {spec.group_size}; "
            f"pad it or choose a group size that divides {k}"
        )
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise FormatError(f"{name}: contains {bad} NaN/Inf values; fix the tensor before quantizing")


def _grouped(x: torch.Tensor, g: int) -> torch.Tensor:
    return x.float().reshape(*x.shape[:-1], x.shape[-1] // g, g)


def encode_groups(xg: torch.Tensor, spec: FormatSpec, eff: torch.Tensor, zeros=None) -> torch.Tensor:
    """Codes for grouped values (..., G, g) under fixed effective scales (..., G); zero scale -> code 0."""
    safe = torch.where(eff > 0, eff, torch.ones_like(eff)).unsqueeze(-1)
    z = None if zeros is None else zeros.unsqueeze(-1)
    codes = codec.encode(xg / safe, spec, z)
    if spec.is_fp4:
        codes = torch.where(eff.unsqueeze(-1) > 0, codes, torch.zeros_like(codes))
    return codes


def quantize(
    x: torch.Tensor,
    fmt: str | FormatSpec = "mxfp4",
    *,
    group_size: int | None = None,
    scale_rule: str = "spec",
    global_scale: torch.Tensor | None = None,
    mse_norm: float = scales.MSE_NORM,
    name: str = "tensor",
) -> QuantizedTensor:
    """Quantize `x` along its last dimension in groups. See `scales` for the scale rules."""
    spec = get_spec(fmt, group_size)
    check_input(x, spec, name)
    g = spec.group_size
    xg = _grouped(x, g)
    if global_scale is None or not spec.global_scale:
        global_scale = scales.global_scale_for(x, spec, scale_rule)
    stored, eff, zeros = scales.choose(xg, spec, scale_rule, global_scale, mse_norm)
    codes = encode_groups(xg, spec, eff, zeros).reshape(x.shape)
    return QuantizedTensor(codes, stored, global_scale, spec, zeros)


def dequantize(q: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """codes * effective scale, float32 by default."""
    g = q.spec.group_size
    cg = q.codes.reshape(*q.codes.shape[:-1], q.codes.shape[-1] // g, g)
    z = None if q.zeros is None else q.zeros.unsqueeze(-1)
    vals = codec.decode(cg, q.spec, z) * q.effective_scales().unsqueeze(-1)
    return vals.reshape(q.codes.shape).to(dtype)


def fake_quantize(x: torch.Tensor, fmt: str | FormatSpec = "mxfp4", **kw) -> torch.Tensor:
    """quantize then dequantize, in x's dtype: what the model computes with."""
    return dequantize(quantize(x, fmt, **kw), x.dtype)


def quant_error(x: torch.Tensor, fmt: str | FormatSpec = "mxfp4", **kw) -> float:
    """Relative RMS error ||x - q(x)|| / ||x||."""
    xf = x.float()
    return ((xf - fake_quantize(xf, fmt, **kw)).norm() / xf.norm().clamp_min(1e-30)).item()
