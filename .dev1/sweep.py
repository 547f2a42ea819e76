import itertools, math, torch
from triton.testing import do_bench
from mrgptq import formats
from mrgptq.kernels.gemm import fp4_matmul
SH = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
dev = "cuda"
for fmt in ("mxfp4",):
    for name, (N, K) in SH.items():
        W = torch.randn(N, K, device=dev) * 0.02
        q = formats.quantize(W, fmt); wp = formats.pack(q.codes)
        nb = max(2, math.ceil(200e6 / (N * K / 2)))
        bufs = [(wp.clone(), q.scales.clone()) for _ in range(nb)]
        wb = [torch.randn(N, K, device=dev, dtype=torch.bfloat16) for _ in range(min(8, max(2, math.ceil(200e6 / (N*K*2)))))]
        for M in (1, 16):
            x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
            st = {"i": 0}
            def tb():
                st["i"] += 1; return x @ wb[st["i"] % len(wb)].T
            t0 = do_bench(tb, warmup=25, rep=60, return_mode="median")
            res = []
            for bn, bk, split, warps, stages in itertools.product((32, 64, 128), (128, 256, 512), (1, 2, 4, 8), (4,), (3, 4)):
                if K % bk or (K // bk) < split: continue
                cfg = (16, bn, bk, split, warps, stages)
                def f():
                    st["i"] += 1; b = bufs[st["i"] % nb]; return fp4_matmul(x, b[0], b[1], q.spec, 1.0, config=cfg)
                try:
                    t = do_bench(f, warmup=10, rep=40, return_mode="median")
                except Exception as e:
                    continue
                res.append((t, cfg))
            res.sort()
            print(fmt, name, "M", M, "bf16 %.1f us" % (t0 * 1e3), "best", [("%.1f us x%.2f" % (t * 1e3, t0 / t), c) for t, c in res[:3]], flush=True)
