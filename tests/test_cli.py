"""The command line on the real SmolLM2: quantize -> checkpoint -> eval/inspect, and its error lines."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mrgptq.cli import main

WIKI = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext2" / "test.txt"


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mrgptq.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=900, check=False)


@pytest.fixture(scope="module")
def eval_text(tmp_path_factory):
    if WIKI.is_file():
        return str(WIKI)
    pytest.skip("WikiText-2 test text not beside the checkout (../shared/data)")


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, eval_text):
    """MR-GPTQ and RTN MXFP4 checkpoints of SmolLM2 from small calibration, with perplexities."""
    out = tmp_path_factory.mktemp("ckpt")
    res = {}
    for method in ("mr-gptq", "rtn"):
        d = out / method
        rc = main(["quantize", "--method", method, "--format", "mxfp4", "--nsamples", "4", "--seqlen", "256",
                   "--out", str(d), "--quiet", "--eval", "--eval-text", eval_text, "--max-windows", "2",
                   "--eval-seqlen", "1024"])
        assert rc == 0
        res[method] = (d, json.loads((d / "eval.json").read_text())["wikitext2"])
    return res


def test_perplexity_ordering_real_model(quantized):
    fp = quantized["rtn"][1]["unquantized"]["ppl"]
    rtn = quantized["rtn"][1]["RTN MXFP4 W4A16"]["ppl"]
    mr = quantized["mr-gptq"][1]["MR-GPTQ MXFP4 W4A16"]["ppl"]
    assert fp < mr < rtn, (fp, mr, rtn)


def test_checkpoint_contents_and_inspect(quantized, capsys):
    d = quantized["mr-gptq"][0]
    meta = json.loads((d / "mrgptq.json").read_text())
    assert meta["config"]["method"] == "mr-gptq" and len(meta["layers"]) == 30 * 7
    assert meta["calibration"]["sha256"] and meta["command"].startswith("mrgptq quantize")
    assert (d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file()
    assert main(["inspect", str(d)]) == 0
    assert "MR-GPTQ MXFP4" in capsys.readouterr().out


def test_eval_json_of_checkpoint(quantized, tmp_path, eval_text):
    d = quantized["mr-gptq"][0]
    js = tmp_path / "r.json"
    assert main(["eval", str(d), "--eval-text", eval_text, "--max-windows", "2", "--seqlen", "1024", "--json",
                 str(js), "--quiet"]) == 0
    r = json.loads(js.read_text())["wikitext2"]
    assert set(r) == {"ppl", "windows", "seqlen", "tokens"} and r["windows"] == 2 and r["tokens"] == 2048
    assert abs(r["ppl"] - quantized["mr-gptq"][1]["MR-GPTQ MXFP4 W4A16"]["ppl"]) < 1e-6


def test_same_command_again_is_a_no_op_and_other_config_is_refused(quantized, capsys):
    d = quantized["rtn"][0]
    before = (d / "model.safetensors").read_bytes()
    assert main(["quantize", "--method", "rtn", "--format", "mxfp4", "--nsamples", "4", "--seqlen", "256",
                 "--out", str(d), "--quiet", "--no-eval"]) == 0
    assert (d / "model.safetensors").read_bytes() == before
    assert main(["quantize", "--method", "rtn", "--format", "nvfp4", "--nsamples", "4", "--seqlen", "256",
                 "--out", str(d), "--quiet", "--no-eval"]) == 2
    assert "different config" in capsys.readouterr().err


@pytest.mark.parametrize("args, needle", [
    (["quantize", "/nonexistent/model/dir"], "does not exist"),
    (["quantize", "missing.gguf"], "does not exist"),
    (["quantize", "--calib", "/nonexistent.txt", "--no-eval"], "not found"),
    (["quantize", "--nsamples", "0"], "--nsamples"),
    (["quantize", "--group-size", "7", "--no-eval"], "divisible"),
    (["eval", "--eval-text", "/nonexistent.txt"], "does not exist"),
    (["inspect", "/nonexistent"], "does not exist"),
    (["quantize", "--format", "fp5"], "invalid choice"),
])
def test_bad_input_is_one_line_exit_2(args, needle, tmp_path):
    r = run_cli(*args, "--out", str(tmp_path / "o")) if args[0] == "quantize" else run_cli(*args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_short_calibration_text_is_refused(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("too short")
    r = run_cli("quantize", "--calib", str(short), "--no-eval", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "fewer than one window" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()
