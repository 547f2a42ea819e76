"""How many programs of a compiled kernel one SM holds at once: the size of a persistent grid.

A persistent grid of more programs than fit runs the surplus as a second, thin wave. Rotate + quantize asked
for 8 programs per SM where its 74-96 registers let 6 (MXFP4) or 5 (NVFP4) be resident: a quarter or more of
the work then ran after the rest, at a fraction of the occupancy (Nsight Compute: "1 full wave and a partial
wave")."""
from __future__ import annotations

import torch

_CACHE: dict = {}
_RESERVED_SMEM = 1024  # bytes of shared memory the driver keeps per resident block (sm_80 and later)


def resident(kernel, args: tuple, meta: dict, device: torch.device) -> int:
    """Programs of `kernel` compiled for (args, meta) (constexprs and launch options, num_warps among them)
    resident per SM, limited by registers (allocated per warp in 256s, each scheduler's file a quarter of the
    SM's), shared memory and threads. Compiles on first use (the launch that follows reuses it)."""
    key = (device.index, tuple(sorted(meta.items())),
           tuple(a.dtype if isinstance(a, torch.Tensor) else type(a) for a in args))
    if key not in _CACHE:
        compiled = kernel.warmup(*args, grid=(1,), **meta)
        compiled._init_handles()  # loads the binary: n_regs
        props = torch.cuda.get_device_properties(device)
        warps = meta.get("num_warps", 4)
        per_warp = -(-compiled.n_regs * 32 // 256) * 256
        regs = getattr(props, "regs_per_multiprocessor", 65536)
        smem = getattr(props, "shared_memory_per_multiprocessor", 233472)
        by_regs = (regs // 4 // per_warp) * 4 // warps
        by_smem = smem // (compiled.metadata.shared + _RESERVED_SMEM)
        by_threads = props.max_threads_per_multi_processor // (32 * warps)
        _CACHE[key] = max(1, min(by_regs, by_smem, by_threads))
    return _CACHE[key]


def persistent_programs(kernel, args: tuple, meta: dict, device: torch.device, units: int, per_sm: int,
                        sms: int) -> int:
    """The size of a persistent grid over `units` work units: at most `per_sm` programs per SM and no more than
    are resident at once (`args` without the trailing program count, which the kernel takes last), nor more
    programs than units. The CPU interpreter has no residency: there `per_sm` alone."""
    from .fp4 import INTERPRET

    if not INTERPRET:
        per_sm = min(per_sm, resident(kernel, args + (per_sm * sms,), meta, device))
    return max(1, min(units, per_sm * sms))
