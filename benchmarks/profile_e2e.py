"""Where a prefill forward and a decode step spend their GPU time: kernels grouped by kind, per model.

    python benchmarks/profile_e2e.py --layers 4 --json out/profile.json

Builds the Llama-3-8B-shaped random model of `mrgptq bench-e2e` with few blocks (the per-block picture is the
same), quantizes it (RTN, online block-Hadamard), and records one prefill forward and one decode step (eager,
static KV cache; `--compile`: the step through torch.compile) with torch.profiler. Prints, per model, the
kernel time per block by group and the largest kernels; the JSON keeps every kernel's total.
"""
from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from mrgptq.algorithms import QuantConfig
from mrgptq.eval import speed
from mrgptq.kernels.siblings import fuse_siblings
from mrgptq.model.pipeline import quantize_data_free
from mrgptq.runtime.compiled import compile as compile_fn

GROUPS = [  # (group, pattern on the kernel name), first match wins
    ("fp4 decode gemm", r"_ws_gemv|_tc_gemv|_gemv_kernel|fp4_matmul|_fp4_gemm"),
    ("rotate/quantize", r"_rotate"),
    ("fp8 convert", r"_fp8_rows"),
    ("dequantize", r"dequant"),
    ("gemm (cuBLAS)", r"gemm|sm90_xmma|cutlass|Kernel2|nvjet|matmul"),
    ("attention", r"flash|fmha|attention|softmax"),
    ("copy/cast", r"copy|Copy|cast|fill"),
]


def group_of(name: str) -> str:
    for g, pat in GROUPS:
        if re.search(pat, name):
            return g
    return "elementwise/other"


def kernel_times(fn, reps: int = 3) -> dict[str, tuple[float, int]]:
    """{kernel name: (microseconds per call of fn, launches per call)} over `reps` profiled calls."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    out: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            out[ev.name][0] += ev.device_time_total / reps
            out[ev.name][1] += 1
    return {k: (v[0], v[1] // reps) for k, v in out.items()}


def summarize(label: str, times: dict, blocks: int, top: int) -> dict:
    total = sum(t for t, _ in times.values())
    groups: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for name, (t, n) in times.items():
        g = groups[group_of(name)]
        g[0] += t
        g[1] += n
    print(f"\n{label}: {total:.0f} us of kernels ({total / blocks:.1f} us per block incl. head), "
          f"{sum(n for _, n in times.values())} launches")
    for g, (t, n) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
        print(f"  {g:22s} {t:10.1f} us  {100 * t / total:5.1f}%  {n:5d} launches")
    for name, (t, n) in sorted(times.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"    {t:10.1f} us  x{n:<4d} {name[:110]}")
    return {"total_us": total, "groups": {g: {"us": t, "launches": n} for g, (t, n) in groups.items()},
            "kernels": {k: {"us": t, "launches": n} for k, (t, n) in times.items()}}


def profile_variant(v: str, config, a, b: int, s: int) -> dict:
    model = speed.random_model(config, "cuda")
    if v != "bf16":
        fmt, _, act = v.partition("-")
        quantize_data_free(model, QuantConfig(format=fmt, method="rtn", transform="hadamard", w4a4=act == "w4a4"))
        fuse_siblings(model)
    ids = torch.randint(0, config.vocab_size, (b, s), device="cuda")
    with torch.no_grad():
        pre = kernel_times(lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1))
        fwd = compile_fn(model.forward, dynamic=False) if a.compile else None
        dec = kernel_times(speed.decode_step(model, a.decode_batch, 128, 64, forward=fwd), reps=5)
    out = {"prefill": summarize(f"{v} prefill {a.prefill}", pre, a.layers, a.top),
           "decode": summarize(f"{v} decode step b{a.decode_batch}{' compiled' * a.compile}", dec, a.layers,
                               a.top)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="llama3-8b")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--variants", default="bf16,mxfp4,mxfp4-w4a4", help="bf16, FORMAT (W4A16), FORMAT-w4a4")
    p.add_argument("--prefill", default="1x4096")
    p.add_argument("--decode-batch", type=int, default=1)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--compile", action="store_true", help="decode step through torch.compile, as bench-e2e's")
    p.add_argument("--json")
    a = p.parse_args()
    config = speed.llama_config(a.shape, a.layers)
    b, s = (int(v) for v in a.prefill.split("x"))
    results = {}
    for v in a.variants.split(","):
        results[v] = profile_variant(v, config, a, b, s)
        torch.cuda.empty_cache()  # the variant's model is gone with its frame
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "shape": a.shape,
                                            "layers": a.layers, "results": results}, indent=1))


if __name__ == "__main__":
    main()
