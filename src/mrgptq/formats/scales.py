"""Scale rules: how each group's shared scale is chosen from its values.

`spec`   : the format's published rule (MX: 2^(floor(log2 amax) - 2); NVFP4: e4m3(amax/6 * global); INT: amax/7).
`ceil`   : MX only: the smallest power of two with amax/scale <= 6, so nothing in a group clips.
`rounded`: MX only: amax rounded to E2M1 precision first (what vLLM / compressed-tensors do).
`four-thirds`: MX only, the MR-GPTQ reference's choice: the spec's exponent, but every scale times a per-tensor 4/3
           (stored as a global scale of 3/4 that the GEMM absorbs), so the top code 6 * 4/3 = 8 covers amax: no clipping.
`mse`    : per group, the candidate scale with the least sum |x - q(x)|^p (p = 2.4 as in MR-GPTQ's
           reference observer), candidates already cast to the scale encoding so the error is the true one.
"""
from __future__ import annotations

import torch

from . import codec
from .spec import E2M1_MAX, E4M3_MAX, E8M0_BIAS, FormatError, FormatSpec

SCALE_RULES = ("spec", "ceil", "rounded", "four-thirds", "mse")
MX_ONLY_RULES = ("ceil", "rounded", "four-thirds")
ONLINE_RULES = ("spec", "ceil", "rounded", "four-thirds")  # computable per call: usable for activations
FOUR_THIRDS_GLOBAL = 0.75  # dequant divides by the global scale: x = grid * 2^e / 0.75
MSE_GRID = 100  # shrink factors from 1.0 to 0.2, as in the reference observer
MSE_NORM = 2.4


def floor_log2(a: torch.Tensor) -> torch.Tensor:
    """Exact floor(log2(a)) for positive finite float32 (frexp, no log rounding); -127 for zeros."""
    _, e = torch.frexp(a)
    return torch.where(a > 0, e - 1, torch.full_like(e, -E8M0_BIAS))


def mx_exponent(amax: torch.Tensor, rule: str) -> torch.Tensor:
    """Unbiased shared exponent per group, clamped to E8M0's range [-127, 127]."""
    e0 = floor_log2(amax) - 2  # spec: largest power of two below amax, divided by 2^emax(E2M1)=4
    if rule == "four-thirds":
        pass  # the spec exponent; the 4/3 lives in the per-tensor global scale
    elif rule == "ceil":
        e0 = e0 + (amax > torch.ldexp(torch.full_like(amax, E2M1_MAX), e0)).to(e0.dtype)
    elif rule == "rounded":
        e0 = e0 + (amax >= torch.ldexp(torch.full_like(amax, 7.0), e0)).to(e0.dtype)
    elif rule != "spec":
        raise FormatError(f"unknown MX scale rule {rule!r}: choose one of {', '.join(SCALE_RULES)}")
    return e0.clamp(-E8M0_BIAS, E8M0_BIAS)


def _div(a: torch.Tensor, c: float) -> torch.Tensor:
    """a / c correctly rounded on every device. CUDA turns `tensor / Python number` into a multiply by the
    reciprocal, which rounds differently: NVFP4 scales on the GPU then landed one E4M3 step away from the CPU's
    (and the kernels') where g * amax / 6 fell next to a rounding boundary."""
    return a / torch.tensor(c, dtype=a.dtype, device=a.device)


def e8m0_to_float(codes: torch.Tensor) -> torch.Tensor:
    return torch.ldexp(torch.ones(codes.shape, device=codes.device), codes.to(torch.int32) - E8M0_BIAS)


def nv_global_scale(x: torch.Tensor) -> torch.Tensor:
    """Per-tensor FP32 scale that maps the tensor's amax to the top of E4M3 x E2M1 (448 * 6)."""
    amax = x.detach().abs().amax().float()
    g = (E4M3_MAX * E2M1_MAX) / amax
    return torch.where(torch.isfinite(g) & (amax > 0), g, torch.ones_like(g)).reshape(())


def has_global_scale(spec: FormatSpec, rule: str) -> bool:
    """Whether quantizing with this format and rule yields a per-tensor scale (NVFP4, or MXFP4's 4/3 trick)."""
    return spec.global_scale or (spec.scale_dtype == "e8m0" and rule == "four-thirds")


def global_scale_for(x: torch.Tensor, spec: FormatSpec, rule: str) -> torch.Tensor | None:
    """The per-tensor scale a format/rule needs: NVFP4's amax-based one, the 4/3 trick's constant, or None."""
    if spec.global_scale:
        return nv_global_scale(x)
    if has_global_scale(spec, rule):
        return torch.tensor(FOUR_THIRDS_GLOBAL, dtype=torch.float32, device=x.device)
    return None


def e4m3(s: torch.Tensor) -> torch.Tensor:
    return s.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def _group_err(xg, eff, zeros, spec, p):
    safe = torch.where(eff > 0, eff, torch.ones_like(eff)).unsqueeze(-1)
    z = None if zeros is None else zeros.unsqueeze(-1)
    dq = codec.decode(codec.encode(xg / safe, spec, z), spec, z) * safe
    dq = torch.where(eff.unsqueeze(-1) > 0, dq, torch.zeros_like(dq))
    return (xg - dq).abs().pow(p).sum(-1)


def choose(xg: torch.Tensor, spec: FormatSpec, rule: str = "spec", global_scale=None, mse_norm=MSE_NORM):
    """Scales for groups `xg` (..., G, g) float32.

    Returns (stored, effective, zeros): stored in the format's scale dtype, effective float32 (..., G)
    such that value = grid[code] * effective, and uint8 zero points for asymmetric INT4 (else None).
    """
    if rule not in SCALE_RULES:
        raise FormatError(f"unknown scale rule {rule!r}: choose one of {', '.join(SCALE_RULES)}")
    amax = xg.abs().amax(-1)
    if spec.scale_dtype == "e8m0":
        gdiv = 1.0 if global_scale is None else float(global_scale)
        if rule != "mse":
            e = mx_exponent(amax, rule)
        else:
            base = mx_exponent(amax, "spec")
            best_err, e = None, base
            for d in (1, 0, -1, -2):
                cand = (base + d).clamp(-E8M0_BIAS, E8M0_BIAS)
                err = _group_err(xg, _div(e8m0_to_float(cand + E8M0_BIAS), gdiv), None, spec, mse_norm)
                if best_err is None:
                    best_err, e = err, cand
                else:
                    better = err < best_err
                    best_err, e = torch.where(better, err, best_err), torch.where(better, cand, e)
        stored = (e + E8M0_BIAS).to(torch.uint8)
        return stored, _div(e8m0_to_float(stored), gdiv), None

    if rule in MX_ONLY_RULES:
        raise FormatError(f"scale rule {rule!r} is for MXFP4 only; use 'spec' or 'mse' for {spec.name}")

    if spec.scale_dtype == "e4m3":
        g = global_scale.float()

        def cast(a):
            s = e4m3(g * _div(a, E2M1_MAX))
            return s, s.float() / g

        stored, eff = cast(amax)
        if rule == "mse":
            best = _group_err(xg, eff, None, spec, mse_norm)
            for f in torch.linspace(1.0, 0.2, MSE_GRID)[1:].tolist():
                s, ef = cast(amax * f)
                err = _group_err(xg, ef, None, spec, mse_norm)
                better = err < best
                best = torch.where(better, err, best)
                stored, eff = torch.where(better, s.float(), stored.float()).to(s.dtype), torch.where(better, ef, eff)
        return stored, eff, None

    # INT4, float32 scales
    def int_params(f):
        if spec.symmetric:
            return _div(amax * f, 7.0), None
        lo = xg.amin(-1).clamp(max=0) * f
        hi = xg.amax(-1).clamp(min=0) * f
        s = _div(hi - lo, 15.0)
        z = torch.round(-lo / torch.where(s > 0, s, torch.ones_like(s))).clamp(0, 15)
        return s, z.to(torch.uint8)

    eff, zeros = int_params(1.0)
    if rule == "mse":
        best = _group_err(xg, eff, zeros, spec, mse_norm)
        for f in torch.linspace(1.0, 0.2, MSE_GRID)[1:].tolist():
            s, z = int_params(f)
            err = _group_err(xg, s, z, spec, mse_norm)
            better = err < best
            best, eff = torch.where(better, err, best), torch.where(better, s, eff)
            if zeros is not None:
                zeros = torch.where(better, z, zeros)
    return eff.clone(), eff, zeros
