"""The row-split decode GEMM (kernels/rowgemv.py: 16 weight rows a program, K split over its warps, no
cross-program sum) against the warp-specialized one (`ws_gemv`) and cuBLAS bf16 at the Llama-3 linears: checks
each config against the dequantized reference (and that two calls agree bit for bit), times it from a CUDA graph
over rotating weight copies, sweeps ring stages x warps a program [x k chunks a stage] ("default": `_ring`'s).

    python benchmarks/row_sweep.py [--m 1,16] [--fmt mxfp4,nvfp4] [--cfg default,4x4,2x4x2,2x1x2] [--70b]
        [--linears "8B down"] [--json out/row_sweep.json]
"""
import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
import kernels as kb

from mrgptq.kernels.rowgemv import WARPS, row_gemv
from mrgptq.kernels.wsgemv import ws_gemv

ap = argparse.ArgumentParser()
ap.add_argument("--m", default="1,16", help="rows of x (tokens), comma-separated")
ap.add_argument("--fmt", default="mxfp4,nvfp4", help="weight formats, comma-separated")
ap.add_argument("--cfg", default="default,4x4,6x4,8x4,4x8", help="stages x warps a program [x k chunks a stage]")
ap.add_argument("--70b", dest="b70", action="store_true", help="the Llama-3-70B linears too")
ap.add_argument("--linears", default="", help="only these names from benchmarks/kernels.py SHAPES, comma-separated")
ap.add_argument("--json", default="out/row_sweep.json")
args = ap.parse_args()
kb.GRAPHS = True

rows = []
for fmt in args.fmt.split(","):
    for name, (N, K) in kb.linears(args.b70):
        if args.linears and name not in args.linears.split(","):
            continue
        q, bufs, tcb, alpha, wdq, n_w = kb.tc_weights(fmt, N, K)
        for M in map(int, args.m.split(",")):
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            ref = x.float() @ wdq.float().T
            t_bf16 = kb.bf16_time(x, N, K)
            t_ws = kb.bench(lambda i, x=x, tcb=tcb, alpha=alpha: ws_gemv(x, tcb[i], alpha), n_w) * 1e6
            res, bad = {}, []
            for cfg in args.cfg.split(","):
                st, kw, ch = (None, WARPS, None) if cfg == "default" else (list(map(int, cfg.split("x"))) + [None])[:3]
                if K % (128 * kw) or (ch and (K // (128 * kw)) % ch):
                    continue
                kw_args = {"stages": st, "warps": kw, "chunks": ch}
                y = torch.full((M, N), float("nan"), device="cuda", dtype=torch.bfloat16)
                try:
                    row_gemv(x, tcb[0], alpha, out=y, **kw_args)
                    y2 = row_gemv(x, tcb[0], alpha, **kw_args)
                    torch.cuda.synchronize()
                except Exception as e:  # noqa: BLE001 (a config the kernel cannot build: shared memory, layouts)
                    print("FAILED", fmt, name, M, cfg, str(e).splitlines()[0][:200], flush=True)
                    continue
                rel = ((y.float() - ref).norm() / ref.norm()).item()
                if not (rel < 1e-2 and torch.equal(y, y2)):
                    bad.append((cfg, rel))
                    print("WRONG", fmt, name, M, cfg, rel, "repeatable:", torch.equal(y, y2), flush=True)
                    continue
                res[cfg] = kb.bench(lambda i, x=x, tcb=tcb, alpha=alpha, kw_args=kw_args:
                                    row_gemv(x, tcb[i], alpha, **kw_args), n_w) * 1e6
            print(f"{fmt} {name:14s} M={M:2d} bf16 {t_bf16:6.1f}us ws {t_ws:5.1f}us x{t_bf16 / t_ws:.2f} | row "
                  + "; ".join(f"{c} {t:.1f}us x{t_bf16 / t:.2f}" for c, t in sorted(res.items(), key=lambda r: r[1])),
                  flush=True)
            rows.append({"fmt": fmt, "shape": name, "M": M, "N": N, "K": K, "bf16_us": t_bf16, "ws_us": t_ws, "row": res,
                         "wrong": [str(b) for b in bad]})
Path(args.json).parent.mkdir(parents=True, exist_ok=True)
Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "config": "stages x warps [x chunks a stage]",
                                       "rows": rows}, indent=1))
print(f"wrote {args.json}")
