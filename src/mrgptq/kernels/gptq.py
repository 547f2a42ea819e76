"""GPTQ's inner loop on the GPU: one launch per lazy block instead of ~15 small launches per column.

GPTQ's rows are independent: row r's column j only depends on row r's earlier columns and on the shared
upper Cholesky factor U of H^-1. So each program keeps a tile of rows x (lazy block) in registers and walks
its columns in order, exactly as `algorithms.gptq` does for all rows at once:

    q_j = s_j * Q(w_j / s_j);   e_j = (w_j - q_j) / U_jj;   w_{j..} -= e_j U_{j, j..}

Scales s are fixed when the loop reaches a column (static scales, or the group's dynamic scales chosen by the
caller just before), so the only format math here is E2M1 rounding, shared with the other kernels (fp4.py).
float32 throughout (the CPU reference accumulates in float64): codes can differ where a value sits within
rounding noise of a decision boundary; tests bound how often and that the layer error is unchanged.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..errors import MrgptqError
from . import LAUNCH
from .fp4 import e2m1_decode, e2m1_encode

BLOCK_ROWS = 16


@triton.jit
def _gptq_lazy_block(W_ptr, U_ptr, S_ptr, C_ptr, E_ptr, rows, start, stop,
                     stride_w, stride_u, stride_s, stride_c, stride_e,
                     NB: tl.constexpr, BLOCK_R: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, NB)
    rmask = r < rows
    tile = rmask[:, None] & (cols[None, :] < NB)
    W = tl.load(W_ptr + r[:, None] * stride_w + cols[None, :], mask=tile, other=0.0)
    for i in range(start, stop):
        w = tl.sum(tl.where(cols[None, :] == i, W, 0.0), axis=1)
        s = tl.load(S_ptr + r * stride_s + i, mask=rmask, other=0.0)
        code = e2m1_encode(w / tl.where(s > 0, s, 1.0))
        code = tl.where(s > 0, code, tl.zeros_like(code))
        q = e2m1_decode(code) * s
        u = tl.load(U_ptr + i * stride_u + cols)  # row i of the upper factor: zero left of the diagonal
        err = (w - q) / tl.load(U_ptr + i * stride_u + i)
        W = W - err[:, None] * u[None, :]
        tl.store(C_ptr + r * stride_c + i, code, mask=rmask)
        tl.store(E_ptr + r * stride_e + i, err, mask=rmask)
    tl.store(W_ptr + r[:, None] * stride_w + cols[None, :], W, mask=tile)


def lazy_block(W1: torch.Tensor, U1: torch.Tensor, S1: torch.Tensor, codes: torch.Tensor, errs: torch.Tensor,
               start: int, stop: int) -> None:
    """Columns [start, stop) of one lazy block, in place: W1 (rows, nb) float32 is error-updated, codes and errs
    (rows, nb) receive those columns' E2M1 codes and scaled errors. U1 (nb, nb): the block of U; S1 (rows, nb):
    each column's effective scale. nb must be a power of two (GPTQ's lazy block is 128)."""
    rows, nb = W1.shape
    if nb & (nb - 1) or W1.dtype != torch.float32 or U1.dtype != torch.float32:
        raise MrgptqError(f"gptq lazy block: need float32 and a power-of-two width, got {nb} {W1.dtype}")
    for t in (W1, U1, S1, codes, errs):
        if t.stride(-1) != 1:
            raise MrgptqError("gptq lazy block: tensors must be contiguous in their last dimension")
    grid = (triton.cdiv(rows, BLOCK_ROWS),)
    _gptq_lazy_block[grid](W1, U1, S1, codes, errs, rows, start, stop, W1.stride(0), U1.stride(0), S1.stride(0),
                           codes.stride(0), errs.stride(0), NB=nb, BLOCK_R=BLOCK_ROWS, **LAUNCH)
