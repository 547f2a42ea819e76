"""GPTQ (Frantar et al., 2022): quantize columns one at a time and push each column's error onto the
columns not yet quantized, weighted by the inverse Hessian of the layer's inputs:

    for column j:  q_j = Q(w_j);  e = (w_j - q_j) / [H^-1]_jj;  W[:, j+1:] -= e [H^-1]_{j, j+1:}

with the upper Cholesky factor of H^-1 standing in for H^-1's rows (lazy updates in blocks of 128).
Group scales are chosen by the format's scale rule either when the group is reached ("dynamic", on the
error-updated weights) or once from the whole weight before the loop ("static", the MR-GPTQ reference).
Act-order visits columns by decreasing H_jj but keeps groups in the original column order (static groups),
so the packed layout is the same as without act-order and no runtime permutation is needed.
On CUDA the column loop of each lazy block runs as one Triton kernel (kernels/gptq.py, float32); elsewhere, and
for INT4, the column-by-column loop below (float64) is the reference.
"""
from __future__ import annotations

import torch

from .. import formats
from ..errors import MrgptqError
from ..formats import FormatSpec, QuantizedTensor
from ..formats.codec import decode
from .damping import cholesky_inverse_upper, prepare


def gptq(
    W: torch.Tensor,
    H: torch.Tensor,
    spec: FormatSpec,
    *,
    scale_rule: str = "spec",
    scales: str = "dynamic",
    act_order: bool = False,
    block_size: int = 128,
    damp: float = 0.01,
    name: str = "weight",
) -> QuantizedTensor:
    """Quantize W (out, in) against Hessian H (in, in). Returns codes/scales in the original column order."""
    formats.check_input(W, spec, name)
    rows, cols = W.shape
    if H.shape != (cols, cols):
        raise MrgptqError(f"{name}: Hessian shape {tuple(H.shape)} does not match weight columns {cols}")
    if scales not in ("dynamic", "static"):
        raise MrgptqError(f"scales must be 'dynamic' or 'static', got {scales!r}")
    static = scales == "static" or act_order
    g = spec.group_size
    block_size = max(g, block_size // g * g)  # a group never straddles two lazy blocks
    dev = W.device
    W0 = W.float()
    Hd, Wd, _ = prepare(H.to(dev), W0, damp)
    global_scale = formats.global_scale_for(W0, spec, scale_rule)

    ngroups = cols // g
    stored = eff = zeros = None
    if static:
        stored, eff, zeros = formats.choose_scales(Wd.reshape(rows, ngroups, g), spec, scale_rule, global_scale)
    else:
        stored = torch.empty((rows, ngroups), dtype=_scale_dtype(spec), device=dev)
        eff = torch.empty((rows, ngroups), dtype=torch.float32, device=dev)
        zeros = None if spec.symmetric else torch.empty((rows, ngroups), dtype=torch.uint8, device=dev)

    perm = torch.argsort(torch.diag(Hd), descending=True) if act_order else torch.arange(cols, device=dev)
    on_gpu = _kernel_ok(W0, spec)
    work = torch.float32 if on_gpu else torch.float64  # the GPU kernel works in float32
    Wp = Wd[:, perm].to(work)
    U, _ = cholesky_inverse_upper(Hd[perm][:, perm], damp, name)
    U = U.to(work)
    codes = torch.empty((rows, cols), dtype=torch.uint8, device=dev)

    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        if on_gpu:
            E1 = _lazy_block_gpu(Wp[:, i1:i2], U[i1:i2, i1:i2], perm[i1:i2], codes, stored, eff, spec, scale_rule,
                                 global_scale, static)
        else:
            E1 = _lazy_block(Wp[:, i1:i2], U[i1:i2, i1:i2], perm[i1:i2], codes, stored, eff, zeros, spec,
                             scale_rule, global_scale, static)
        Wp[:, i2:] -= E1 @ U[i1:i2, i2:]

    return QuantizedTensor(codes, stored, global_scale, spec, zeros)


def _lazy_block(Wb, Ub, perm_b, codes, stored, eff, zeros, spec, scale_rule, global_scale, static):
    """The reference: one column at a time over a lazy block (float64). Returns the block's scaled errors."""
    g = spec.group_size
    W1 = Wb.clone()
    E1 = torch.zeros_like(W1)
    for i in range(W1.shape[1]):
        j = int(perm_b[i])  # original column index
        grp = j // g
        if not static and j % g == 0:
            s, e, z = formats.choose_scales(W1[:, i : i + g].float().unsqueeze(1), spec, scale_rule, global_scale)
            stored[:, grp], eff[:, grp] = s[:, 0], e[:, 0]
            if zeros is not None:
                zeros[:, grp] = z[:, 0]
        w = W1[:, i].float()
        sc = eff[:, grp]
        z = None if zeros is None else zeros[:, grp]
        c = formats.encode_groups(w.view(-1, 1, 1), spec, sc.view(-1, 1), None if z is None else z.view(-1, 1))
        c = c.view(-1)
        q = decode(c, spec, z) * sc
        codes[:, j] = c
        err = (w.double() - q.double()) / Ub[i, i]
        W1[:, i:] -= err.unsqueeze(1) * Ub[i, i:].unsqueeze(0)
        E1[:, i] = err
    return E1


def _kernel_ok(W: torch.Tensor, spec: FormatSpec) -> bool:
    """The Triton lazy-block kernel runs for FP4 formats on CUDA (MRGPTQ_KERNELS=0 turns it off)."""
    import os

    from .. import kernels

    return W.is_cuda and spec.is_fp4 and os.environ.get("MRGPTQ_KERNELS", "1") != "0" and kernels.available()


def _lazy_block_gpu(Wb, Ub, perm_b, codes, stored, eff, spec, scale_rule, global_scale, static):
    """The same lazy block with the Triton kernel: one launch (static scales) or one per group (dynamic)."""
    from ..kernels.gptq import lazy_block

    g = spec.group_size
    rows, nb = Wb.shape
    NB = max(16, 1 << (nb - 1).bit_length())  # the kernel's tile width: a power of two, zero-padded
    W1 = torch.zeros((rows, NB), dtype=torch.float32, device=Wb.device)
    W1[:, :nb] = Wb
    U1 = torch.zeros((NB, NB), dtype=torch.float32, device=Wb.device)
    U1[:nb, :nb] = Ub
    S1 = torch.zeros((rows, NB), dtype=torch.float32, device=Wb.device)
    C1 = torch.empty((rows, NB), dtype=torch.uint8, device=Wb.device)
    E1 = torch.zeros((rows, NB), dtype=torch.float32, device=Wb.device)
    if static:
        S1[:, :nb] = eff[:, perm_b // g]
        lazy_block(W1, U1, S1, C1, E1, 0, nb)
    else:  # groups are contiguous without act-order: choose each group's scales when the loop reaches it
        j0 = int(perm_b[0])
        for a in range(0, nb, g):
            grp = (j0 + a) // g
            s, e, _ = formats.choose_scales(W1[:, a : a + g].unsqueeze(1), spec, scale_rule, global_scale)
            stored[:, grp], eff[:, grp] = s[:, 0], e[:, 0]
            S1[:, a : a + g] = e[:, :1]
            lazy_block(W1, U1, S1, C1, E1, a, a + g)
    codes[:, perm_b] = C1[:, :nb]
    return E1[:, :nb]


def _scale_dtype(spec: FormatSpec) -> torch.dtype:
    return {"e8m0": torch.uint8, "e4m3": torch.float8_e4m3fn, "fp32": torch.float32}[spec.scale_dtype]
