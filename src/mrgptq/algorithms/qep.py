"""QEP (Arai & Ichikawa, 2025): correct a layer for the error already made by the quantized layers before it.

With X the full-precision inputs and X^ the quantized model's inputs, the weight that best maps X^ to the
full-precision outputs X W^T is  W* = W + W (X - X^)^T X^ (X^T X^)^-1.  QEP applies a fraction alpha of
that correction (the paper's propagation strength), then quantizes W* against the Hessian of X^.
"""
from __future__ import annotations

import torch

from .damping import cholesky_inverse_upper

QEP_ALPHA = 0.5  # the paper's default propagation strength


def qep_correct(W: torch.Tensor, H: torch.Tensor, C: torch.Tensor, alpha: float = QEP_ALPHA, damp: float = 0.01):
    """W + alpha W C H^-1, where H = 2/N X^T X^ and C = 1/N (X - X^)^T X^ (see Hessian)."""
    if alpha == 0:
        return W
    U, _ = cholesky_inverse_upper(H.double(), damp)
    Hinv = U.T @ U  # (H + lambda I)^-1
    delta = W.double() @ C.double() @ Hinv * 2.0  # H carries the factor 2
    return (W.double() + alpha * delta).to(W.dtype)
