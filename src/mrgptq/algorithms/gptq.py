"""GPTQ (Frantar et al., 2022): quantize columns one at a time and push each column's error onto the
columns not yet quantized, weighted by the inverse Hessian of the layer's inputs:

    for column j:  q_j = Q(w_j);  e = (w_j - q_j) / [H^-1]_jj;  W[:, j+1:] -= e [H^-1]_{j, j+1:}

with the upper Cholesky factor of H^-1 standing in for H^-1's rows (lazy updates in blocks of 128).
Group scales are chosen by the format's scale rule either when the group is reached ("dynamic", on the
error-updated weights) or once from the whole weight before the loop ("static", the MR-GPTQ reference).
Act-order visits columns by decreasing H_jj but keeps groups in the original column order (static groups),
so the packed layout is the same as without act-order and no runtime permutation is needed.
"""
from __future__ import annotations

import torch

from .. import formats
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
        raise ValueError(f"{name}: Hessian shape {tuple(H.shape)} does not match weight columns {cols}")
    if scales not in ("dynamic", "static"):
        raise ValueError(f"scales must be 'dynamic' or 'static', got {scales!r}")
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
    Wp = Wd[:, perm].double()
    U, _ = cholesky_inverse_upper(Hd[perm][:, perm], damp)
    codes = torch.empty((rows, cols), dtype=torch.uint8, device=dev)

    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = Wp[:, i1:i2].clone()
        E1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = int(perm[i1 + i])  # original column index
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
            err = (w.double() - q.double()) / U1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            E1[:, i] = err
        Wp[:, i2:] -= E1 @ U[i1:i2, i2:]

    return QuantizedTensor(codes, stored, global_scale, spec, zeros)


def _scale_dtype(spec: FormatSpec) -> torch.dtype:
    return {"e8m0": torch.uint8, "e4m3": torch.float8_e4m3fn, "fp32": torch.float32}[spec.scale_dtype]
