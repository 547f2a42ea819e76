"""Triton FP4 kernels for NVIDIA GPUs from Ampere (sm_80) on, Hopper first, checked against `mrgptq.formats`
(which GPUs each launch builds for: `targets.py`).

`quantize.rotate_quantize`: fused block-Hadamard + FP4 quantization of activations (kernel 1);
`quantize.rotate`: the online rotation alone (W4A16); `gemm.fp4_matmul`: W4A16 and W4A4 GEMMs (kernels 2, 3).
`fp4_linear` is what QuantLinear calls on CUDA; on CPU the plain-PyTorch path in `runtime.qlinear` runs.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import re

import torch


@functools.cache
def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def available(x: torch.Tensor | None = None) -> bool:
    """Triton is installed and x (if given) lives on a CUDA device in a 16-bit float dtype, an Ampere or newer
    GPU (bf16 tensor cores, sm_80+); elsewhere QuantLinear and GPTQ take their PyTorch paths."""
    if not _has_triton():
        return False
    if x is None:
        return torch.cuda.is_available() and _recent(torch.device("cuda"))
    return x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and _recent(x.device)


def _recent(device: torch.device) -> bool:
    from .fp4 import ptx_arch

    return ptx_arch(device) >= 80


TC_ROWS = 128  # up to this many rows: the tensor-core decode GEMMs (tcgemv.py; midgemm.py on Hopper, 17-128 rows)
WS_ROWS = 16  # up to this many bf16 rows on Hopper: its warp-specialized form (wsgemv.py; MRGPTQ_WS=0: off;
# it takes up to 32, but at 32 rows it was slower than tc_gemv at 3 of the 4 Llama-3-8B shapes: BENCHMARKS.md),
# or for small weights the row-split form (rowgemv.py, `rowgemv.fits`; MRGPTQ_ROW=0: off)
GEMV_ROWS = 2  # else up to this many rows (decode): the CUDA-core GEMV (it re-reads the weight per row)
DENSE_ROWS = 64  # from this many rows (prefill) on: dequantize, then a 16-bit cuBLAS GEMM
MAX_ELEMENTS = 2**31 - 1  # the kernels address elements with int32 offsets: larger inputs run in row chunks


def tc_weight(module):
    """The module's weight in the tensor-core decode layout, built once on first use (None if it does not fit)."""
    from .tcgemv import packed_once, tc_pack

    module._tc = packed_once(getattr(module, "_tc", None), module.weight_packed.device,
                             lambda: tc_pack(module.weight_packed, module.weight_scale, module.spec))
    return module._tc or None


def _operands(x2: torch.Tensor, module):
    """The GEMM's left operand: x R (W4A16), or Q_a(x R) as (codes, scales) (W4A4)."""
    from .quantize import rotate, rotate_quantize

    rot = module.rotation
    block = None if rot is None or rot.is_identity else rot.size
    if module.act_spec is not None:
        return rotate_quantize(x2, module.act_spec, block, module.act_rule, module.input_global_scale)
    return (x2 if block is None else rotate(x2, block)), None


# Every launch asks for fused multiply-adds (FMA contraction) by name rather than through Triton's default: the
# kernels' speed and the bit-for-bit checks were measured with it, Triton 3.9 warns when the default is used, and
# 3.10 turns the default off.
LAUNCH = {"enable_fp_fusion": True}

GLUON_TRITON = ((3, 6), (3, 9))  # the Triton releases the Gluon kernels have run on, checked on a GPU


def triton_release() -> tuple[int, int] | None:
    """(major, minor) of the installed Triton; None without one."""
    if not _has_triton():
        return None
    import triton

    m = re.match(r"(\d+)\.(\d+)", triton.__version__)
    return (int(m.group(1)), int(m.group(2))) if m else None


@functools.cache
def has_gluon() -> bool:
    """This Triton ships Gluon in an API the Gluon kernels (ws_gemv, row_gemv, regquant) have run on. Gluon is
    experimental and changes between releases (`gluonapi.py` bridges 3.6 and 3.9), so only GLUON_TRITON
    releases use it; elsewhere the Triton-language kernels run. MRGPTQ_GLUON=1 tries it on any Triton that
    ships Gluon, =0 turns it off."""
    if not _has_triton() or importlib.util.find_spec("triton.experimental.gluon") is None:
        return False
    force = os.environ.get("MRGPTQ_GLUON")
    if force in ("0", "1"):
        return force == "1"
    return triton_release() in GLUON_TRITON


@functools.cache
def ws_enabled(device: torch.device) -> bool:
    """The warp-specialized decode GEMM runs here: Triton ships Gluon, the GPU is a Hopper, not switched off."""
    if os.environ.get("MRGPTQ_WS", "1") == "0" or not has_gluon():
        return False
    from .wsgemv import gluon_ok

    return gluon_ok(device)


def _tc_product(module, tw, x2, out_dtype, alpha=None):
    """The decode GEMM on the re-laid weight after the online rotation: up to WS_ROWS bf16 rows on Hopper the
    row-split kernel for small weights (`rowgemv.fits`; MRGPTQ_ROW=0: off) or the warp-specialized one, then
    where `midgemm.serves` the shared-x one (MRGPTQ_WS=0 turns both off), else `tc_gemv` (W4A4 activations
    dequantized first: few rows, and their values are then exact).
    alpha: the product's factor (default 1 / the module's weight per-tensor scale)."""
    from .gemm import dequantize

    gw, ga = module.global_divisors()
    alpha = 1.0 / gw if alpha is None else alpha
    a, a_scales = _operands(x2, module)
    if a_scales is not None:
        a = dequantize(a, a_scales, module.act_spec, ga, torch.bfloat16)
    return decode_gemm(a, tw, alpha, out_dtype)


def decode_gemm(a: torch.Tensor, tw, alpha: float, out_dtype=torch.bfloat16) -> torch.Tensor:
    """a W^T for up to TC_ROWS rows on a re-laid weight, by the kernel that serves this many rows (`_tc_product`)."""
    from .tcgemv import tc_gemv

    if out_dtype == torch.bfloat16 and ws_enabled(a.device):
        if a.shape[0] <= WS_ROWS:
            return hopper_decode(a, tw, alpha)
        from . import midgemm
        from .gemm import _sm_count

        if midgemm.serves(a.shape[0], tw.N, tw.K, _sm_count(a.device)):
            return midgemm.mid_gemm(a, tw, alpha)
    return tc_gemv(a, tw, alpha, out_dtype=out_dtype)


def hopper_decode(a: torch.Tensor, tw, alpha: float) -> torch.Tensor:
    """The Gluon decode GEMM for up to WS_ROWS bf16 rows on Hopper: row-split where `rowgemv.fits`
    (MRGPTQ_ROW=0: off), else warp-specialized."""
    from . import rowgemv
    from .wsgemv import ws_gemv

    if os.environ.get("MRGPTQ_ROW", "1") != "0" and rowgemv.fits(tw, a.shape[0]):
        return rowgemv.row_gemv(a, tw, alpha)
    return ws_gemv(a, tw, alpha)


def sibling_product(x: torch.Tensor, group) -> torch.Tensor:
    """Every member's output side by side, (..., sum of out_features): one rotation, one decode GEMM."""
    m = group.members[0]
    K = x.shape[-1]
    y = _tc_product(m, group.weight(), x.reshape(-1, K), x.dtype, group.alpha)
    if group.bias is not None:
        y = y + group.bias.to(y.dtype)
    return y.reshape(*x.shape[:-1], -1)


def fp4_linear(x: torch.Tensor, module, use_group: bool = True) -> torch.Tensor:
    """QuantLinear's forward on the GPU: rotate (+ quantize) the input, then the packed-weight product.

    Up to TC_ROWS rows (decode, small batches) the tensor-core decode GEMM on the weight re-laid once
    (`_tc_product`), for a sibling group (`siblings.py`, unless `use_group` is False) once for all members;
    where the weight does not fit that layout, the CUDA-core GEMV up to GEMV_ROWS, then the FP4 tile GEMM;
    prefill dequantizes the operands in one pass each (bit-identical to formats.dequantize) and uses cuBLAS,
    which on Hopper beats decoding inside the GEMM loop (BENCHMARKS.md); MXFP4 W4A4 prefill turns both operands
    into exact E4M3 with per-row scales and runs one FP8 cuBLAS GEMM (`fp8.py`). Prefill siblings share the
    prepared input."""
    from .fp8 import fp8_matmul, fp8_rows, has_fp8_gemm
    from .gemm import dequantize, fp4_matmul
    from .gemv import fp4_gemv

    lead, K = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, K)
    rows = x2.shape[0]
    width = max(x2.stride(0), K, module.out_features)
    if rows * width > MAX_ELEMENTS:  # (e.g. a 100k-token prefill of a 28k-wide linear) each chunk below the limit
        step = MAX_ELEMENTS // width
        y = torch.cat([fp4_linear(x2[i:i + step], module, use_group=False) for i in range(0, rows, step)])
        return y.reshape(*lead, y.shape[-1])
    group = getattr(module, "_siblings", None) if use_group else None
    if group is not None and group.one_gemm(rows):  # q/k/v or gate/up: one product
        return group.output(module, x, lambda: sibling_product(x2, group)).reshape(*lead, -1)
    gw, ga = module.global_divisors()
    tw = tc_weight(module) if rows <= TC_ROWS else None
    if tw is not None:
        y = _tc_product(module, tw, x2, x.dtype)
    elif rows >= DENSE_ROWS:  # prefill: 16-bit (or FP8) operands for one cuBLAS GEMM
        w_fp8 = module.act_spec is not None and module.spec.scale_dtype == "e8m0" and has_fp8_gemm(x.device)

        def left():  # siblings share it: one rotation (+ quantization, conversion) for the group
            a, a_scales = _operands(x2, module)
            if a_scales is None:
                return a, None
            if w_fp8:
                return fp8_rows(a, a_scales, module.act_spec)
            return dequantize(a, a_scales, module.act_spec, ga, x.dtype), None

        a, ra = left() if group is None else group.shared(module, x, left)
        if ra is not None:
            y = fp8_matmul(a, ra, *fp8_rows(module.weight_packed, module.weight_scale, module.spec),
                           module.kernel_alpha(), out_dtype=x.dtype)
        else:
            w = dequantize(module.weight_packed, module.weight_scale, module.spec, gw, x.dtype)
            y = torch.nn.functional.linear(a, w)
    else:
        a, a_scales = _operands(x2, module)
        if rows <= GEMV_ROWS:
            if a_scales is not None:
                a = dequantize(a, a_scales, module.act_spec, ga, torch.float32)
            y = fp4_gemv(a, module.weight_packed, module.weight_scale, module.spec, 1.0 / gw, out_dtype=x.dtype)
        else:
            y = fp4_matmul(a, module.weight_packed, module.weight_scale, module.spec, module.kernel_alpha(),
                           a_scales=a_scales, out_dtype=x.dtype)
    if module.bias is not None:
        y = y + module.bias.to(y.dtype)
    return y.reshape(*lead, y.shape[-1])


def supports(module) -> bool:
    """Whether the kernels cover this QuantLinear (FP4 weights, power-of-two Hadamard or no rotation)."""
    rot = module.rotation
    if not module.spec.is_fp4 or (module.act_spec is not None and module.act_spec != module.spec):
        return False
    rotated = rot is not None and not rot.is_identity
    if rotated and (rot.kind != "hadamard" or rot.signs or rot.size & (rot.size - 1) or not 16 <= rot.size <= 256):
        return False
    return module.in_features % 64 == 0
