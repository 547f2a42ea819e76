"""Sweep of the shared-x decode GEMM (kernels/midgemm.py) for 17-128 tokens against `tc_gemv`'s pick and cuBLAS
bf16 at the Llama-3 linears: warpgroups per tile W, ring depth, K split or stream-K grids. Checks every config
against the dequantized reference (and bit-equality between two runs), times it from a CUDA graph (rotating
weight copies), prints the best three and writes every time to JSON.

    python benchmarks/mid_sweep.py [--ms 64,128] [--fmts mxfp4] [--ws 1,2,4] [--stages 3,4] [--splits 1,2,4,8]
        [--programs 0,1,2] [--70b] [--json out/mid_sweep.json]
"""
import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
import kernels as kb

from mrgptq.kernels.gemm import _sm_count
from mrgptq.kernels.midgemm import _pick as mid_pick
from mrgptq.kernels.midgemm import mid_gemm
from mrgptq.kernels.tcgemv import _pick as tc_pick
from mrgptq.kernels.tcgemv import tc_gemv


def ints(s):
    return [int(v) for v in s.split(",") if v]


ap = argparse.ArgumentParser()
ap.add_argument("--ms", type=ints, default=[64, 128], help="rows of x (tokens)")
ap.add_argument("--fmts", default="mxfp4")
ap.add_argument("--ws", type=ints, default=[1, 2, 4], help="warpgroups per tile (64 weight rows each)")
ap.add_argument("--stages", type=ints, default=[3, 4])
ap.add_argument("--splits", type=ints, default=[1, 2, 4, 8])
ap.add_argument("--programs", type=ints, default=[0, 1, 2], help="stream-K grids of this many programs per SM "
                "(0: tiles x split programs, each one whole K range)")
ap.add_argument("--70b", dest="big", action="store_true", help="also the Llama-3-70B linears")
ap.add_argument("--json", default="out/mid_sweep.json")
args = ap.parse_args()
kb.GRAPHS = True
SMEM = 227 * 1024


def trial(res, key, fn, tcb, ref, n_w):
    """Check fn (a call on weight copy i) against the reference and itself, then time it into res[key] (us)."""
    try:
        y = fn(0)
        rel = ((y.float() - ref).norm() / ref.norm()).item()
        same = torch.equal(y, fn(0))
        if not (rel < 1e-2 and same):
            print("WRONG", key, rel, "deterministic" if same else "differs between runs", flush=True)
            return
        res[key] = kb.bench(fn, n_w) * 1e6
    except Exception as e:  # noqa: BLE001 (a config that fails to build or launch is reported and skipped)
        print("fail", key, repr(e)[:300], flush=True)


rows = []
sms = torch.cuda.get_device_properties(0).multi_processor_count
for name, N, K, M, fmt, x, t_bf16, tcb, alpha, ref, n_w in kb.decode_cases(kb.linears(args.big), args.ms,
                                                                          args.fmts.split(",")):
    res = {}
    tc_cfg = tc_pick(M, N, K, _sm_count(x.device))
    trial(res, f"tc {tc_cfg}", lambda i, x=x, tcb=tcb, alpha=alpha: tc_gemv(x, tcb[i], alpha), tcb, ref, n_w)
    mp = max(16, 1 << (M - 1).bit_length())
    for W, pp in [(w, p) for w in args.ws for p in ((False, True) if w == 1 else (False,))]:
        tiles = -(-N // (64 * W))
        for st in args.stages:
            if st * (mp * 256 + W * (4096 + 512)) + 4096 + pp * mp * 256 > SMEM or (pp and st % 2):
                continue
            for per_sm in args.programs:
                for split in (args.splits if per_sm == 0 else [1]):
                    if split * 2 > K // 128 or tiles * split > 4 * sms:
                        continue
                    key = f"mid W{W}{' PP' if pp else ''} S{st} " + (f"split{split}" if per_sm == 0 else f"P{per_sm}xSM")
                    trial(res, key, lambda i, x=x, tcb=tcb, alpha=alpha, W=W, st=st, split=split, per_sm=per_sm, pp=pp:
                          mid_gemm(x, tcb[i], alpha, warpgroups=W, stages=st, split=split,
                                   programs=per_sm * sms or None, pingpong=pp), tcb, ref, n_w)
    pick = mid_pick(M, N, K, sms)
    best = sorted(res, key=res.get)[:3]
    print(f"{name:12s} {fmt} M={M} bf16 {t_bf16:.1f}us | tc {res.get(f'tc {tc_cfg}', float('nan')):.1f} | "
          + "; ".join(f"{c} {res[c]:.1f}us x{t_bf16 / res[c]:.2f}" for c in best) + f" | pick {pick}", flush=True)
    rows.append({"shape": name, "fmt": fmt, "M": M, "bf16_us": t_bf16, "all": res})
Path(args.json).parent.mkdir(parents=True, exist_ok=True)
Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))
print(f"wrote {args.json}")
