"""The bad-input matrix: every way a user can hand us something unusable, through the CLI and the Python API.

CLI: exit code 2, exactly one `mrgptq: error:` line that names the problem (the needle), no traceback, and
nothing written where the output would have gone. API: one specific MrgptqError subclass with a one-line message.
"""
import errno
import json
import os
import pickle

import pytest
import torch
from conftest import save_model_dir, student_t, tiny_llama

import mrgptq
from mrgptq import formats
from mrgptq.algorithms import QuantConfig
from mrgptq.algorithms.config import ConfigError
from mrgptq.algorithms.damping import NumericsError, cholesky_inverse_upper
from mrgptq.algorithms.gptq import gptq
from mrgptq.cli import main
from mrgptq.errors import MrgptqError
from mrgptq.formats.spec import FormatError
from mrgptq.model.arch import UnsupportedArchitecture
from mrgptq.model.calibration import CalibrationError, sample_windows
from mrgptq.model.loading import ModelLoadError, load_model
from mrgptq.model.pipeline import quantize_data_free, quantize_model
from mrgptq.runtime import CheckpointError, save_checkpoint
from mrgptq.transforms import Rotation
from mrgptq.transforms.hadamard import RotationError


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=256)).eval()


def _poisoned(value):
    m = tiny_llama(layers=2)
    with torch.no_grad():
        m.model.layers[1].mlp.down_proj.weight[3, 5] = value
    return m


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, tiny_model_dir):
    """Model directories, each broken in one way, plus a finished checkpoint of the good one."""
    root = tmp_path_factory.mktemp("bad")
    d = {"good": tiny_model_dir}
    d["odd_hidden"] = save_model_dir(root / "odd", tiny_llama(layers=1, hidden=48, inter=96))
    d["gpt2"] = save_model_dir(root / "gpt2", _gpt2())
    d["nan"] = save_model_dir(root / "nan", _poisoned(float("nan")))
    d["inf"] = save_model_dir(root / "inf", _poisoned(float("inf")))
    garbage = save_model_dir(root / "garbage", tiny_llama(layers=1))
    (garbage / "config.json").write_text("{ this is not json")
    d["garbage_config"] = garbage
    bin_only = save_model_dir(root / "bin", tiny_llama(layers=1))
    torch.save(tiny_llama(layers=1).state_dict(), bin_only / "pytorch_model.bin")  # a pickle we must never read
    for f in bin_only.glob("*.safetensors"):
        f.unlink()
    d["bin_only"] = bin_only
    (root / "empty_dir").mkdir()
    d["empty_dir"] = root / "empty_dir"
    for name, text in {"empty.txt": "", "short.txt": "Sphinx of black quartz", "bad.jsonl": "[1, 2]\n"}.items():
        (root / name).write_text(text)
    d["root"] = root
    (root / "calibdir").mkdir()
    ckpt = root / "ckpt"
    assert main(["quantize", str(tiny_model_dir), "--method", "rtn", "--calib", str(tiny_model_dir / "calib.txt"),
                 "--nsamples", "2", "--seqlen", "32", "--out", str(ckpt), "--quiet", "--no-eval",
                 "--device", "cpu", "--export", "mrgptq"]) == 0
    d["ckpt"] = ckpt
    broken = root / "broken_ckpt"
    broken.mkdir()
    (broken / "mrgptq.json").write_text('{"config": ')
    d["broken_ckpt"] = broken
    not_ckpt = root / "not_ckpt"
    not_ckpt.mkdir()
    (not_ckpt / "notes.txt").write_text("hello")
    d["not_ckpt"] = not_ckpt
    return d


def _q(model, *extra, calib=None):
    """A fast quantize command line for a model dir; OUT is filled in by the test."""
    calib = calib or str(model / "calib.txt")
    return ["quantize", str(model), "--method", "rtn", "--calib", calib, "--nsamples", "2", "--seqlen", "32",
            "--quiet", "--no-eval", "--device", "cpu", *extra]


# id -> (argv builder taking the fixture dict, needle in the error line)
CLI_CASES = {
    "missing model dir": (lambda d: ["quantize", "/nonexistent/model/dir"], "does not exist"),
    "missing gguf": (lambda d: ["quantize", "missing.gguf"], "does not exist"),
    "model path is a file": (lambda d: ["quantize", str(d["good"] / "calib.txt")], "not a model directory"),
    "dir without config.json": (lambda d: ["quantize", str(d["empty_dir"])], "no config.json"),
    "garbage config.json": (lambda d: _q(d["garbage_config"]), "cannot load"),
    "pickle-only weights": (lambda d: _q(d["bin_only"]), "never unpickles"),
    "unsupported architecture": (lambda d: _q(d["gpt2"]), "'gpt2' is not supported"),
    "hidden not divisible by group": (lambda d: _q(d["odd_hidden"]), "not divisible by group size 32"),
    "group size 7": (lambda d: _q(d["good"], "--group-size", "7"), "group size"),
    "rotation block not dividing": (lambda d: _q(d["good"], "--transform", "hadamard", "--transform-block", "48"),
                                    "48"),
    "unknown format": (lambda d: ["quantize", "--format", "fp5"], "invalid choice: 'fp5'"),
    "unknown method": (lambda d: ["quantize", "--method", "awq"], "invalid choice: 'awq'"),
    "unknown transform": (lambda d: ["quantize", "--transform", "fourier"], "invalid choice: 'fourier'"),
    "NaN weights": (lambda d: _q(d["nan"]), "NaN/Inf"),
    "Inf weights": (lambda d: _q(d["inf"]), "NaN/Inf"),
    "empty calibration text": (lambda d: _q(d["good"], calib=str(d["root"] / "empty.txt")), "fewer than one window"),
    "short calibration text": (lambda d: _q(d["good"], calib=str(d["root"] / "short.txt")), "fewer than one window"),
    "missing calibration file": (lambda d: _q(d["good"], calib="/nonexistent/calib.txt"), "not found"),
    "calibration path is a directory": (lambda d: _q(d["good"], calib=str(d["root"] / "calibdir")), "directory"),
    "bad jsonl calibration": (lambda d: _q(d["good"], calib=str(d["root"] / "bad.jsonl")), "not a JSON object"),
    "seqlen beyond context": (lambda d: _q(d["good"], "--seqlen", "512"), "exceeds the model's context (256)"),
    "nsamples 0": (lambda d: _q(d["good"], "--nsamples", "0"), "--nsamples"),
    "seqlen 4": (lambda d: _q(d["good"], "--seqlen", "4"), "--seqlen"),
    "non-integer flag": (lambda d: ["quantize", "--nsamples", "many"], "invalid int value"),
    "two different models": (lambda d: _q(d["good"], "--model", str(d["odd_hidden"])), "two different models"),
    "fp-quant export of W4A16": (lambda d: _q(d["good"], "--export", "fp-quant"), "cannot export"),
    "MX-only act rule on nvfp4": (lambda d: _q(d["good"], "--act-format", "nvfp4", "--act-scale-rule", "rounded"),
                                  "MXFP4 only"),
    "MX-only scale rule on nvfp4": (lambda d: _q(d["good"], "--format", "nvfp4", "--scale-rule", "rounded"),
                                    "MXFP4 only"),
    "qep alpha out of range": (lambda d: _q(d["good"], "--qep", "--qep-alpha", "2"), "qep_alpha"),
    "damp 0": (lambda d: _q(d["good"], "--damp", "0"), "damp must be positive"),
    "out is an unrelated dir": (lambda d: _q(d["good"], "--out", str(d["not_ckpt"])), "not an mrgptq checkpoint"),
    "out under a file": (lambda d: _q(d["good"], "--out", str(d["good"] / "calib.txt" / "o")), "which is a file"),
    "eval text missing": (lambda d: ["eval", str(d["ckpt"]), "--eval-text", "/nonexistent.txt"], "does not exist"),
    "eval missing model": (lambda d: ["eval", "/nonexistent/ckpt", "--eval-text", str(d["good"] / "calib.txt")],
                           "does not exist"),
    "inspect missing": (lambda d: ["inspect", "/nonexistent"], "does not exist"),
    "inspect corrupt metadata": (lambda d: ["inspect", str(d["broken_ckpt"])], "is corrupt"),
    "export of a non-checkpoint": (lambda d: ["export", str(d["good"]), "--to", "mrgptq", "--out",
                                              str(d["root"] / "x1")], "not an mrgptq checkpoint"),
    "export onto itself": (lambda d: ["export", str(d["ckpt"]), "--to", "mrgptq", "--out", str(d["ckpt"])],
                           "must differ"),
    "export to a layout the recipe lacks": (lambda d: ["export", str(d["ckpt"]), "--to", "fp-quant", "--out",
                                                       str(d["root"] / "x2")], "cannot export"),
    "export unknown layout": (lambda d: ["export", str(d["ckpt"]), "--to", "gguf", "--out", "x"], "invalid choice"),
    "generate zero tokens": (lambda d: ["generate", str(d["ckpt"]), "hi", "--max-new-tokens", "0"], ">= 1"),
    "generate missing checkpoint": (lambda d: ["generate", "/nonexistent", "hi"], "does not exist"),
    "unknown command": (lambda d: ["quantise"], "invalid choice: 'quantise'"),
}


def _listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def run_main(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    return rc, capsys.readouterr().err


def check_one_line_error(rc, err, needle):
    errors = [line for line in err.splitlines() if line.startswith("mrgptq: error:")]
    assert rc == 2, err
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert needle in errors[0], errors[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_bad_input(case, dirs, tmp_path, capsys):
    build, needle = CLI_CASES[case]
    argv = build(dirs)
    if argv[0] == "quantize" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    watched = [tmp_path, dirs["root"], dirs["good"]]
    before = [_listing(w) for w in watched]
    rc, err = run_main(argv, capsys)
    check_one_line_error(rc, err, needle)
    assert [_listing(w) for w in watched] == before  # nothing written, not even a temp or partial dir


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_cli_unwritable_output(dirs, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        rc, err = run_main(_q(dirs["good"], "--out", str(ro / "out")), capsys)
        check_one_line_error(rc, err, "cannot write")
        assert _listing(ro) == []
    finally:
        ro.chmod(0o700)


def _disk_full(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device", str(a[1]) if len(a) > 1 else None)


def test_cli_full_disk_at_first_block_writes_nothing(dirs, tmp_path, capsys, monkeypatch):
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", _disk_full)
    rc, err = run_main(_q(dirs["good"], "--out", str(tmp_path / "out")), capsys)
    check_one_line_error(rc, err, "no space left on the device")
    assert _listing(tmp_path) == []


def test_cli_full_disk_at_the_end_keeps_the_work_and_resumes(dirs, tmp_path, capsys, monkeypatch):
    import mrgptq.runtime.checkpoint as ckpt

    out = tmp_path / "out"
    monkeypatch.setattr(ckpt, "save_file", _disk_full)  # blocks save fine; the final checkpoint hits a full disk
    rc, err = run_main(_q(dirs["good"], "--out", str(out)), capsys)
    check_one_line_error(rc, err, "no space left on the device")
    assert _listing(tmp_path) and not out.exists()
    assert len(list((tmp_path / "out.partial").glob("block_*.safetensors"))) == 6  # every block's work is kept
    monkeypatch.undo()  # space freed: the same command finishes from the saved blocks
    rc, err = run_main(_q(dirs["good"], "--out", str(out)), capsys)
    assert rc == 0, err
    assert (out / "model.safetensors").is_file() and not (tmp_path / "out.partial").exists()
    ref = tmp_path / "ref"
    assert main(_q(dirs["good"], "--out", str(ref))) == 0
    assert (out / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()


# ----------------------------------------------------------------------------------------------- Python API
def _api_cases(tmp):
    W = student_t((32, 64), seed=1)
    nan = W.clone()
    nan[0, 0] = float("nan")

    def nan_checkpoint():
        m = tiny_llama(layers=1)
        cfg = QuantConfig(format="mxfp4", method="rtn")
        quantize_model(m, torch.randint(0, 256, (2, 16)), cfg, progress=False)
        with torch.no_grad():
            m.model.norm.weight[0] = float("nan")
        save_checkpoint(m, None, {"config": cfg.resolved().to_dict(), "dtype": "float32"}, tmp / "nan_ckpt")

    def truncated_checkpoint():
        d = tmp / "trunc"
        m = tiny_llama(layers=1)
        cfg = QuantConfig(format="nvfp4", method="rtn")
        quantize_model(m, torch.randint(0, 256, (2, 16)), cfg, progress=False)
        save_checkpoint(m, None, {"config": cfg.resolved().to_dict(), "dtype": "float32"}, d)
        blob = (d / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(blob[: len(blob) * 2 // 3])
        mrgptq.load(d)

    def pickle_checkpoint():
        d = tmp / "pickled"
        d.mkdir()
        (d / "mrgptq.json").write_text(json.dumps({"config": {"format": "mxfp4", "method": "rtn"}}))
        tiny_llama(layers=1).config.save_pretrained(d)
        torch.save(tiny_llama(layers=1).state_dict(), d / "pytorch_model.bin")
        mrgptq.load(d)

    return {
        "unknown format": (ConfigError, lambda: QuantConfig(format="fp5").resolved()),
        "unknown method": (ConfigError, lambda: QuantConfig(method="awq").resolved()),
        "group not dividing": (FormatError, lambda: formats.quantize(student_t((4, 40)), "mxfp4")),
        "NaN tensor": (FormatError, lambda: formats.quantize(nan, "nvfp4")),
        "integer tensor": (FormatError, lambda: formats.quantize(torch.ones(4, 32, dtype=torch.int32), "mxfp4")),
        "Hessian shape": (MrgptqError, lambda: gptq(W, torch.eye(32), formats.get_spec("mxfp4"))),
        "singular after all dampening": (NumericsError, lambda: cholesky_inverse_upper(torch.full((8, 8), float("nan")))),
        "missing model": (ModelLoadError, lambda: load_model("/nonexistent/model")),
        "missing checkpoint": (CheckpointError, lambda: mrgptq.load("/nonexistent/ckpt")),
        "unsupported architecture": (UnsupportedArchitecture,
                                     lambda: quantize_model(_gpt2(), torch.randint(0, 256, (1, 8)), QuantConfig())),
        "short calibration": (CalibrationError, lambda: sample_windows(_Tok(), "a b c", 4, 64)),
        "rotation block": (RotationError, lambda: Rotation(64, "hadamard", 48)),
        "NaN on save": (CheckpointError, nan_checkpoint),
        "truncated weights": (CheckpointError, truncated_checkpoint),
        "pickle-only checkpoint": (CheckpointError, pickle_checkpoint),
        "data-free GPTQ": (MrgptqError, lambda: quantize_data_free(tiny_llama(layers=1), QuantConfig(method="gptq"))),
        "data-free NVFP4 W4A4": (MrgptqError, lambda: quantize_data_free(
            tiny_llama(layers=1), QuantConfig(format="nvfp4", method="rtn", w4a4=True))),
    }


class _Tok:
    def __call__(self, text, return_tensors=None):
        class R:
            input_ids = torch.arange(len(text.split())).unsqueeze(0)

        return R()


API_CASES = list(_api_cases(None))


@pytest.mark.parametrize("case", API_CASES)
def test_api_bad_input(case, tmp_path, monkeypatch):
    def no_unpickling(*a, **k):
        raise AssertionError("a checkpoint load tried to unpickle")

    exc_type, call = _api_cases(tmp_path)[case]
    before = _listing(tmp_path)
    if case == "pickle-only checkpoint":
        before = None
        monkeypatch.setattr(torch, "load", no_unpickling)
        monkeypatch.setattr(pickle, "load", no_unpickling)
        monkeypatch.setattr(pickle, "Unpickler", no_unpickling)
    with pytest.raises(exc_type) as info:
        call()
    assert isinstance(info.value, MrgptqError)
    msg = str(info.value)
    assert msg and "\n" not in msg
    if case == "NaN on save":
        assert _listing(tmp_path) == before  # refused before anything was written


@pytest.mark.parametrize("part", ["tokenizer", "model"])
def test_gguf_without_its_reader_names_the_package(part, monkeypatch, capfd):
    """A GGUF model with the gguf package unimportable fails in one line that names gguf (the fix), not with a
    traceback, a hint about tokenizer files or transformers' own log line before ours."""
    import sys

    from mrgptq.model import loading

    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now raises ImportError
    capfd.readouterr()
    with pytest.raises(ModelLoadError) as info:
        (loading.load_tokenizer if part == "tokenizer" else loading.load_model)()
    msg = str(info.value)
    assert "gguf" in msg.lower() and "\n" not in msg and "tokenizer files" not in msg
    assert "gguf" not in capfd.readouterr().err.lower()
