"""The kernels build for every GPU generation QuantLinear runs them on, checked on the CPU with Triton's own
toolchain (`kernels/targets.py`): a PTX instruction or fp8 type an older GPU lacks fails only there, and the GPU
tests run on a Hopper. Each check runs in a subprocess without TRITON_INTERPRET (the interpreter compiles
nothing; conftest.py sets it for this process)."""
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

ARCHES = (80, 86, 89, 90, 100, 120)


def _env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # compile for real, not from an earlier run's cache
    return env


def _python(args, tmp_path):
    return subprocess.run([sys.executable, *args], check=False, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=1500)


def test_every_kernel_launch_builds_for_every_target_gpu(tmp_path):
    """Every launch the wrappers make (captured on CPU tensors with each target's code paths) compiles to a
    cubin for sm_80 (A100) through sm_120 (RTX 50xx); FP8 conversion is refused below sm_89, the Gluon kernels
    are built for Hopper only; none leaves FMA contraction to Triton's default (3.9 warns, 3.10 turns it off)."""
    halves = (ARCHES[::2], ARCHES[1::2])  # two processes (CI has two cores)
    procs = [subprocess.Popen([sys.executable, "-m", "mrgptq.kernels.targets", "--arch", ",".join(map(str, h))],
                              env=_env(tmp_path / str(i)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, h in enumerate(halves)]
    outs = [p.communicate(timeout=1500) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out[-4000:] + err[-4000:]
        assert "TRITON_DEFAULT_FP_FUSION" not in err, err[-4000:]  # every launch names its FMA contraction (LAUNCH)
    rows = [[f.strip() for f in ln.split(" | ")] for out, _ in outs for ln in out.splitlines() if ln.startswith("sm_")]
    built = {(int(r[0][3:]), r[1]) for r in rows if r[-1] == "ok"}
    for arch in ARCHES:
        for case in ("tc_gemv mxfp4", "tc_gemv nvfp4", "rotate_quantize mxfp4 b32", "rotate_quantize nvfp4 b16",
                     "fp4_gemv nvfp4", "fp4_matmul w4a4 mxfp4", "fp4_matmul w4a4 nvfp4",
                     "dequantize nvfp4 bfloat16", "gptq lazy block"):
            assert (arch, case) in built, (arch, case)
        assert ((arch, "fp8_rows mxfp4") in built) == (arch >= 89), arch
    assert not any(case.startswith(("row_gemv", "ws_gemv", "mid_gemm")) for arch, case in built if arch != 90)
    from mrgptq.kernels import has_gluon

    if has_gluon():  # this Triton is one the Gluon kernels run on (3.6, 3.9): they build for Hopper
        assert {(90, f"{k} {f}") for k in ("row_gemv", "ws_gemv", "mid_gemm", "mid_gemm pingpong")
                for f in ("mxfp4", "nvfp4")} <= built


def test_the_check_catches_an_instruction_the_target_lacks(tmp_path):
    """A kernel with Hopper's mul.bf16x2 (what tc_gemv's decode used before it became an fma with -0) fails for
    sm_80 and sm_89 with ptxas' reason, and builds for sm_90."""
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent('''
        import torch
        import triton
        import triton.language as tl

        from mrgptq.kernels import targets

        @triton.jit
        def _mul(x_ptr):
            x = tl.load(x_ptr)
            y = tl.inline_asm_elementwise("mul.rn.bf16x2 $0, $1, $1;", "=r,r", [x], dtype=tl.int32, is_pure=True,
                                          pack=1)
            tl.store(x_ptr, y)

        launch = targets.Launch("probe", _mul, (torch.ones(4, dtype=torch.int32),), {})
        for arch in (80, 89, 90):
            print("RESULT", arch, targets.compile_launch(launch, arch).error)
    '''))
    r = _python([str(probe)], tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    out = dict(ln.split(" ", 2)[1:] for ln in r.stdout.splitlines() if ln.startswith("RESULT "))
    assert "mul.bf16x2" in out["80"] and "sm_90" in out["80"], out
    assert "mul.bf16x2" in out["89"], out
    assert out["90"] == "None", out


def test_tc_gemv_keeps_the_decoded_weights_in_registers(tmp_path):
    """`tc_gemv`'s decode feeds wgmma from registers: its sm_90 build at 1, 16 and 64 rows of x holds only the x
    tile (MP tokens x 128 k, bf16) in shared memory, both formats. Session 32's new k order compiled to a round
    trip of every decoded tile through shared memory (MXFP4 20 KB at one row) and made the kernel 1.3-6.6x slower
    on the H200 (BENCHMARKS.md, session 33); the compiler's layout choice, not the code's meaning, decides this."""
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent('''
        import torch

        from mrgptq import formats
        from mrgptq.kernels import targets, tcgemv

        torch.manual_seed(0)
        for fmt in ("mxfp4", "nvfp4"):
            q = formats.quantize(torch.randn(256, 512) * 0.05, fmt)
            tw = tcgemv.tc_pack(formats.pack(q.codes), q.scales, q.spec)
            for m in (1, 16, 64):
                with targets._capturing(90) as got:
                    tcgemv.tc_gemv(torch.randn(m, 512).to(torch.bfloat16), tw)
                (fn, args, kwargs), = got
                k = targets.build(targets.Launch("tc", fn, args, kwargs), 90)
                print("RESULT", fmt, m, kwargs["MP"], k.metadata.shared)
    '''))
    r = _python([str(probe)], tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    rows = [ln.split()[1:] for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert len(rows) == 6, r.stdout[-2000:]
    for fmt, m, mp, shared in rows:
        assert int(shared) == int(mp) * 128 * 2, (fmt, m, mp, shared)
