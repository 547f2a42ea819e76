"""Tile sweep of the tensor-core decode GEMM (kernels/tcgemv.py) at the Llama-3-8B linears: which
(BN, BW, MP, SPLIT_K, warps, PF) the heuristic should pick. Checks every config against the dequantized reference,
times it from a CUDA graph (rotating weight copies), prints the best three and the heuristic's pick.

    python benchmarks/tc_sweep.py [--m 1] [--fmts mxfp4,nvfp4] [--wide] [--json out/tc_sweep.json]
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
from mrgptq.kernels.tcgemv import _pick, tc_gemv

ap = argparse.ArgumentParser()
ap.add_argument("--m", type=int, default=1, help="rows of x (tokens)")
ap.add_argument("--json", default="out/tc_sweep.json")
ap.add_argument("--fmts", default="mxfp4,nvfp4")
ap.add_argument("--wide", action="store_true", help="also 256- and 512-wide k steps and 8-warp tiles")
ap.add_argument("--big", action="store_true", help="tiles for many tokens (M >= 32): 64-256 weight rows, 4/8 warps, "
                "a token tile of M rounded up to a power of 2")
args = ap.parse_args()
kb.GRAPHS = True


def trial(res, cfg, x, tcb, alpha, ref, n_w):
    """Check config `cfg` against the reference, then time it into res[cfg] (microseconds)."""
    try:
        y = tc_gemv(x, tcb[0], alpha, config=cfg).float()
        rel = ((y - ref).norm() / ref.norm()).item()
        if not rel < 1e-2:
            print("WRONG", cfg, rel, flush=True)
        res[cfg] = kb.bench(lambda i: tc_gemv(x, tcb[i], alpha, config=cfg), n_w) * 1e6
    except Exception as e:  # noqa: BLE001 (a sweep point the compiler refuses is reported and skipped)
        print("fail", cfg, repr(e)[:300], flush=True)


rows = []
M = args.m
tiles_cfgs = [(64, 16, 1, 4), (64, 16, 2, 4), (128, 16, 2, 4)]  # (BN, BW, PF, warps)
if args.big:  # one x tile shared by more weight rows: fewer re-reads of x from L2
    tiles_cfgs = [(64, 16, 1, 4), (64, 16, 1, 8), (128, 16, 1, 4), (128, 16, 1, 8), (128, 16, 2, 8), (256, 16, 1, 8)]
if args.wide:
    tiles_cfgs += [(64, 32, 1, 4), (64, 32, 2, 4), (64, 64, 1, 4), (128, 32, 1, 8), (128, 16, 1, 8)]
for name, N, K, _m, fmt, x, t_bf16, tcb, alpha, ref, n_w in kb.decode_cases(list(kb.SHAPES.items())[:4], [M],
                                                                          args.fmts.split(",")):
    res = {}
    h = _pick(M, N, K, _sm_count(x.device))
    mp = h[2] if args.big else 16  # the heuristic's token tile (M rounded up to a power of 2)
    for bn, bw, pf, warps in tiles_cfgs:
        tiles = -(-N // bn)
        for split in (1, 2, 4, 8, 16):
            if tiles * split > 8 * 132 or (tiles * split) < 32 or split * 2 > K // (bw * 8):
                continue
            trial(res, (bn, bw, mp, split, warps, pf), x, tcb, alpha, ref, n_w)
    best = sorted(res, key=res.get)[:3]
    print(f"{name:12s} {fmt} M={M} bf16 {t_bf16:.1f}us best " + "; ".join(f"{c} {res[c]:.1f}us x{t_bf16/res[c]:.2f}" for c in best)
          + f" | heur {h} {res.get(h, float('nan')):.1f}", flush=True)
    rows.append({"shape": name, "fmt": fmt, "M": M, "bf16_us": t_bf16, "all": {str(k): v for k, v in res.items()}})
Path(args.json).parent.mkdir(parents=True, exist_ok=True)
Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "M": M, "rows": rows}, indent=1))
print(f"wrote {args.json}")
