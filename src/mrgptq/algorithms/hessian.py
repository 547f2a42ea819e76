"""Streaming second moments of a layer's inputs: H = (2/N) sum x x^T, and QEP's cross term.

Accumulated in float32 batch by batch, so calibration never stores all activations.
"""
from __future__ import annotations

import torch


class Hessian:
    """H = 2/N X^T X over N tokens (GPTQ's normalisation); with `cross=True` also C = 1/N (X - X^)^T X^
    where X is the full-precision input and X^ the quantized model's input (QEP)."""

    def __init__(self, dim: int, device="cpu", cross: bool = False):
        self.dim = dim
        self.n = 0
        self.H = torch.zeros(dim, dim, dtype=torch.float32, device=device)
        self.C = torch.zeros(dim, dim, dtype=torch.float32, device=device) if cross else None
        self.H_cross = None  # 2/N X^T X^ of the QEP regressor when it differs from the layer input (W4A4)

    def add(self, x: torch.Tensor, x_fp: torch.Tensor | None = None, x_cross: torch.Tensor | None = None) -> None:
        """x: inputs the quantized layer sees (..., dim); x_fp: the full-precision model's inputs (QEP);
        x_cross: the quantized model's inputs to regress on, if not x (W4A4: before activation quantization,
        so QEP corrects the error made upstream, not this layer's own activation rounding)."""
        x = self._flat(x)
        b = x.shape[0]
        if b == 0:
            return
        total = self.n + b
        self.H.mul_(self.n / total).addmm_(x.T, x, alpha=2.0 / total)
        if self.C is not None:
            if x_fp is None:
                raise ValueError("QEP Hessian needs the full-precision inputs too (x_fp)")
            xc = x
            if x_cross is not None:
                xc = self._flat(x_cross)
                if self.H_cross is None:
                    self.H_cross = torch.zeros_like(self.H)
                self.H_cross.mul_(self.n / total).addmm_(xc.T, xc, alpha=2.0 / total)
            self.C.mul_(self.n / total).addmm_((self._flat(x_fp) - xc).T, xc, alpha=1.0 / total)
        self.n = total

    def _flat(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1, self.dim).to(self.H.device, torch.float32)

    @property
    def H_qep(self) -> torch.Tensor:
        """The Hessian QEP's correction inverts: that of its regressor."""
        return self.H if self.H_cross is None else self.H_cross

    def rotated(self, rotation) -> torch.Tensor:
        """R^T H R: the Hessian of the rotated inputs x R."""
        if rotation is None or rotation.is_identity:
            return self.H
        return rotation.apply(rotation.apply(self.H.double()).T).T.to(self.H.dtype)
