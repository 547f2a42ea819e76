"""Time MR-GPTQ on the first decoder blocks of the built-in SmolLM2 and extrapolate to the whole model.

    python benchmarks/block_time.py --blocks 2 --nsamples 128 --seqlen 2048 --json out/block_time.json
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from mrgptq.algorithms import QuantConfig
from mrgptq.model import calibration, loading
from mrgptq.model.arch import blocks, get_arch
from mrgptq.model.pipeline import first_block_inputs, quantize_block


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--format", default="mxfp4")
    p.add_argument("--method", default="mr-gptq")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default="out/block_time.json")
    a = p.parse_args()
    model, tok = loading.load_model(), loading.load_tokenizer()
    ids = calibration.sample_windows(tok, calibration.builtin_text(), a.nsamples, a.seqlen, 0)
    cfg = QuantConfig(format=a.format, method=a.method)
    stream = first_block_inputs(model, ids, a.device)
    rows = []
    for i in range(a.blocks):
        t = time.time()
        stream, layer_rows = quantize_block(blocks(model)[i], cfg, get_arch(model), stream, a.device, 1, i)
        rows.append({"block": i, "seconds": round(time.time() - t, 2),
                     "capture_seconds": layer_rows[0]["capture_seconds"],
                     "quantize_seconds": round(sum(r["seconds"] for r in layer_rows), 2)})
    per_block = sum(r["seconds"] for r in rows) / len(rows)
    total = per_block * len(blocks(model))
    print(f"{'block':>5} {'total s':>8} {'capture s':>10} {'quantize s':>11}")
    for r in rows:
        print(f"{r['block']:>5} {r['seconds']:>8} {r['capture_seconds']:>10} {r['quantize_seconds']:>11}")
    print(f"extrapolated whole model: {total / 60:.1f} min on {a.device} ({torch.get_num_threads()} threads)")
    with open(a.json, "w") as f:
        json.dump({"device": a.device, "threads": torch.get_num_threads(), "config": cfg.resolved().to_dict(),
                   "nsamples": a.nsamples, "seqlen": a.seqlen, "blocks": rows,
                   "extrapolated_minutes": total / 60}, f, indent=2)


if __name__ == "__main__":
    main()
