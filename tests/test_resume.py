"""Kill -9 in the middle of `mrgptq quantize`, run the same command again: the checkpoint is byte-identical."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_llama


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A tiny Llama saved with a word-level tokenizer: a model directory the CLI loads offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny")
    words = sorted(set(Path(__file__).read_text().split()))[:250]
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]").save_pretrained(d)
    tiny_llama(layers=6, hidden=64, inter=128, vocab=256).save_pretrained(d)
    calib = d / "calib.txt"
    calib.write_text(" ".join(words * 40))
    return d


def quantize_cmd(model_dir, out):
    return [sys.executable, "-m", "mrgptq.cli", "quantize", str(model_dir), "--method", "mr-gptq", "--qep",
            "--format", "nvfp4", "--calib", str(model_dir / "calib.txt"), "--nsamples", "8", "--seqlen", "64",
            "--out", str(out), "--quiet", "--no-eval", "--device", "cpu"]


def test_kill_and_resume_is_byte_identical(tiny_model_dir, tmp_path):
    ref = tmp_path / "ref"
    assert subprocess.run(quantize_cmd(tiny_model_dir, ref), capture_output=True, timeout=600).returncode == 0
    ref_bytes = (ref / "model.safetensors").read_bytes()
    survived = 0
    for kill_after in (1, 4):  # blocks finished before the kill
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
        r = subprocess.run(quantize_cmd(tiny_model_dir, out), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        assert (out / "model.safetensors").read_bytes() == ref_bytes
        assert (out / "mrgptq.json").read_text().replace(str(out), "") == \
            (ref / "mrgptq.json").read_text().replace(str(ref), "")
        assert not partial.exists()
    assert survived >= 1  # at least one run really was killed mid-way
