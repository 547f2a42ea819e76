"""Where the warp-specialized decode GEMM's time goes at M=1 (Llama-3-8B linears, MXFP4): the kernel as shipped,
without its K-split flush (partial sums, the tile counter and the last program's sum), without its consumer's
decode + wgmma, and with neither (the loads alone), each timed from a CUDA graph against cuBLAS bf16; also the
kernel at K splits 1-16. The variants are text edits of kernels/wsgemv.py built as throwaway modules in a temp
dir (the removed parts' results are discarded; nothing in src/ changes).

    python benchmarks/ws_ablate.py [--fmt mxfp4] [--json out/ws_ablate.json]
"""
import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
import kernels as kb

from mrgptq.errors import MrgptqError
from mrgptq.kernels import wsgemv

DECODE = """                a = _decode_step(w_bufs, s_bufs, st * KB + j, v, AL, WL, NV)
                acc = warpgroup_mma(a, x_bufs.index(st * KB + j).permute((1, 0)), acc)"""
FLUSH = "        _flush(acc, n, a_beg"
NO_FLUSH = "        if alpha == 12345.0:  # never: the flush is compiled but skipped\n" + FLUSH.replace("        ", "    " * 3, 1)


def variants():
    src = Path(wsgemv.__file__).read_text()
    if DECODE not in src or FLUSH not in src:
        raise SystemExit("ws_ablate.py: kernels/wsgemv.py changed; update the text this script removes")

    def no_flush(t):
        return t.replace(FLUSH, NO_FLUSH)

    def no_decode(t):
        return t.replace(DECODE, "                pass")

    return kb.text_variants(wsgemv, {"shipped": lambda t: t, "no flush": no_flush, "no decode": no_decode,
                                     "loads only": lambda t: no_flush(no_decode(t))})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fmt", default="mxfp4")
    ap.add_argument("--json", default="out/ws_ablate.json")
    args = ap.parse_args()
    kb.GRAPHS = True
    mods = variants()
    rows = []
    for name, (N, K) in kb.linears():
        x = torch.randn(1, K, device="cuda", dtype=torch.bfloat16)
        _, _, tcb, alpha, _, n_w = kb.tc_weights(args.fmt, N, K)
        res = {"bf16": kb.bf16_time(x, N, K)}
        for k, m in mods.items():
            res[k] = kb.bench(lambda i, m=m, x=x, tcb=tcb, alpha=alpha: m.ws_gemv(x, tcb[i], alpha), n_w) * 1e6
        for sp in (1, 2, 4, 8, 16):
            try:
                res[f"split {sp}"] = kb.bench(lambda i, x=x, tcb=tcb, alpha=alpha, sp=sp: wsgemv.ws_gemv(
                    x, tcb[i], alpha, split=sp, bricks=1, stages=4), n_w) * 1e6
            except MrgptqError as e:  # the workspace too small for that many programs
                print(f"{name} split {sp}: {e}")
        print(f"{name:12s} " + "; ".join(f"{k} {v:.1f} us" for k, v in res.items()), flush=True)
        rows.append({"shape": name, "N": N, "K": K, "fmt": args.fmt, "M": 1, "us": res})
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
