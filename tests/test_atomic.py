"""Atomic outputs: `mrgptq export` interrupted at any file operation leaves either no checkpoint or the
previous complete one at --out, never a directory that looks complete but is not."""
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama

import mrgptq.runtime.checkpoint as ckpt
from mrgptq.algorithms import QuantConfig
from mrgptq.cli import main
from mrgptq.model.pipeline import quantize_model


class _Tripwire:
    """Counts file writes, directory creations and renames under `root`; raises KeyboardInterrupt at number `at`."""

    def __init__(self):
        self.root, self.at, self.count = None, None, 0

    def arm(self, root: Path, at: int | None):
        self.root, self.at, self.count = str(root), at, 0

    def disarm(self):
        self.root = None

    def hit(self, path):
        if self.root is None or not isinstance(path, (str, bytes, os.PathLike)):
            return
        if not os.fsdecode(path).startswith(self.root):
            return
        self.count += 1
        if self.count == self.at:
            raise KeyboardInterrupt

    def audit(self, event, args):
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                (mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR))
            if writes:
                self.hit(path)
        elif event in ("os.mkdir", "os.rename", "os.remove", "shutil.rmtree"):
            self.hit(args[0])


TRIP = _Tripwire()
sys.addaudithook(TRIP.audit)


def _snapshot(d: Path):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()} if d.exists() else None


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The same tiny model quantized twice, NVFP4 W4A4 and MXFP4 W4A16, in our layout."""
    root = tmp_path_factory.mktemp("atomic")
    out = {}
    for name, cfg in {"nv": QuantConfig(format="nvfp4", method="rtn", w4a4=True),
                      "mx": QuantConfig(format="mxfp4", method="rtn")}.items():
        m = tiny_llama(layers=2)
        quantize_model(m, torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(1)), cfg,
                       progress=False)
        out[name] = ckpt.save_checkpoint(m, None, {"config": cfg.resolved().to_dict(), "dtype": "float32",
                                                   "label": cfg.label}, root / name)
    return out


@pytest.mark.parametrize("previous", [False, True], ids=["fresh-out", "over-previous"])
def test_export_interrupted_at_every_file_operation(checkpoints, tmp_path, monkeypatch, previous):
    real_save = ckpt.save_file

    def save_file(tensors, path, **kw):  # safetensors writes from Rust: count it as one file operation
        TRIP.hit(path)
        return real_save(tensors, path, **kw)

    monkeypatch.setattr(ckpt, "save_file", save_file)
    out = tmp_path / "out"
    argv = ["export", str(checkpoints["nv"]), "--to", "compressed-tensors", "--out", str(out), "--overwrite"]
    # one clean run: what a complete export looks like, and how many file operations it makes
    if previous:
        assert main(["export", str(checkpoints["mx"]), "--to", "mrgptq", "--out", str(out)]) == 0
    before = _snapshot(out)
    TRIP.arm(tmp_path, None)
    assert main(argv) == 0
    ops = TRIP.count
    TRIP.disarm()
    complete = _snapshot(out)
    assert ops >= 6 and complete != before
    interrupted = kept = 0
    for at in range(1, ops + 1):
        if previous:  # restore the previous checkpoint
            assert main(["export", str(checkpoints["mx"]), "--to", "mrgptq", "--out", str(out), "--overwrite"]) == 0
        else:
            shutil.rmtree(out, ignore_errors=True)
        before = _snapshot(out)
        TRIP.arm(tmp_path, at)
        try:
            rc = main(argv)
        finally:
            TRIP.disarm()
        state = _snapshot(out)
        assert rc in (0, 130)
        assert state in (before, complete), f"interrupted at file operation {at}: --out is neither absent, " \
            "the previous checkpoint nor the complete new one"
        interrupted += rc == 130
        kept += state == before
    assert interrupted == ops and kept >= ops - 2  # only an interrupt in the clean-up after the swap keeps the new
