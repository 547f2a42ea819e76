"""Inverting a Hessian robustly: relative dampening, dead inputs, escalation on failure."""
from __future__ import annotations

import logging

import torch

from ..errors import MrgptqError

log = logging.getLogger("mrgptq")


class NumericsError(MrgptqError):
    """The Hessian stayed singular after every dampening step."""


def prepare(H: torch.Tensor, W: torch.Tensor, damp: float = 0.01):
    """Zero dead inputs (never-active columns) and return (H with damping, W, dead mask)."""
    H = H.clone().double()
    dead = torch.diag(H) <= 0
    H[dead, dead] = 1.0
    W = W.clone()
    W[:, dead] = 0
    return H, W, dead


def cholesky_inverse_upper(H: torch.Tensor, damp: float = 0.01, name: str = "layer",
                           max_damp: float = 10.0) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + lambda I)^-1 with lambda = damp * mean(diag H), escalating x10 on failure
    up to `max_damp` (at 10 the Hessian is nearly the identity: plain rounding, never NaN).

    Returns (U, damp actually used); a raised dampening is logged as a warning naming the layer.
    float64 for stability on small models; GPUs may pass float32.
    """
    mean_diag = torch.diag(H).mean().clamp_min(1e-12)
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    d = damp
    while d <= max_damp * (1 + 1e-9):
        L, info = torch.linalg.cholesky_ex(H + d * mean_diag * eye)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info) == 0 and torch.isfinite(U).all():
                if d != damp:
                    log.warning("%s: Hessian was near-singular: dampening raised from %g to %g", name, damp, d)
                return U, d
        d *= 10
    raise NumericsError(
        f"{name}: Hessian is singular even with dampening {max_damp:g}; the calibration inputs are "
        "degenerate (NaN/Inf activations?): check the model and use more calibration text"
    )
