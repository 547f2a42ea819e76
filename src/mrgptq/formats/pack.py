"""Two 4-bit codes per byte, first element in the low nibble (the compressed-tensors / vLLM order)."""
from __future__ import annotations

import torch

from .spec import FormatError


def pack(codes: torch.Tensor) -> torch.Tensor:
    if codes.dtype != torch.uint8:
        raise FormatError(f"pack: codes must be uint8, got {codes.dtype}")
    if codes.shape[-1] % 2:
        raise FormatError(f"pack: last dimension {codes.shape[-1]} must be even to pack two codes per byte")
    if codes.numel() and int(codes.max()) > 15:
        raise FormatError("pack: codes must be in 0..15")
    c = codes.reshape(*codes.shape[:-1], codes.shape[-1] // 2, 2)
    return c[..., 0] | (c[..., 1] << 4)


def unpack(packed: torch.Tensor) -> torch.Tensor:
    if packed.dtype != torch.uint8:
        raise FormatError(f"unpack: packed codes must be uint8, got {packed.dtype}")
    out = torch.stack([packed & 0xF, packed >> 4], dim=-1)
    return out.reshape(*packed.shape[:-1], packed.shape[-1] * 2)
