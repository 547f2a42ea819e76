"""Block-diagonal orthogonal rotations R of a linear layer's input (MR-GPTQ's "micro-rotations").

Convention: activations are rotated online as x' = x R and the weight absorbs R offline as W' = W R, so
y = x W^T = (x R)(W R)^T because R R^T = I. R = diag(R_b, ..., R_b) (times optional random signs D on the
input side: R = D diag(R_b)); a block of b = group size mixes exactly the values that share a scale.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .hadamard import RotationError, fwht, hadamard, hadamard_factor, is_pow2, supported_blocks, sylvester

TRANSFORMS = ("hadamard", "dct", "dst", "gsr", "identity")


def dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II as a right-multiplied matrix: x R = DCT(x)."""
    i = torch.arange(n, dtype=torch.float64)
    c = torch.cos(math.pi * (2 * i[None, :] + 1) * i[:, None] / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c.T.contiguous()


def dst_matrix(n: int) -> torch.Tensor:
    """Orthonormal DST-II as a right-multiplied matrix."""
    i = torch.arange(n, dtype=torch.float64)
    s = torch.sin(math.pi * (2 * i[None, :] + 1) * (i[:, None] + 1) / (2 * n)) * math.sqrt(2.0 / n)
    s[-1] /= math.sqrt(2.0)
    return s.T.contiguous()


def walsh_matrix(n: int) -> torch.Tensor:
    """Sequency-ordered (Walsh) Hadamard: rows sorted by number of sign changes, normalized."""
    h = sylvester(n)
    changes = (h[:, 1:] != h[:, :-1]).sum(1)
    return (h[changes.argsort()] / math.sqrt(n)).T.contiguous()


def block_matrix(kind: str, b: int) -> torch.Tensor:
    """The b x b orthonormal block R_b, float64."""
    if kind == "identity":
        return torch.eye(b, dtype=torch.float64)
    if kind == "hadamard":
        return hadamard(b)
    if kind == "dct":
        return dct_matrix(b)
    if kind == "dst":
        return dst_matrix(b)
    if kind == "gsr":
        if not is_pow2(b):
            raise RotationError(f"GSR needs a power-of-two block, got {b}")
        return walsh_matrix(b)
    raise RotationError(f"unknown transform {kind!r}: choose one of {', '.join(TRANSFORMS)}")


@dataclass(frozen=True)
class Rotation:
    """R for an input dimension `dim`: `kind` blocks of size `block` (None = the whole dim)."""

    dim: int
    kind: str = "hadamard"
    block: int | None = 32
    signs: bool = False
    seed: int = 0

    def __post_init__(self):
        if self.kind not in TRANSFORMS:
            raise RotationError(f"unknown transform {self.kind!r}: choose one of {', '.join(TRANSFORMS)}")
        b = self.size
        if b < 1 or self.dim % b:
            raise RotationError(
                f"rotation block {b} does not divide the input dimension {self.dim}; "
                f"blocks that do: {', '.join(map(str, supported_blocks(self.dim))) or 'none of 16..512'}"
            )
        if self.kind == "hadamard":
            hadamard_factor(b)  # raises a clear error if no construction reaches this order

    @property
    def size(self) -> int:
        return self.dim if self.block is None else int(self.block)

    @property
    def is_identity(self) -> bool:
        return self.kind == "identity" and not self.signs

    def sign_vector(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        return (torch.randint(0, 2, (self.dim,), generator=g) * 2 - 1).to(torch.float64)

    def block_r(self) -> torch.Tensor:
        """The b x b block R_b (float64)."""
        return block_matrix(self.kind, self.size)

    def matrix(self) -> torch.Tensor:
        """The full dim x dim R (float64); for tests and small dims: prefer apply / fuse."""
        r = torch.block_diag(*[self.block_r()] * (self.dim // self.size))
        return self.sign_vector()[:, None] * r if self.signs else r

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Online side: x' = x R along the last dim (fast WHT for power-of-two Hadamard).

        Half-precision inputs are rotated in float32 and rounded once at the end, as compressed-tensors'
        transforms do, so W4A4 activation codes do not depend on the order of bf16 additions."""
        if x.shape[-1] != self.dim:
            raise RotationError(f"rotation is for dim {self.dim}, input has last dim {x.shape[-1]}")
        if self.is_identity:
            return x
        if x.dtype in (torch.float16, torch.bfloat16):
            return self.apply(x.float()).to(x.dtype)
        if self.signs:
            x = x * self.sign_vector().to(x.device, x.dtype)
        b = self.size
        if self.kind == "hadamard" and is_pow2(b):
            return fwht(x, b)
        if self.kind == "hadamard":
            return _apply_kron(x, b)
        rb = self.block_r().to(x.device, x.dtype)
        y = x.reshape(*x.shape[:-1], self.dim // b, b) @ rb
        return y.reshape(x.shape)

    def fuse(self, weight: torch.Tensor) -> torch.Tensor:
        """Offline side: W' = W R, accumulated in float64, returned in W's dtype."""
        if weight.shape[-1] != self.dim:
            raise RotationError(f"rotation is for input dim {self.dim}, weight has {weight.shape[-1]} columns")
        if self.is_identity:
            return weight.clone()
        return self.apply(weight.double()).to(weight.dtype)


def _apply_kron(x: torch.Tensor, n: int) -> torch.Tensor:
    """x (H_m (x) H_p) without forming the n x n matrix: X' = H_m^T X H_p over X = x.view(m, p)."""
    m, hm = hadamard_factor(n)
    p = n // m
    lead = x.shape[:-1]
    xv = x.reshape(*lead, -1, m, p)
    xv = fwht(xv, p)  # H_p / sqrt(p)
    y = torch.einsum("...ij,ik->...kj", xv, hm.to(x.dtype)) / math.sqrt(m)
    return y.reshape(x.shape)
