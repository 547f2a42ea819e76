"""Kill -9 in the middle of `mrgptq quantize`, run the same command again: the checkpoint is byte-identical.

The kill points are random blocks (MRGPTQ_KILL_SEED picks them; the failure message names the seed)."""
import os
import random
import signal
import subprocess
import sys
import time


def quantize_cmd(model_dir, out):
    return [sys.executable, "-m", "mrgptq.cli", "quantize", str(model_dir), "--method", "mr-gptq", "--qep",
            "--format", "nvfp4", "--calib", str(model_dir / "calib.txt"), "--nsamples", "8", "--seqlen", "64",
            "--out", str(out), "--quiet", "--no-eval", "--device", "cpu"]


def test_kill_and_resume_is_byte_identical(tiny_model_dir, tmp_path):
    ref = tmp_path / "ref"
    assert subprocess.run(quantize_cmd(tiny_model_dir, ref), capture_output=True, timeout=600, check=False).returncode == 0
    ref_bytes = (ref / "model.safetensors").read_bytes()
    seed = int(os.environ.get("MRGPTQ_KILL_SEED", random.randrange(10**6)))
    kills = sorted(random.Random(seed).sample(range(1, 6), 3))  # blocks finished before the kill (of 6)
    survived = 0
    for kill_after in kills:
        out = tmp_path / f"run{kill_after}"
        partial = out.with_name(out.name + ".partial")
        p = subprocess.Popen(quantize_cmd(tiny_model_dir, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline and p.poll() is None:
            if (partial / f"block_{kill_after - 1:04d}.safetensors").exists():
                os.kill(p.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
        p.wait()
        if p.returncode == -signal.SIGKILL:
            survived += 1
            assert not out.exists() or not (out / "model.safetensors").exists()  # nothing looks complete
        r = subprocess.run(quantize_cmd(tiny_model_dir, out), capture_output=True, text=True, timeout=600, check=False)
        assert r.returncode == 0, r.stderr
        assert (out / "model.safetensors").read_bytes() == ref_bytes, f"kill after block {kill_after}, seed {seed}"
        assert (out / "mrgptq.json").read_text().replace(str(out), "") == \
            (ref / "mrgptq.json").read_text().replace(str(ref), "")
        assert not partial.exists()
    assert survived >= 2, f"only {survived} of {kills} runs were killed mid-way (seed {seed})"
