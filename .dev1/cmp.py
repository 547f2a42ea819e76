import math, torch
from triton.testing import do_bench
from mrgptq import formats
from mrgptq.kernels.gemm import fp4_matmul
SH = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
dev = "cuda"
for name, (N, K) in SH.items():
    q = formats.quantize(torch.randn(N, K, device=dev) * 0.02, "mxfp4"); wp = formats.pack(q.codes)
    nb = max(2, math.ceil(200e6 / (N * K / 2))); bufs = [(wp.clone(), q.scales.clone()) for _ in range(nb)]
    for M in (1, 16):
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
        out = []
        for gather in (False, True):
            for cfg in (None, (16, 128, 256, 0, 4, 3), (16, 32, 256, 0, 4, 4)):
                st = {"i": 0}
                c = cfg
                if cfg is not None:
                    tiles = math.ceil(N / cfg[1]); sp = 1
                    while tiles * sp < 264 and sp * 2 <= K // cfg[2]: sp *= 2
                    c = (cfg[0], cfg[1], cfg[2], sp, cfg[4], cfg[5])
                def f():
                    st["i"] += 1; b = bufs[st["i"] % nb]; return fp4_matmul(x, b[0], b[1], q.spec, 1.0, config=c, gather=gather)
                out.append(("g" if gather else "r", c, round(do_bench(f, warmup=10, rep=40, return_mode="median") * 1e3, 1)))
        print(name, M, out, flush=True)
