"""A/B of two versions of a decode GEMM in one run: `kernels/rowgemv.py` (or, with `--kernel ws`, `wsgemv.py`) as it
is against another copy of that file (e.g. an earlier commit's), with the other decode GEMM and cuBLAS bf16
alongside. Each is checked against the dequantized reference and the two versions' outputs compared bit for bit;
A and B are timed twice, interleaved (CUDA graph, rotating weight copies), and the faster of each pair kept.

    git show e1e4a82:src/mrgptq/kernels/rowgemv.py > /tmp/rowgemv_old.py
    python benchmarks/row_ab.py --old /tmp/rowgemv_old.py [--kernel row|ws] [--m 1,4,8,16] [--fmt mxfp4,nvfp4]
        [--linears "8B qkv,8B o"] [--json out/row_ab.json]
"""
import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
import kernels as kb

import mrgptq.kernels
from mrgptq.kernels import rowgemv, wsgemv

ap = argparse.ArgumentParser()
ap.add_argument("--old", required=True, help="the other rowgemv.py / wsgemv.py (imported inside mrgptq.kernels)")
ap.add_argument("--kernel", default="row", choices=("row", "ws"), help="which decode GEMM the two files are")
ap.add_argument("--fmt", default="mxfp4,nvfp4", help="weight formats, comma-separated")
ap.add_argument("--m", default="1,4,8,16", help="rows of x (tokens), comma-separated")
ap.add_argument("--linears", default=",".join(kb.SHAPES), help="names from benchmarks/kernels.py SHAPES")
ap.add_argument("--json", default="out/row_ab.json")
args = ap.parse_args()
kb.GRAPHS = True

spec = importlib.util.spec_from_file_location(f"mrgptq.kernels._{args.kernel}gemv_b", args.old)
old = importlib.util.module_from_spec(spec)
old.__package__ = mrgptq.kernels.__name__
spec.loader.exec_module(old)
fns = {"row": rowgemv.row_gemv, "ws": wsgemv.ws_gemv}
other = "ws" if args.kernel == "row" else "row"
new_fn, old_fn, other_fn = fns[args.kernel], getattr(old, f"{args.kernel}_gemv"), fns[other]

rows = []
for fmt in args.fmt.split(","):
    for name in args.linears.split(","):
        N, K = kb.SHAPES[name]
        q, bufs, tcb, alpha, wdq, n_w = kb.tc_weights(fmt, N, K)
        for M in map(int, args.m.split(",")):
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            ref = x.float() @ wdq.float().T
            y_new, y_old = new_fn(x, tcb[0], alpha), old_fn(x, tcb[0], alpha)
            rel = ((y_new.float() - ref).norm() / ref.norm()).item()
            t = {"bf16": kb.bf16_time(x, N, K), "old": [], "new": []}
            for _ in range(2):
                t["old"].append(kb.bench(lambda i, x=x, tcb=tcb, alpha=alpha: old_fn(x, tcb[i], alpha), n_w) * 1e6)
                t["new"].append(kb.bench(lambda i, x=x, tcb=tcb, alpha=alpha: new_fn(x, tcb[i], alpha), n_w) * 1e6)
            t[other] = kb.bench(lambda i, x=x, tcb=tcb, alpha=alpha: other_fn(x, tcb[i], alpha), n_w) * 1e6
            o, n = min(t["old"]), min(t["new"])
            print(f"{fmt} {name:12s} M={M:2d} bf16 {t['bf16']:6.1f} {other} {t[other]:5.1f} old {o:5.1f} new {n:5.1f} us"
                  f" (x{t['bf16'] / n:.2f} vs x{t['bf16'] / o:.2f}) rel {rel:.1e}"
                  f" same bits {torch.equal(y_new, y_old)}", flush=True)
            rows.append({"fmt": fmt, "linear": name, "M": M, "kernel": args.kernel, "rel": rel,
                         "same_as_old": torch.equal(y_new, y_old), **t})
Path(args.json).parent.mkdir(parents=True, exist_ok=True)
Path(args.json).write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "rows": rows}, indent=1))
print("wrote", args.json)
