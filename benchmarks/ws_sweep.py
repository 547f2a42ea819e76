"""The warp-specialized decode GEMM (kernels/wsgemv.py) against `tc_gemv` and cuBLAS bf16 at the Llama-3-8B
linears (MXFP4, or NVFP4 with --fmt): checks each config against the dequantized reference (and that two calls
agree bit for bit), times it from a CUDA graph over rotating weight copies; sweeps stages x bricks per stage, the
register cap (programs per SM) and the grid (tiles x the heuristic K split, or stream-K over a multiple of the SM
count). --rotate B also times W4A16's online rotation (blocks of B) followed by the GEMM; --floor times plain
reads of the same packed bytes: torch.amax / torch.sum over the words and scales, and the fastest of a sweep of
a streaming Triton read (an xor of every word: grid, bytes per iteration, warps), what no GEMM reading these bytes
once can beat by much.

    python benchmarks/ws_sweep.py [--m 1] [--fmt mxfp4,nvfp4] [--rotate 32] [--70b] [--json out/ws_sweep.json]
"""
import argparse
import json
import os
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(__file__))
import kernels as kb

from mrgptq.kernels import LAUNCH
from mrgptq.kernels.gemm import _sm_count
from mrgptq.kernels.quantize import rotate
from mrgptq.kernels.tcgemv import tc_gemv
from mrgptq.kernels.wsgemv import ws_gemv


@triton.jit
def _stream_read(p, out, n_blocks, PROGRAMS, BLOCK: tl.constexpr):
    """Every word once (program q takes blocks q, q + PROGRAMS, ...), folded with xor so nothing is skipped."""
    acc = tl.zeros([BLOCK], tl.int32)
    for b in range(tl.program_id(0), n_blocks, PROGRAMS):
        acc ^= tl.load(p + b * BLOCK + tl.arange(0, BLOCK), cache_modifier=".cg")
    tl.store(out + tl.program_id(0), tl.xor_sum(acc, 0))


def stream_read_best(flat, n_w):
    """(microseconds, config) of the fastest streaming read of each flat int32 buffer (a multiple of 16384)."""
    out = torch.empty(1 << 16, dtype=torch.int32, device="cuda")
    best = (float("inf"), None)
    for block in (1024, 4096, 16384):
        nb = flat[0].numel() // block
        for warps in (4, 8):
            for per_sm in (1, 2, 4, 8, 0):
                P = min(nb, per_sm * sms) if per_sm else nb

                def f(i, P=P, block=block, nb=nb, warps=warps):
                    _stream_read[(P,)](flat[i], out, nb, P, BLOCK=block, num_warps=warps, **LAUNCH)
                t = kb.bench(f, n_w) * 1e6
                best = min(best, (t, (block * 4, warps, per_sm or "all")))
    return best


ap = argparse.ArgumentParser()
ap.add_argument("--m", default="1", help="rows of x (tokens), comma-separated")
ap.add_argument("--fmt", default="mxfp4", help="weight formats, comma-separated")
ap.add_argument("--stages", default="4x1,6x1,3x2", help="stages x bricks per stage")
ap.add_argument("--maxnreg", default="48,64", help="register caps (0: ws_gemv's default)")
ap.add_argument("--programs", default="0,2,3", help="stream-K programs per SM (0: tiles x K split, the default)")
ap.add_argument("--splits", default="0", help="K splits (0: the heuristic's)")
ap.add_argument("--rotate", default="", help="also time W4A16's rotation (block size) + GEMM")
ap.add_argument("--floor", action="store_true", help="also time a plain read of the packed bytes")
ap.add_argument("--70b", dest="b70", action="store_true", help="the Llama-3-70B linears too")
ap.add_argument("--json", default="out/ws_sweep.json")
args = ap.parse_args()
kb.GRAPHS = True
sms = _sm_count(torch.device("cuda"))

rows = []
for fmt, M in [(f, int(m)) for f in args.fmt.split(",") for m in args.m.split(",")]:
    for name, (N, K) in kb.linears(args.b70):
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        t_bf16 = kb.bf16_time(x, N, K)
        q, bufs, tcb, alpha, wdq, n_w = kb.tc_weights(fmt, N, K)
        ref = x.float() @ wdq.float().T
        t_tc = kb.bench(lambda i: tc_gemv(x, tcb[i], alpha), n_w) * 1e6
        res, bad = {}, []
        for st, kb_ in [tuple(map(int, c.split("x"))) for c in args.stages.split(",")]:
            for mr in map(int, args.maxnreg.split(",")):
                grids = [(int(p_), int(s_)) for p_ in args.programs.split(",") for s_ in args.splits.split(",")]
                for pp, sp in grids:
                    if sp and (K // 128) % (sp * kb_):
                        continue
                    cfg = (st, kb_, mr, pp) + ((sp,) if sp else ())
                    kw = {"stages": st, "bricks": kb_, "maxnreg": mr or None, "programs": pp * sms or None, "split": sp or None}
                    try:
                        y = ws_gemv(x, tcb[0], alpha, **kw)
                        y2 = ws_gemv(x, tcb[0], alpha, **kw)
                        torch.cuda.synchronize()
                        rel = ((y.float() - ref).norm() / ref.norm()).item()
                        if not (rel < 1e-2 and torch.equal(y, y2)):
                            bad.append((cfg, rel))
                            print("WRONG", fmt, name, M, cfg, rel, "repeatable:", torch.equal(y, y2), flush=True)
                            continue
                        res[cfg] = kb.bench(lambda i: ws_gemv(x, tcb[i], alpha, **kw), n_w) * 1e6
                    except Exception as e:  # noqa: BLE001 (a sweep point the compiler refuses is reported and skipped)
                        print("fail", name, cfg, repr(e)[:400], flush=True)
        pairs = {}
        if args.rotate:  # W4A16 decode: the online rotation, then the GEMM
            b = int(args.rotate)
            pairs["rotate+tc"] = kb.bench(lambda i: tc_gemv(rotate(x, b), tcb[i], alpha), n_w) * 1e6
            pairs["rotate+ws"] = kb.bench(lambda i: ws_gemv(rotate(x, b), tcb[i], alpha), n_w) * 1e6
            print(f"{fmt} {name:12s} M={M} " + "; ".join(f"{k} {v:.1f}us" for k, v in pairs.items()), flush=True)
        if args.floor:
            flat = [torch.cat([b.words.flatten(), b.scales.view(torch.int32).flatten()]) for b in tcb]
            nbytes = flat[0].numel() * 4
            pad = -flat[0].numel() % 16384  # the Triton read takes whole blocks: a few KB more
            flat = [torch.nn.functional.pad(f, (0, pad)) for f in flat]
            pairs["read floor"] = min(kb.bench(lambda i: torch.amax(flat[i]), n_w),
                                      kb.bench(lambda i: torch.sum(flat[i], dtype=torch.int64), n_w)) * 1e6
            pairs["triton read"], cfg = stream_read_best(flat, n_w)
            for key in ("read floor", "triton read"):
                t = pairs[key]
                print(f"{fmt} {name:12s} M={M} {key} {t:.1f}us ({nbytes * 1e-3 / t:.0f} GB/s) "
                      f"= x{t_bf16 / t:.2f} over bf16 {t_bf16:.1f}us" + (f" {cfg}" if key == "triton read" else ""),
                      flush=True)
            pairs["triton read config"] = str(cfg)
        best = sorted(res, key=res.get)[:4]
        dflt = kb.bench(lambda i: ws_gemv(x, tcb[i], alpha), n_w) * 1e6  # ws_gemv's own defaults
        print(f"{fmt} {name:12s} M={M} bf16 {t_bf16:.1f}us tc {t_tc:.1f}us x{t_bf16 / t_tc:.2f} | "
              f"ws default {dflt:.1f}us | " + "; ".join(f"{c} {res[c]:.1f}us x{t_bf16 / res[c]:.2f}" for c in best),
              flush=True)
        rows.append({"fmt": fmt, "shape": name, "M": M, "N": N, "K": K, "bf16_us": t_bf16, "tc_us": t_tc,
                         "ws": {str(k): v for k, v in res.items()}, "ws_default_us": dflt, "pairs": pairs,
                         "wrong": [str(b) for b in bad]})
Path(args.json).parent.mkdir(parents=True, exist_ok=True)
Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "config": "(stages, bricks, maxnreg, "
                                       "programs per SM[, K split])", "rows": rows}, indent=1))
print(f"wrote {args.json}")
