"""Gluon's calls under the names of the Triton release at hand.

Gluon is experimental and changes between releases: 3.9 renamed cp.async's and TMA's
`async_copy_global_to_shared` to `async_load` (the old cp.async name now raises) and `thread_barrier` to
`barrier`, made `_reinterpret` public, and refuses a view larger than the buffer it reinterprets. The Gluon
kernels call the names below, which are that release's own builtins, so each release compiles the same
operations; the releases the kernels have run on are `kernels.GLUON_TRITON`."""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as _copy
from triton.experimental.gluon.language.nvidia.hopper import tma as _tma

from . import triton_release

async_load = _copy.async_load if hasattr(_copy, "async_load") else _copy.async_copy_global_to_shared
barrier = gl.barrier if hasattr(gl, "barrier") else gl.thread_barrier
tma_load = _tma.async_load if hasattr(_tma, "async_load") else _tma.async_copy_global_to_shared  # 3.9 renamed it
# a view of a buffer may reach past it into the bytes that follow (row_gemv's MMA tile past the copied tokens)
OUTGROWING_VIEWS = triton_release() < (3, 9)
_PUBLIC_REINTERPRET = gl.constexpr(hasattr(gl.shared_memory_descriptor, "reinterpret"))  # 3.9; before: `_reinterpret`


@gluon.jit
def reinterpret(buf, dtype: gl.constexpr, shape: gl.constexpr, layout: gl.constexpr):
    """The shared buffer `buf` viewed with another dtype, shape and layout (no copy)."""
    if _PUBLIC_REINTERPRET:
        return buf.reinterpret(dtype, shape, layout)
    else:
        return buf._reinterpret(dtype, shape, layout)
