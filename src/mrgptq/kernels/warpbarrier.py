"""Warp barriers in a Gluon loop whose warps share no shared memory: a PTX rewrite at compile time.

Gluon's barrier pass puts a CTA barrier (`bar.sync 0`) between a write and a later read, or a read and a later
write, of one shared allocation, since it cannot see which warp touches which bytes. In `row_gemv`'s main loop
every warp copies, then reads, only its own slice of each ring stage (the layouts put the warp on the buffers'
first dimension), so ordering a warp's own lanes is all the loop needs; the CTA barriers only march the warps in
lockstep, each waiting for the slowest one's copies. Turning them into warp barriers made every Llama-3 linear
1-9% faster, bit for bit the same (H200, BENCHMARKS.md, session 20).

A kernel opts in with `mark(step)` inside the loop: a PTX comment the compiled code drops. At compile time the
hook below turns each `bar.sync 0` in the innermost loop holding the marker into `bar.warp.sync -1`. Unmarked
kernels, and a marked one whose PTX is not shaped as expected, compile unchanged: the CTA barrier is always
correct, only slower. The hook is Triton's one `add_stages_inspection_hook`; it is installed on the first launch
of a marked kernel and calls any hook that was there before it (one installed later replaces it: the kernels then
keep their CTA barriers)."""
from __future__ import annotations

import re

from triton.experimental import gluon
from triton.experimental.gluon import language as gl

MARKER = "mrgptq:warp-barriers"
_MARK_ASM = gl.constexpr("mov.b32 $0, $1; // " + MARKER)
_KEY = "mrgptq-warp-barriers-2"  # in the compile cache key where Triton asks for one (3.7 and later)


@gluon.jit
def mark(step):
    """Tag the loop this sits in (its result is unused; the copy of `step` is dead in the compiled code)."""
    gl.inline_asm_elementwise(_MARK_ASM, "=r,r", [step], dtype=gl.int32, is_pure=False, pack=1)


def _loops(lines: list[str]) -> list[tuple[int, int]]:
    """(first, last) line of each loop: a label and the last branch back to it. LLVM may place a loop's header
    after its body (a rotated loop with a conditional block), so the body ends at the furthest back edge."""
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"(\$L__\w+):", line))}
    last: dict[int, int] = {}
    for i, line in enumerate(lines):
        m = re.search(r"\bbra(?:\.uni)?\s+(\$L__\w+);", line)
        if m and labels.get(m.group(1), i) < i:
            last[labels[m.group(1)]] = i
    return sorted(last.items())


def warp_barriers(ptx: str) -> str:
    """ptx with the CTA barriers of the innermost loop around the marker(s) made warp barriers; unchanged where
    there is no marker, or the markers are not all inside one loop."""
    lines = ptx.split("\n")
    marks = [i for i, line in enumerate(lines) if MARKER in line]
    if not marks:
        return ptx
    around = [(a, b) for a, b in _loops(lines) if all(a < m < b for m in marks)]
    if not around:
        return ptx
    first, last = min(around, key=lambda loop: loop[1] - loop[0])
    for i in range(first, last):
        if re.fullmatch(r"\s*(bar|barrier)\.sync(\.aligned)?\s+0;\s*", lines[i]):
            lines[i] = "\tbar.warp.sync \t-1;"
    return "\n".join(lines)


_installed = False


def install() -> None:
    """Put the rewrite into Triton's compile pipeline once per process, after any hook already there."""
    global _installed
    if _installed:
        return
    from triton import knobs

    previous = knobs.runtime.add_stages_inspection_hook

    def hook(*args):
        if not args:  # Triton 3.7+ asks on every launch for the hook's part of the cache key
            if previous is None:
                return _KEY, _KEY
            key, digest = previous()
            return key + _KEY, f"{digest}{_KEY}"
        if previous is not None:
            previous(*args)
        _backend, stages, *_ = args
        if "ptx" in stages:
            make_ptx = stages["ptx"]
            stages["ptx"] = lambda src, metadata: warp_barriers(make_ptx(src, metadata))

    knobs.runtime.add_stages_inspection_hook = hook
    _installed = True
