"""Tile sweep of the pair kernels (kernels/gemm.py `dequantize`, kernels/fp8.py `fp8_rows`): which (rows, elements
per row, warps) PAIR_TILE should be. Checks each config bit-exactly against formats.dequantize, times it with
rotating weight copies next to a device copy of the same bytes, prints a table and writes JSON.

    python benchmarks/pair_sweep.py [--json out/pair_sweep.json]
"""
import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
import kernels as kb

from mrgptq import formats
from mrgptq.kernels.fp8 import fp8_rows
from mrgptq.kernels.gemm import PAIR_TILE, dequantize

CONFIGS = [(16, 256, 4), (32, 256, 4), (32, 512, 4), (64, 256, 4), (64, 256, 8), (32, 1024, 8), (128, 256, 8)]

ap = argparse.ArgumentParser()
ap.add_argument("--json", default="out/pair_sweep.json")
args = ap.parse_args()
rows = []
for name in ("8B gate_up", "8B down"):
    N, K = kb.SHAPES[name]
    q, bufs, _, _ = kb.packed_weights("mxfp4", N, K, kb.copies(N * K // 2), "cuda")
    ref = formats.dequantize(q)
    src = torch.randn(N * K * 3 // 4, device="cuda", dtype=torch.bfloat16)  # 1.5 bytes an element
    t_copy = kb.bench(lambda i, src=src: src.clone(), 2)
    copy_bw = 2 * src.numel() * 2 / t_copy
    for cfg in CONFIGS:
        v8, rs = fp8_rows(*bufs[0], q.spec, cfg)
        exact = bool(torch.equal(v8.float() * rs[:, None], ref)
                     and torch.equal(dequantize(*bufs[0], q.spec, 1.0, torch.bfloat16, cfg), ref.bfloat16()))
        t8 = kb.bench(lambda i, b=bufs, s=q.spec, c=cfg: fp8_rows(*b[i], s, c), len(bufs))
        td = kb.bench(lambda i, b=bufs, s=q.spec, c=cfg: dequantize(*b[i], s, 1.0, torch.bfloat16, c), len(bufs))
        r = {"shape": name, "N": N, "K": K, "config": list(cfg), "exact": exact, "copy_GB/s": copy_bw / 1e9,
             "fp8_rows_us": t8 * 1e6, "fp8_rows_GB/s": N * K * 1.5 / t8 / 1e9,
             "dequant_bf16_us": td * 1e6, "dequant_bf16_GB/s": N * K * 2.5 / td / 1e9}
        rows.append(r)
        mark = "*" if cfg == PAIR_TILE else " "
        print(f"{name:11s} {cfg!s:14s}{mark} exact={exact}  fp8_rows {r['fp8_rows_us']:7.1f} us "
              f"({r['fp8_rows_GB/s']:5.0f} GB/s)  dequant bf16 {r['dequant_bf16_us']:7.1f} us "
              f"({r['dequant_bf16_GB/s']:5.0f} GB/s)  copy {copy_bw / 1e9:5.0f} GB/s", flush=True)
Path(args.json).parent.mkdir(parents=True, exist_ok=True)
Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))
print(f"wrote {args.json}")
