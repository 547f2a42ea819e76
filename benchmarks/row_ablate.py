"""Where the row-split decode GEMM's time goes (kernels/rowgemv.py; Llama-3 linears): the kernel as shipped, its
copies alone (the loop waits on its cp.async groups, no decode or MMA), its math alone (decode + MMA on whatever
the stage buffers hold, no copies) and neither (launch, offsets, the warps' sum and the store), each timed from a
CUDA graph against cuBLAS bf16. The variants are text edits of rowgemv.py built as throwaway modules in a temp
dir (their results are discarded; nothing in src/ changes).

    python benchmarks/row_ablate.py [--fmt mxfp4,nvfp4] [--m 1] [--70b] [--rings default,4x2]
        [--json out/row_ablate.json]

`--rings`: stages x k chunks a stage for every variant ("default": `rowgemv._ring`'s pick).
"""
import argparse
import json
import os
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
import kernels as kb

from mrgptq.kernels import rowgemv

MATH = re.compile(r"\n            w = w_s\.index\(cur\)\.load\(WL\)\n.*?\n            acc = mma_v2\(a, xb, acc\)\n", re.DOTALL)
COPIES = re.compile(r"\n        async_load\(w_s\.index\(b\).*?\n(?=    async_copy\.commit_group)", re.DOTALL)


def variants():
    if not (MATH.search(src := Path(rowgemv.__file__).read_text()) and COPIES.search(src)):
        raise SystemExit("row_ablate.py: kernels/rowgemv.py changed; update the text this script removes")

    def no_math(t):
        return MATH.sub("\n            pass\n", t, count=1)

    def no_copies(t):
        return COPIES.sub("\n        pass\n", t, count=1)

    return kb.text_variants(rowgemv, {"shipped": lambda t: t, "copies only": no_math, "math only": no_copies,
                                      "neither": lambda t: no_copies(no_math(t))})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fmt", default="mxfp4,nvfp4")
    ap.add_argument("--m", default="1", help="rows of x (tokens), comma-separated")
    ap.add_argument("--70b", dest="b70", action="store_true", help="the Llama-3-70B linears too")
    ap.add_argument("--rings", default="default", help="stages x k chunks a stage, comma-separated")
    ap.add_argument("--json", default="out/row_ablate.json")
    args = ap.parse_args()
    kb.GRAPHS = True
    mods = variants()
    rows = []
    for fmt in args.fmt.split(","):
        for name, (N, K) in kb.linears(args.b70):
            _, _, tcb, alpha, _, n_w = kb.tc_weights(fmt, N, K)
            for M in map(int, args.m.split(",")):
                x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
                bf16 = kb.bf16_time(x, N, K)
                for ring in args.rings.split(","):
                    st, ch = (None, None) if ring == "default" else map(int, ring.split("x"))
                    if ch and (K // (rowgemv.CHUNK * rowgemv.WARPS)) % ch:
                        continue
                    res = {"bf16": bf16}
                    for k, m in mods.items():
                        res[k] = kb.bench(lambda i, m=m, x=x, tcb=tcb, alpha=alpha, st=st, ch=ch:
                                          m.row_gemv(x, tcb[i], alpha, stages=st, chunks=ch), n_w) * 1e6
                    print(f"{fmt} {name:12s} M={M:2d} ring {ring:7s} "
                          + "; ".join(f"{k} {v:.1f} us" for k, v in res.items()), flush=True)
                    rows.append({"fmt": fmt, "shape": name, "N": N, "K": K, "M": M, "ring": ring, "us": res})
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
