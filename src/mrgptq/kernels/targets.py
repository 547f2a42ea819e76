"""Which GPUs the kernels build for, checked without one: each kernel launch the Python wrappers make, compiled
by Triton's own toolchain (ptxas) for chosen compute capabilities.

The kernels pick their inline PTX and fp8 paths by `fp4.ptx_arch`. An instruction a GPU lacks (Hopper's
`mul.bf16x2` and `min.u16x2`, Ada's FP8 conversions, the fp8 type itself before sm_89) fails only when that GPU
compiles the kernel, which tests on a Hopper never see. Here the wrappers run on small CPU tensors with
MRGPTQ_PTX_ARCH set to each target; their launches are captured instead of run, then compiled for that target:

    python -m mrgptq.kernels.targets --arch 80,86,89,90,100,120

Needs Triton without TRITON_INTERPRET (the interpreter compiles nothing); no GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from dataclasses import dataclass
from unittest import mock

import torch

from ..errors import MrgptqError

DEFAULT_ARCHES = (80, 86, 89, 90, 100, 120)  # A100; RTX 30xx, A10; L4, L40S, RTX 40xx; H100, H200; B200; RTX 50xx
_OPTIONS = ("num_warps", "num_stages", "maxnreg", "num_ctas", "enable_fp_fusion")
_TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int64: "i64",
          torch.int32: "i32", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8", torch.float8_e4m3fn: "fp8e4nv"}


@dataclass
class Launch:
    case: str
    kernel: object  # the JITFunction
    args: tuple
    kwargs: dict


@dataclass
class Result:
    case: str
    kernel: str
    arch: int
    error: str | None  # None: compiled (or, with refused, the wrapper's reason)
    refused: bool = False  # the wrapper does not offer this case on this target (an MrgptqError)


def _cases():
    """(name, call) of every wrapper that launches a kernel, with small CPU tensors of the right dtypes."""
    from .. import formats
    from . import fp8, gemm, gemv, gptq, quantize, tcgemv

    x = (torch.randn(64, 512, generator=torch.Generator().manual_seed(0)) * 0.5).bfloat16()
    gs = torch.tensor([64.0])
    yield "rotate b32", lambda: quantize.rotate(x, 32)
    for fmt, block, extra in (("mxfp4", 32, {}), ("mxfp4", 64, {}), ("mxfp4", None, {}),
                              ("mxfp4", 32, {"rule": "four-thirds"}), ("nvfp4", 16, {"global_scale": gs})):
        spec = formats.get_spec(fmt)
        yield f"rotate_quantize {fmt} b{block} {extra.get('rule', '')}".rstrip(), \
            lambda spec=spec, block=block, extra=extra: quantize.rotate_quantize(x, spec, block, **extra)
    yield "rotate_quantize nvfp4 fp16", lambda: quantize.rotate_quantize(x.half(), formats.get_spec("nvfp4"), 16,
                                                                         global_scale=gs)
    for fmt in ("mxfp4", "nvfp4"):
        spec = formats.get_spec(fmt)
        q = formats.quantize(x[:256].float() * 0.05, spec)
        p, s = formats.pack(q.codes), q.scales
        a = formats.quantize(x[:32].float(), spec)
        ap, as_ = formats.pack(a.codes), a.scales
        tw = tcgemv.tc_pack(p, s, spec)
        yield f"tc_gemv {fmt}", lambda tw=tw: tcgemv.tc_gemv(x[:1], tw)
        yield f"fp4_gemv {fmt}", lambda p=p, s=s, spec=spec: gemv.fp4_gemv(x[:1].float(), p, s, spec)
        yield f"fp4_matmul w4a16 {fmt}", lambda p=p, s=s, spec=spec: gemm.fp4_matmul(x[:32], p, s, spec)
        yield f"fp4_matmul w4a4 {fmt}", \
            lambda p=p, s=s, spec=spec, ap=ap, as_=as_: gemm.fp4_matmul(ap, p, s, spec, a_scales=as_)
        for dt in (torch.bfloat16, torch.float16, torch.float32):
            yield f"dequantize {fmt} {str(dt)[6:]}", lambda p=p, s=s, spec=spec, dt=dt: gemm.dequantize(p, s, spec,
                                                                                                      dtype=dt)
        if fmt == "mxfp4":
            yield "fp8_rows mxfp4", lambda p=p, s=s, spec=spec: fp8.fp8_rows(p, s, spec)
        yield f"row_gemv {fmt}", lambda tw=tw: _hopper("rowgemv", "row_gemv", x[:1], tw)
        yield f"ws_gemv {fmt}", lambda tw=tw: _hopper("wsgemv", "ws_gemv", x[:1], tw)
        yield f"mid_gemm {fmt}", lambda tw=tw: _hopper("midgemm", "mid_gemm", x[:40], tw, pingpong=False)
        yield f"mid_gemm pingpong {fmt}", lambda tw=tw: _hopper("midgemm", "mid_gemm", x.repeat(2, 1)[:100], tw)  # pick
    w1 = torch.randn(32, 128, generator=torch.Generator().manual_seed(1))
    yield "gptq lazy block", lambda: gptq.lazy_block(w1, torch.eye(128), torch.ones(32, 128),
                                                     torch.zeros(32, 128, dtype=torch.int32), torch.zeros(32, 128),
                                                     0, 128)


def _hopper(module: str, name: str, *args, **kwargs):
    """A Gluon decode GEMM (`module.name`), which QuantLinear runs on Hopper only (`wsgemv.gluon_ok`)."""
    import importlib

    from . import has_gluon
    from .fp4 import ptx_arch

    if ptx_arch(torch.device("cpu")) != 90:
        raise MrgptqError("a Hopper-only kernel")
    if not has_gluon():
        raise MrgptqError("this Triton's Gluon is not the API the Gluon kernels use (kernels.has_gluon)")
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)(*args, **kwargs)


@contextlib.contextmanager
def _capturing(arch: int):
    """Launches recorded instead of run, with MRGPTQ_PTX_ARCH = arch and Gluon's Hopper check answering for it."""
    from triton.runtime.jit import JITFunction

    from . import occupancy, wsgemv

    launches: list = []

    def run(self, *args, grid, warmup, **kwargs):
        launches.append((self, args, kwargs))

    with mock.patch.dict(os.environ, {"MRGPTQ_PTX_ARCH": str(arch)}), \
            mock.patch.object(JITFunction, "run", run), \
            mock.patch.object(occupancy, "resident", lambda *a, **k: 4), \
            mock.patch.object(wsgemv, "gluon_ok", lambda device: arch == 90):
        yield launches


def launches(arch: int) -> tuple[list[Launch], list[Result]]:
    """Every case's launches at this target, and the cases the wrappers refuse there (an MrgptqError, e.g. FP8
    before sm_89), as results."""
    out, refused = [], []
    for name, call in _cases():
        with _capturing(arch) as got:
            try:
                call()
            except MrgptqError as e:
                refused.append(Result(name, "-", arch, str(e), refused=True))
                continue
        out += [Launch(name, fn, args, kw) for fn, args, kw in got]
    return out, refused


def _signature(fn, args: tuple, kwargs: dict):
    """Triton's (signature, constexprs, attributes, options) for one captured launch: pointers 16-byte aligned
    and integers that are multiples of 16 marked so, as a launch specializes them (cp.async needs the
    alignment to copy 16 bytes)."""
    from triton.runtime.jit import mangle_type

    vals = dict(zip(fn.arg_names, args))
    vals.update({k: v for k, v in kwargs.items() if k not in _OPTIONS})
    sig, const, attrs = {}, {}, {}
    for p in fn.params:
        v = vals[p.name]
        if p.is_constexpr:
            sig[p.name], const[p.name] = "constexpr", v
            continue
        aligned = v.data_ptr() % 16 == 0 if isinstance(v, torch.Tensor) else (
            isinstance(v, int) and not isinstance(v, bool) and v % 16 == 0)
        if aligned and not p.do_not_specialize:
            attrs[(p.num,)] = [["tt.divisibility", 16]]
        if hasattr(v, "block_shape") and hasattr(v, "layout"):  # a TMA descriptor: block, dtype, shared layout
            sig[p.name] = mangle_type(v)  # as the launch spells it (Triton 3.6 descriptors have no __mangle__)
        elif isinstance(v, torch.Tensor):
            sig[p.name] = "*" + _TYPES[v.dtype]
        elif isinstance(v, bool):
            sig[p.name] = "i1"
        elif isinstance(v, int):
            sig[p.name] = "i32" if -2 ** 31 <= v < 2 ** 31 else "i64"
        elif isinstance(v, float):
            sig[p.name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: argument {p.name} of type {type(v).__name__}")
    return sig, const, attrs, {k: kwargs[k] for k in _OPTIONS if k in kwargs}


def build(launch: Launch, arch: int):
    """The compiled kernel (Triton's CompiledKernel: cubin, PTX, metadata) of one launch for sm_<arch>."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = launch.kernel
    sig, const, attrs, opts = _signature(fn, launch.args, launch.kwargs)
    source = ASTSource
    if getattr(fn, "is_gluon", lambda: False)():
        from triton.experimental.gluon._runtime import GluonASTSource as source
    return triton.compile(source(fn, sig, const, attrs), target=GPUTarget("cuda", arch, 32), options=opts)


def compile_launch(launch: Launch, arch: int) -> Result:
    """Compile one launch for sm_<arch> (to a cubin, through ptxas); the error's first line if it fails."""
    fn = launch.kernel
    try:
        build(launch, arch)
        return Result(launch.case, fn.__name__, arch, None)
    except Exception as e:  # noqa: BLE001 (a compile error of any kind is the answer)
        text = str(e).splitlines() or [type(e).__name__]
        reason = ([ln for ln in text if ln.startswith("ptxas") and "error" in ln]  # ptxas' own line
                  or [ln for ln in text if re.search(r":\s*error\s*:", ln)]  # an MLIR diagnostic
                  or [ln for ln in text if "rror" in ln] or text)
        return Result(launch.case, fn.__name__, arch, reason[0].strip()[:300])


def check(arches=DEFAULT_ARCHES, progress=None) -> list[Result]:
    """Compile every kernel launch for every target arch."""
    from .fp4 import INTERPRET

    if INTERPRET:
        raise MrgptqError("kernels.targets: unset TRITON_INTERPRET (the interpreter compiles nothing)")
    results = []
    for arch in arches:
        for result in _built(arch):
            results.append(result)
            if progress:
                progress(result)
    return results


def _built(arch: int):
    """The wrappers' refusals at this target, then each launch's build, as it finishes."""
    got, refused = launches(arch)
    yield from refused
    for launch in got:
        yield compile_launch(launch, arch)


def _status(r: Result) -> str:
    return f"refused: {r.error}" if r.refused else "ok" if r.error is None else f"FAILED: {r.error}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mrgptq.kernels.targets", description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default=",".join(map(str, DEFAULT_ARCHES)),
                    help="compute capabilities to build for, comma-separated (80 = sm_80)")
    args = ap.parse_args(argv)
    arches = [int(a) for a in args.arch.split(",")]
    res = check(arches, progress=lambda r: print(f"sm_{r.arch:<3} | {r.case:37s} | {r.kernel:24s} | "
                                                 f"{_status(r)}", flush=True))
    failed = [r for r in res if r.error and not r.refused]
    print(f"{len(res) - len(failed)} of {len(res)} launch builds compiled or were refused by their wrapper "
          f"({sum(r.refused for r in res)} refused); {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
