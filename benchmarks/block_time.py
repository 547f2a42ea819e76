"""Time quantization per decoder block, say where the time goes, and extrapolate to the whole model.

    python benchmarks/block_time.py --shape smollm2 --blocks 2 --device cpu          # the built-in model
    python benchmarks/block_time.py --shape llama3-8b --blocks 2 --baseline          # H100: 8B-shaped blocks
    python benchmarks/block_time.py --shape llama3-70b --blocks 1                    # one 70B block, streamed

Llama shapes are built from their configs with random weights (init std 0.02, the real weights' scale);
calibration is `--nsamples` x `--seqlen` random tokens. Blocks live on the CPU and visit the GPU one at a time,
as in `mrgptq quantize`. Phase times are measured by wrapping the pipeline's functions with device syncs.
`--baseline` re-times block 0's linears with the Triton GPTQ loop off (MRGPTQ_KERNELS=0) in the same run.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections import defaultdict

import torch

from mrgptq import formats
from mrgptq.algorithms import Hessian, QuantConfig
from mrgptq.eval import speed
from mrgptq.model.arch import blocks, get_arch
from mrgptq.model.pipeline import first_block_inputs, quantize_block
from mrgptq.transforms import Rotation

CALIB_VOCAB = 4096  # the embedding is not what is timed: a small vocabulary keeps the CPU-side model light


def build(shape: str, nblocks: int, dtype):
    if shape == "smollm2":
        from mrgptq.model import calibration, loading

        model, tok = loading.load_model(dtype=dtype), loading.load_tokenizer()
        return model, len(blocks(model)), lambda n, s: calibration.sample_windows(
            tok, calibration.builtin_text(), n, s, 0)
    cfg = speed.llama_config(shape, layers=nblocks)
    cfg.vocab_size = CALIB_VOCAB
    model = speed.random_model(cfg, "cpu", dtype)
    depth = speed.SHAPES[shape][2]
    return model, depth, lambda n, s: torch.randint(0, CALIB_VOCAB, (n, s), generator=torch.Generator().manual_seed(0))


class Phases:
    """Wrap functions so each call's device time adds up under a phase name."""

    def __init__(self, device):
        self.sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
        self.t = defaultdict(float)
        self.undo = []

    def wrap(self, owner, attr, phase):
        fn = getattr(owner, attr)

        def timed(*a, **k):
            self.sync()
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.sync()
                self.t[phase] += time.perf_counter() - t0

        setattr(owner, attr, timed)
        self.undo.append((owner, attr, fn))

    def restore(self):
        for owner, attr, fn in reversed(self.undo):
            setattr(owner, attr, fn)


def phases_for(device):
    G = sys.modules["mrgptq.algorithms.gptq"]
    ph = Phases(device)
    ph.wrap(Hessian, "add", "hessian accumulation")
    ph.wrap(formats, "choose_scales", "scale search")
    ph.wrap(G, "cholesky_inverse_upper", "cholesky")
    ph.wrap(G, "_lazy_block_gpu", "gptq loop")
    ph.wrap(G, "_lazy_block", "gptq loop")
    ph.wrap(Rotation, "fuse", "rotation")
    ph.wrap(sys.modules["mrgptq.model.pipeline"], "relative_output_error", "error report")
    return ph


@contextlib.contextmanager
def kernels_off():
    old = os.environ.get("MRGPTQ_KERNELS")
    os.environ["MRGPTQ_KERNELS"] = "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["MRGPTQ_KERNELS"]
        else:
            os.environ["MRGPTQ_KERNELS"] = old


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="smollm2", choices=["smollm2", "llama3-8b", "llama3-70b"])
    p.add_argument("--blocks", type=int, default=2, help="blocks to time (extrapolated to the real depth)")
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--format", default="mxfp4")
    p.add_argument("--method", default="mr-gptq")
    p.add_argument("--qep", action="store_true")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--baseline", action="store_true", help="also time block 0's GPTQ with the kernel off")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default="out/block_time.json")
    a = p.parse_args()
    dtype = getattr(torch, a.dtype)
    model, depth, calib = build(a.shape, a.blocks, dtype)
    ids = calib(a.nsamples, a.seqlen)
    cfg = QuantConfig(format=a.format, method=a.method, qep=a.qep)
    gpu = a.device.startswith("cuda")
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    stream = first_block_inputs(model, ids, a.device, a.batch_size)
    if a.qep:
        stream.q = stream.fp.clone()
    t_first = time.time() - t0
    rows = []
    for i in range(a.blocks):
        ph = phases_for(a.device)
        block = blocks(model)[i]
        base_state = {k: v.clone() for k, v in block.state_dict().items()} if a.baseline and i == 0 else None
        t = time.time()
        nxt, layer_rows = quantize_block(block, cfg, get_arch(model), stream, a.device, a.batch_size, i)
        ph.restore()
        row = {"block": i, "seconds": round(time.time() - t, 2), "capture_seconds": layer_rows[0]["capture_seconds"],
               "quantize_seconds": round(sum(r["seconds"] for r in layer_rows), 2),
               "phases": {k: round(v, 2) for k, v in ph.t.items()},
               "mean_rel_error": sum(r["rel_error"] for r in layer_rows) / len(layer_rows)}
        if base_state is not None:  # the same block again with the column-by-column loop
            fresh = type(block)(model.config, i).to(dtype)
            fresh.load_state_dict(base_state)
            ph = phases_for(a.device)
            with kernels_off():
                t = time.time()
                _, base_rows = quantize_block(fresh, cfg, get_arch(model), stream, a.device, a.batch_size, i)
            ph.restore()
            row["baseline_kernels_off"] = {
                "seconds": round(time.time() - t, 2),
                "quantize_seconds": round(sum(r["seconds"] for r in base_rows), 2),
                "phases": {k: round(v, 2) for k, v in ph.t.items()},
                "mean_rel_error": sum(r["rel_error"] for r in base_rows) / len(base_rows)}
        stream = nxt
        rows.append(row)
        print(json.dumps(row), flush=True)
    per_block = sum(r["seconds"] for r in rows) / len(rows)
    total = t_first + per_block * depth
    peak = torch.cuda.max_memory_allocated() / 2**30 if gpu else None
    name = torch.cuda.get_device_name() if gpu else f"cpu ({torch.get_num_threads()} threads)"
    print(f"\n{a.shape} {cfg.resolved().label}, {a.nsamples}x{a.seqlen} tokens, {a.dtype}, on {name}")
    print(f"{'block':>5} {'total s':>8} {'capture s':>10} {'quantize s':>11}  phases")
    for r in rows:
        ph = ", ".join(f"{k} {v}" for k, v in r["phases"].items())
        print(f"{r['block']:>5} {r['seconds']:>8} {r['capture_seconds']:>10} {r['quantize_seconds']:>11}  {ph}")
        if "baseline_kernels_off" in r:
            b = r["baseline_kernels_off"]
            print(f"{'(off)':>5} {b['seconds']:>8} {'':>10} {b['quantize_seconds']:>11}  "
                  + ", ".join(f"{k} {v}" for k, v in b["phases"].items()))
    print(f"first-block inputs {t_first:.1f}s; extrapolated whole model ({depth} blocks): {total / 60:.1f} min; "
          f"peak GPU memory {peak:.1f} GiB" if gpu else f"extrapolated whole model: {total / 60:.1f} min")
    os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
    with open(a.json, "w") as f:
        json.dump({"device": name, "shape": a.shape, "dtype": a.dtype, "config": cfg.resolved().to_dict(),
                   "nsamples": a.nsamples, "seqlen": a.seqlen, "batch_size": a.batch_size, "blocks": rows,
                   "first_block_seconds": t_first, "depth": depth, "extrapolated_minutes": total / 60,
                   "peak_gpu_gib": peak}, f, indent=2)


if __name__ == "__main__":
    main()
