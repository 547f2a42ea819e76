"""A few launches of the decode GEMM (`tc`: gate_up, down, o at M=1, MXFP4) or the rotate+quantize kernel
(`rq`: MXFP4 b32 and NVFP4 b16, M=K=4096; the Gluon or the Triton kernel) for Nsight Compute to read the counters of:

    S="--section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis --section Occupancy \\
       --section LaunchStats --section SchedulerStats"
    ncu --clock-control none -k regex:_tc_gemv_kernel $S -c 6 python benchmarks/ncu_probe.py tc
    ncu --clock-control none -k regex:_rotate_quantize $S -c 4 python benchmarks/ncu_probe.py rq triton
    ncu --clock-control none -k regex:_rq_kernel $S -c 4 python benchmarks/ncu_probe.py rq gluon
    ncu --clock-control none -k regex:_ws_gemv $S -c 6 python benchmarks/ncu_probe.py ws '{"stages": 4}'
    ncu --clock-control none -k regex:_row_gemv $S -c 6 python benchmarks/ncu_probe.py row
    ncu --clock-control none -k regex:_mid_gemm $S -c 6 python benchmarks/ncu_probe.py mid '{"M": 128}'
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import kernels as kb

from mrgptq import formats
from mrgptq.kernels.quantize import rotate_quantize
from mrgptq.kernels.tcgemv import tc_gemv, tc_pack


def decode_gemm_launches(gemm, M=1):
    """Two launches of gemm(x, weight, alpha) on each of gate_up, down and o at M rows (default 1), MXFP4."""
    for name in ("8B gate_up", "8B down", "8B o"):
        N, K = kb.SHAPES[name]
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        q, bufs, alpha, _ = kb.packed_weights("mxfp4", N, K, 1, "cuda")
        tw = tc_pack(*bufs[0], q.spec)
        for _ in range(2):
            gemm(x, tw, alpha)


if sys.argv[1:] == ["tc"]:
    decode_gemm_launches(tc_gemv)
elif sys.argv[1:2] in (["ws"], ["row"], ["mid"]):  # a Gluon decode GEMM; kwargs as JSON in argv[2] ("M": rows)
    import json

    from mrgptq.kernels.midgemm import mid_gemm
    from mrgptq.kernels.rowgemv import row_gemv
    from mrgptq.kernels.wsgemv import ws_gemv
    kw = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    M = kw.pop("M", 128 if sys.argv[1] == "mid" else 1)
    gemm = {"ws": ws_gemv, "row": row_gemv, "mid": mid_gemm}[sys.argv[1]]
    decode_gemm_launches(lambda x, tw, alpha: gemm(x, tw, alpha, **kw), M)
elif sys.argv[1:2] == ["rq"]:  # argv[2]: the kernel (gluon, triton; default: rotate_quantize's choice)
    x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    for fmt, block in (("mxfp4", 32), ("nvfp4", 16)):
        spec = formats.get_spec(fmt)
        gs = formats.nv_global_scale(x.float()).reshape(1) if fmt == "nvfp4" else None
        for _ in range(2):
            rotate_quantize(x, spec, block, global_scale=gs, kernel=(sys.argv[2:] or [None])[0])
else:
    sys.exit("usage: python benchmarks/ncu_probe.py tc|rq|ws|row|mid [JSON kwargs]")
torch.cuda.synchronize()
