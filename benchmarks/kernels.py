"""Build, check and time every FP4 kernel against cuBLAS bf16 and torch's fp8 _scaled_mm, in one run.

    python benchmarks/kernels.py --json out/kernels.json            # Llama-3-8B and -70B linears, H100
    python benchmarks/kernels.py --only w4a16 sweep --no-70b        # decode GEMV vs GEMM, and the GEMV tile sweep

Times are triton.testing.do_bench medians over rotating copies of the operands (more bytes than L2 holds),
so weights stream from HBM as in real decoding. Per call, so small shapes include Python launch cost;
`--cuda-graphs` replays the calls from one CUDA graph instead.
Prints a table; writes JSON.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
from pathlib import Path

import torch

SHAPES = {  # (N, K) of y = x W^T
    "8B qkv": (6144, 4096), "8B o": (4096, 4096), "8B gate_up": (28672, 4096), "8B down": (4096, 14336),
    "70B qkv": (10240, 8192), "70B o": (8192, 8192), "70B gate_up": (57344, 8192), "70B down": (8192, 28672),
}


def linears(with_70b=False):
    """(name, (N, K)) of the Llama-3-8B linears in SHAPES, and the 70B ones too if asked."""
    return [(k, v) for k, v in SHAPES.items() if with_70b or k.startswith("8B")]


L2_BYTES = 50 * 2**20


GRAPHS = False  # --cuda-graphs: time GPU work only, as decode under CUDA graphs sees it


def bench(fn_of_i, n_bufs):
    from triton.testing import do_bench

    if GRAPHS:  # one graph holding a call on every buffer; replay time / n_bufs, no Python launch cost
        torch.cuda.synchronize()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for i in range(n_bufs):  # warm up (compile, allocate) outside the capture
                fn_of_i(i)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for i in range(n_bufs):
                fn_of_i(i)
        return do_bench(g.replay, warmup=10, rep=100, return_mode="median") * 1e-3 / n_bufs

    state = {"i": 0}

    def run():
        fn_of_i(state["i"] % n_bufs)
        state["i"] += 1

    return do_bench(run, warmup=25, rep=100, return_mode="median") * 1e-3  # seconds


def copies(nbytes):
    return max(2, math.ceil(4 * L2_BYTES / max(nbytes, 1)))


def text_variants(module, edits):
    """Throwaway copies of a kernel module with text edits (ablations): {name: imported module}, each built from
    module's source with its relative imports made absolute and `edits[name]` (source -> source) applied, in a
    temp dir; nothing in src/ changes."""
    import importlib.util
    import tempfile

    src = Path(module.__file__).read_text()
    src = src.replace("from ..errors", "from mrgptq.errors").replace("from . import", "from mrgptq.kernels import")
    src = src.replace("from .", "from mrgptq.kernels.")
    tmp, mods = Path(tempfile.mkdtemp()), {}
    for i, (name, edit) in enumerate(edits.items()):
        path = tmp / f"variant{i}.py"
        path.write_text(edit(src))
        spec = importlib.util.spec_from_file_location(f"variant{i}", path)
        mods[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mods[name])
    return mods


def bf16_time(x, N, K):
    """Microseconds of cuBLAS x W^T for a bf16 (N, K) weight, rotating copies past L2."""
    wb = [torch.randn(N, K, device=x.device, dtype=torch.bfloat16) for _ in range(min(copies(N * K * 2), 8))]
    return bench(lambda i: x @ wb[i].T, len(wb)) * 1e6


def packed_weights(fmt, N, K, n, dev):
    from mrgptq import formats

    W = torch.randn(N, K, device=dev) * 0.02
    W = W * (torch.rand(N, K, device=dev) * 3).exp()  # heavy-ish tails, never zeros
    q = formats.quantize(W, fmt)
    wp = formats.pack(q.codes)
    alpha = 1.0 if q.global_scale is None else 1.0 / float(q.global_scale)
    bufs = [(wp.clone(), q.scales.clone()) for _ in range(n)]
    return q, bufs, alpha, formats.dequantize(q).to(torch.bfloat16)


def tc_weights(fmt, N, K, dev="cuda"):
    """`packed_weights` in enough rotating copies to stream from HBM (`copies`), each also re-laid for the
    tensor-core decode GEMMs: (q, packed copies, `tc_pack`ed copies, alpha, dequantized, number of copies)."""
    from mrgptq.kernels.tcgemv import tc_pack

    n = copies(N * K // 2)
    q, bufs, alpha, wdq = packed_weights(fmt, N, K, n, dev)
    return q, bufs, [tc_pack(*b, q.spec) for b in bufs], alpha, wdq, n


def decode_cases(shapes, ms, fmts):
    """Per (linear, token count, format) of a decode-GEMM sweep: (name, N, K, M, fmt, x, cuBLAS bf16 us,
    `tc_weights` copies, alpha, float32 reference x W^T, number of copies); x and the bf16 time are shared by the
    formats."""
    for name, (N, K) in shapes:
        for M in ms:
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            t_bf16 = bf16_time(x, N, K)
            for fmt in fmts:
                _, _, tcb, alpha, wdq, n_w = tc_weights(fmt, N, K)
                yield name, N, K, M, fmt, x, t_bf16, tcb, alpha, x.float() @ wdq.float().T, n_w


def w4a16_rows(shapes, ms, dev, names=None):
    """The W4A16 kernels (tensor-core decode GEMM `tc`, its warp-specialized form `ws` and the row-split `row`
    (M <= 16, Hopper), the shared-x `mid` (17-128 rows, Hopper), `dispatch`: the one QuantLinear picks (M <= 128),
    CUDA-core GEMV, tile GEMM) against cuBLAS bf16, same M."""
    from mrgptq.kernels import TC_ROWS, decode_gemm, ws_enabled
    from mrgptq.kernels.gemm import fp4_matmul
    from mrgptq.kernels.gemv import fp4_gemv
    from mrgptq.kernels.tcgemv import tc_gemv
    ws_ok = ws_enabled(torch.device(dev))
    if ws_ok:
        from mrgptq.kernels.midgemm import MAX_ROWS, mid_gemm

    def kernels(x, q, bufs, tcb, alpha):
        ks = {"tc": lambda i: tc_gemv(x, tcb[i], alpha)}
        if x.shape[0] <= 16 and ws_ok:
            from mrgptq.kernels.rowgemv import WARPS, fits, row_gemv
            from mrgptq.kernels.tcgemv import CHUNK
            from mrgptq.kernels.wsgemv import ws_gemv

            ks["ws"] = lambda i: ws_gemv(x, tcb[i], alpha)
            if fits(tcb[0], x.shape[0]):
                ks["row"] = lambda i: row_gemv(x, tcb[i], alpha)
            elif x.shape[1] % (CHUNK * WARPS) == 0:  # where QuantLinear sends it elsewhere: for A/B runs
                ks["row-any"] = lambda i: row_gemv(x, tcb[i], alpha)
        elif x.shape[0] <= MAX_ROWS and ws_ok:

            ks["mid"] = lambda i: mid_gemm(x, tcb[i], alpha)
        if x.shape[0] <= TC_ROWS:
            ks["dispatch"] = lambda i: decode_gemm(x, tcb[i], alpha)  # what QuantLinear runs
        return {**ks,
                "gemv": lambda i: fp4_gemv(x, *bufs[i], q.spec, alpha),
                "gemv plain-decode": lambda i: fp4_gemv(x, *bufs[i], q.spec, alpha, lut=False),
                "gemm": lambda i: fp4_matmul(x, *bufs[i], q.spec, alpha)}

    rows = []
    for name, (N, K) in shapes.items():
        n_b = copies(N * K * 2)
        wb = [torch.randn(N, K, device=dev, dtype=torch.bfloat16) for _ in range(min(n_b, 8))]
        for fmt in ("mxfp4", "nvfp4"):
            q, bufs, tcb, alpha, wdq, n_w = tc_weights(fmt, N, K, dev)
            for M in ms:
                x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
                t_bf16 = bench(lambda i: x @ wb[i % len(wb)].T, len(wb))
                ref = x.float() @ wdq.float().T
                for kname, fn in kernels(x, q, bufs, tcb, alpha).items():
                    if names and kname not in names:
                        continue
                    y = fn(0)
                    rel = ((y.float() - ref).norm() / ref.norm()).item()
                    t = bench(fn, n_w)
                    nbytes = N * K // 2 + bufs[0][1].numel() + 2 * M * (K + N)
                    rows.append({"kernel": f"W4A16 {kname}", "shape": name, "N": N, "K": K, "M": M, "format": fmt,
                                 "us": t * 1e6, "bf16_us": t_bf16 * 1e6, "speedup": t_bf16 / t,
                                 "GB/s": nbytes / t / 1e9, "rel_err": rel})
    return rows


def gemv_sweep(shapes, dev, fmts=("mxfp4", "nvfp4")):
    """Every (BN, BW, SPLIT_K, warps, stages) of the decode GEMV at M=1: which tile the heuristic should pick."""
    import itertools

    from mrgptq.kernels.gemv import _pick, fp4_gemv

    rows = []
    for name, (N, K) in shapes.items():
        n_w = copies(N * K // 2)
        for fmt in fmts:
            q, bufs, alpha, _ = packed_weights(fmt, N, K, n_w, dev)
            G = q.spec.group_size
            x = torch.randn(1, K, device=dev, dtype=torch.bfloat16)
            times = {}
            for bn, bw, split, warps, stages in itertools.product((4, 8, 16), (32, 64, 128), (1,), (4, 8), (1, 2)):
                if (K // 8) % bw or bw % (G // 8):
                    continue
                cfg = (bn, bw, split, warps, stages)
                times[cfg] = bench(lambda i: fp4_gemv(x, *bufs[i], q.spec, alpha, config=cfg), n_w)
            best = min(times, key=times.get)
            heur = _pick(N, K, G)
            rows.append({"kernel": "gemv sweep", "shape": name, "format": fmt, "best": best,
                         "best_us": times[best] * 1e6, "heuristic": heur,
                         "heuristic_us": times.get(heur, float("nan")) * 1e6,
                         "all": {str(k): v * 1e6 for k, v in times.items()}})
    return rows


def w4a4_rows(shapes, M, dev):
    from mrgptq import formats
    from mrgptq.kernels.fp8 import mxfp4_w4a4_matmul
    from mrgptq.kernels.gemm import fp4_matmul
    from mrgptq.kernels.quantize import rotate_quantize

    rows = []
    for name, (N, K) in shapes.items():
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
        wb = torch.randn(N, K, device=dev, dtype=torch.bfloat16)
        t_bf16 = bench(lambda i: x @ wb.T, 1)
        x8, w8 = x.to(torch.float8_e4m3fn), wb.to(torch.float8_e4m3fn)
        one = torch.ones((), device=dev)
        t_fp8 = bench(lambda i: torch._scaled_mm(x8, w8.T, scale_a=one, scale_b=one, out_dtype=torch.bfloat16), 1)
        flops = 2 * M * N * K
        for fmt in ("mxfp4", "nvfp4"):
            q, bufs, alpha_w, wdq = packed_weights(fmt, N, K, 1, dev)
            spec = q.spec
            gs = formats.nv_global_scale(x.float()).reshape(1) if fmt == "nvfp4" else None
            ap, asc = rotate_quantize(x, spec, 32 if fmt == "mxfp4" else 16, "rounded" if fmt == "mxfp4" else "spec",
                                      gs)
            alpha = alpha_w / (1.0 if gs is None else float(gs))
            y = fp4_matmul(ap, *bufs[0], spec, alpha, a_scales=asc)
            xdq = formats.dequantize(formats.QuantizedTensor(formats.unpack(ap), asc, gs, spec))
            ref = xdq @ wdq.float().T
            rel = ((y.float() - ref).norm() / ref.norm()).item()
            t = bench(lambda i: fp4_matmul(ap, *bufs[0], spec, alpha, a_scales=asc), 1)
            t_path = rel_fp8 = float("nan")
            if fmt == "mxfp4":  # exact E4M3 operands + one cuBLAS FP8 GEMM (what QuantLinear runs for prefill)
                y8 = mxfp4_w4a4_matmul(ap, asc, *bufs[0], spec, alpha)
                rel_fp8 = ((y8.float() - ref).norm() / ref.norm()).item()
                t_path = bench(lambda i: mxfp4_w4a4_matmul(ap, asc, *bufs[0], spec, alpha), 1)
            t_q = bench(lambda i: rotate_quantize(x, spec, 32 if fmt == "mxfp4" else 16,
                                                  "rounded" if fmt == "mxfp4" else "spec", gs), 1)
            rows.append({"kernel": "W4A4", "shape": name, "N": N, "K": K, "M": M, "format": fmt, "us": t * 1e6,
                         "with_act_quant_us": (t + t_q) * 1e6, "bf16_us": t_bf16 * 1e6, "fp8_us": t_fp8 * 1e6,
                         "speedup": t_bf16 / t, "speedup_incl_quant": t_bf16 / (t + t_q),
                         "TFLOP/s": flops / t / 1e12, "bf16_TFLOP/s": flops / t_bf16 / 1e12,
                         "fp8_TFLOP/s": flops / t_fp8 / 1e12, "rel_err": rel,
                         "fp8_path_us": t_path * 1e6, "fp8_path_speedup": t_bf16 / t_path,
                         "fp8_path_speedup_incl_quant": t_bf16 / (t_path + t_q), "fp8_path_rel_err": rel_fp8})
    return rows


def activations(dev, M):
    """Per K of the quantize benchmarks: (K, rotating bf16 inputs (M, K), device-copy bandwidth in B/s)."""
    for K in (4096, 14336):
        xs = [torch.randn(M, K, device=dev, dtype=torch.bfloat16) for _ in range(min(copies(M * K * 2), 6))]
        t_copy = bench(lambda i: xs[i].clone(), len(xs))
        yield K, xs, 2 * M * K * 2 / t_copy


def act_case(fmt, x):
    """(spec, NVFP4 global scale or None, scale rule, bytes moved by rotate+quantize) for activations x."""
    from mrgptq import formats

    spec = formats.get_spec(fmt)
    gs = formats.nv_global_scale(x.float()).reshape(1) if fmt == "nvfp4" else None
    M, K = x.shape
    return spec, gs, "rounded" if fmt == "mxfp4" else "spec", M * K * 2 + M * K // 2 + M * K // spec.group_size


def quantize_rows(dev, M=4096):
    from mrgptq.kernels import has_gluon
    from mrgptq.kernels.quantize import rotate, rotate_quantize

    gluon = False
    if has_gluon():  # the Gluon kernel too where it runs (a Hopper GPU)
        from mrgptq.kernels.wsgemv import gluon_ok

        gluon = gluon_ok(torch.device(dev))
    rows = []
    for K, xs, copy_bw in activations(dev, M):
        for fmt, block in (("mxfp4", 32), ("mxfp4", 64), ("mxfp4", 128), ("nvfp4", 16), ("nvfp4", 64)):
            spec, gs, rule, nbytes = act_case(fmt, xs[0])
            t = bench(lambda i: rotate_quantize(xs[i], spec, block, rule, gs), len(xs))
            rows.append({"kernel": "rotate+quantize", "M": M, "K": K, "format": fmt, "block": block, "us": t * 1e6,
                         "GB/s": nbytes / t / 1e9, "copy_GB/s": copy_bw / 1e9, "of_copy": nbytes / t / copy_bw})
            for kernel in ("triton", "gluon")[:1 + gluon]:  # each alone (the default picks one)
                t0 = bench(lambda i: rotate_quantize(xs[i], spec, block, rule, gs, kernel=kernel), len(xs))
                rows.append({"kernel": f"rq {kernel}", "M": M, "K": K, "format": fmt, "block": block,
                             "us": t0 * 1e6, "GB/s": nbytes / t0 / 1e9, "copy_GB/s": copy_bw / 1e9,
                             "of_copy": nbytes / t0 / copy_bw})
        t = bench(lambda i: rotate(xs[i], 32), len(xs))
        rows.append({"kernel": "rotate (W4A16)", "M": M, "K": K, "format": "bf16", "block": 32, "us": t * 1e6,
                     "GB/s": 2 * M * K * 2 / t / 1e9, "copy_GB/s": copy_bw / 1e9,
                     "of_copy": 2 * M * K * 2 / t / copy_bw})
    return rows


def quantize_sweep(dev, M=4096, kernel="gluon", cases=None, tiles=None):
    """(BLOCK_M, BLOCK_K, PER_SM, warps, stages, maxnreg) of a rotate+quantize kernel (`kernel`: "gluon" or
    "triton"): which tile, how many programs per SM (capped at the resident count: `kernels/occupancy.py`), how
    deep a software pipeline (Triton only) and which register cap the heuristic should pick; and the heuristic
    with the grid not capped (the A/B of the cap). `cases`: (format, block) pairs (default: four); `tiles`:
    (BLOCK_M, BLOCK_K) tiles to sweep at PER_SM 5, 8, 12 and 16, instead of the per-kernel candidates."""
    import itertools

    import mrgptq.kernels.occupancy as occ
    from mrgptq.kernels.gemm import _sm_count
    from mrgptq.kernels.quantize import _pick, rotate_quantize

    rows = []
    for K, xs, copy_bw in activations(dev, M):
        for fmt, block in cases or (("mxfp4", 32), ("mxfp4", 128), ("nvfp4", 16), ("nvfp4", 64)):
            spec, gs, rule, nbytes = act_case(fmt, xs[0])
            if tiles:
                cands = list(itertools.product(tiles, (5, 8, 12, 16), (None,), (None,)))
            elif kernel == "gluon":  # tiles of whole 64-row rotation wgmmas; 1 or 2 x tiles loaded ahead
                if block <= 32:
                    cands = list(itertools.product([(16, 128), (32, 128)], (5, 8, 12, 16), (1, 2), (None,)))
                elif block == 64:
                    cands = list(itertools.product([(32, 128), (64, 128)], (4, 6, 8), (1, 2), (None,)))
                else:
                    cands = list(itertools.product([(64, 128)], (2, 4, 8), (1,), (None,)))
            else:
                cands = [((32, 128), p, st, mr)
                         for p, st, mr in itertools.product((4, 5, 6, 8), (3, 4), (None, 64, 72))]
                cands += [((16, 256), p, 3, None) for p in (4, 6, 8)]
                if block == 128:
                    cands = [((64, 128), p, st, mr) for p, st, mr in itertools.product((2, 3, 4), (2, 3), (None, 96))]
            times = {}
            for (bm, bk), per_sm, stages, maxnreg in cands:
                cfg = (bm, bk, per_sm, 4, stages, maxnreg)
                try:
                    times[cfg] = bench(lambda i: rotate_quantize(xs[i], spec, block, rule, gs, config=cfg,
                                                                 kernel=kernel), len(xs))
                except Exception as e:  # noqa: BLE001 (a config ptxas refuses: a register cap below the wgmma's)
                    print(f"quantize sweep {fmt} b{block} {cfg}: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
            best = min(times, key=times.get)
            heur = _pick(M, K, max(block, spec.group_size, 64), _sm_count(xs[0].device), block)
            t_h = bench(lambda i: rotate_quantize(xs[i], spec, block, rule, gs, kernel=kernel), len(xs))
            real = occ.resident
            occ.resident = lambda *a: 99  # the grid as before the cap: PER_SM programs per SM however many fit
            try:
                t_u = bench(lambda i: rotate_quantize(xs[i], spec, block, rule, gs, kernel=kernel), len(xs))
            finally:
                occ.resident = real
            rows.append({"kernel": f"quantize sweep ({kernel})", "M": M, "K": K, "format": fmt, "block": block,
                         "best": best, "best_us": times[best] * 1e6, "best_of_copy": nbytes / times[best] / copy_bw,
                         "heuristic": heur, "heuristic_us": t_h * 1e6, "heuristic_of_copy": nbytes / t_h / copy_bw,
                         "uncapped_us": t_u * 1e6, "uncapped_of_copy": nbytes / t_u / copy_bw,
                         "resident_per_sm": {str(dict(k[1])): v for k, v in occ._CACHE.items()},
                         "all": {str(k): v * 1e6 for k, v in times.items()}})
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--json", default="out/kernels.json")
    p.add_argument("--only", choices=("quantize", "w4a16", "w4a4", "sweep", "qsweep"), nargs="*")
    p.add_argument("--no-70b", action="store_true")
    p.add_argument("--ms", default="1,4,8,16,32", help="W4A16 rows (batch sizes) to time")
    p.add_argument("--w4a16-kernels", default="tc,ws,row,mid,dispatch,gemv,gemv plain-decode,gemm",
                   help="comma-separated W4A16 kernels to time (tc, ws, row, mid, dispatch, gemv, gemv plain-decode, gemm; "
                        "row-any: the row-split kernel where QuantLinear would not pick it)")
    p.add_argument("--sweep-formats", default="mxfp4,nvfp4")
    p.add_argument("--qsweep-kernel", choices=("gluon", "triton"), default="gluon",
                   help="which rotate+quantize kernel --only qsweep sweeps")
    p.add_argument("--qsweep-cases", default=None, help="format:block pairs for --only qsweep, e.g. mxfp4:32,nvfp4:16")
    p.add_argument("--qsweep-tiles", default=None, help="BMxBK tiles for --only qsweep, e.g. 32x64,16x128")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="time each kernel inside a CUDA graph (GPU time only, no Python launch cost)")
    a = p.parse_args()
    global GRAPHS
    GRAPHS = a.cuda_graphs
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/kernels.py needs a CUDA GPU")
    dev = "cuda"
    shapes = {k: v for k, v in SHAPES.items() if not (a.no_70b and k.startswith("70B"))}
    only = set(a.only or ("quantize", "w4a16", "w4a4", "sweep", "qsweep"))
    rows = []
    if "quantize" in only:
        rows += quantize_rows(dev)
        for r in rows:
            print(f"{r['kernel']:16s} {r['format']} b{r['block']:<4d} M={r['M']} K={r['K']:<6d} {r['us']:8.1f} us "
                  f"{r['GB/s']:7.0f} GB/s  {100 * r['of_copy']:.0f}% of copy")
    if "qsweep" in only:
        cases = [(c.split(":")[0], int(c.split(":")[1])) for c in a.qsweep_cases.split(",")] if a.qsweep_cases else None
        tiles = [tuple(map(int, t.split("x"))) for t in a.qsweep_tiles.split(",")] if a.qsweep_tiles else None
        new = quantize_sweep(dev, kernel=a.qsweep_kernel, cases=cases, tiles=tiles)
        for r in new:
            print(f"quantize sweep {r['format']} b{r['block']} K={r['K']:<6d} best {r['best']} {r['best_us']:.1f} us "
                  f"({100 * r['best_of_copy']:.0f}% of copy); heuristic {r['heuristic']} {r['heuristic_us']:.1f} us "
                  f"({100 * r['heuristic_of_copy']:.0f}%); uncapped {r['uncapped_us']:.1f} us "
                  f"({100 * r['uncapped_of_copy']:.0f}%)")
        rows += new
    if "w4a16" in only:
        new = w4a16_rows(shapes, tuple(int(m) for m in a.ms.split(",")), dev, a.w4a16_kernels.split(","))
        for r in new:
            print(f"{r['kernel']} {r['format']} {r['shape']:12s} M={r['M']:<4d} {r['us']:8.1f} us  bf16 "
                  f"{r['bf16_us']:8.1f} us  x{r['speedup']:.2f}  {r['GB/s']:6.0f} GB/s  err {r['rel_err']:.1e}")
        rows += new
        for kname in ("W4A16 dispatch", "W4A16 ws", "W4A16 row", "W4A16 tc", "W4A16 gemv", "W4A16 gemv plain-decode", "W4A16 gemm"):
            for fmt in ("mxfp4", "nvfp4"):
                s = [r["speedup"] for r in new if r["kernel"] == kname and r["format"] == fmt and r["M"] == 1
                     and r["shape"].startswith("8B")]
                if s:
                    print(f"{kname} {fmt} M=1 geomean over Llama-3-8B linears: "
                          f"x{math.exp(sum(map(math.log, s)) / len(s)):.2f}")
    if "sweep" in only:
        new = gemv_sweep({k: v for k, v in shapes.items() if k.startswith("8B")}, dev, tuple(a.sweep_formats.split(",")))
        for r in new:
            print(f"gemv sweep {r['format']} {r['shape']:12s} best {r['best']} {r['best_us']:.1f} us; "
                  f"heuristic {r['heuristic']} {r['heuristic_us']:.1f} us")
        rows += new
    if "w4a4" in only:
        new = w4a4_rows({k: v for k, v in shapes.items() if k.startswith("8B")}, 4096, dev)
        for r in new:
            print(f"W4A4 {r['format']} {r['shape']:12s} M=4096 {r['us']:8.1f} us ({r['TFLOP/s']:.0f} TFLOP/s) "
                  f"bf16 {r['bf16_us']:.1f} us ({r['bf16_TFLOP/s']:.0f})  fp8 {r['fp8_us']:.1f} us  x{r['speedup']:.2f} "
                  f"(x{r['speedup_incl_quant']:.2f} with act quant)  err {r['rel_err']:.1e}  FP8 path "
                  f"{r['fp8_path_us']:.1f} us x{r['fp8_path_speedup']:.2f} (x{r['fp8_path_speedup_incl_quant']:.2f} "
                  f"with act quant) err {r['fp8_path_rel_err']:.1e}")
        rows += new
    out = {"device": torch.cuda.get_device_name(), "date": datetime.date.today().isoformat(),
           "torch": torch.__version__, "triton": __import__("triton").__version__, "rows": rows}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
