"""The end-to-end speed harness (timed on the GPU by `mrgptq bench-e2e`; here its correctness on the CPU)."""
import json

import torch
from conftest import tiny_llama

from mrgptq.cli import main
from mrgptq.eval import speed


def test_static_cache_decode_is_greedy_generation():
    """The timed loop (on a GPU: replayed CUDA graphs) produces exactly transformers' greedy tokens."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    m = tiny_llama(layers=2).to(dev)
    toks, secs, graphs = speed.decode(m, batch=2, prompt_len=12, new_tokens=9, seed=3)
    ids = torch.randint(0, m.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3)).to(dev)
    ref = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=9, do_sample=False,
                     pad_token_id=0)[:, 12:]
    assert torch.equal(toks, ref) and secs > 0 and graphs == (dev == "cuda")


def test_prefill_is_timed_from_one_cuda_graph_on_the_gpu():
    """The prefill forward of a W4A4 model (rotate+quantize, FP8 operands, the shared sibling operand) can be
    captured whole, so its time is GPU time; the CPU times it eagerly and says so."""
    from mrgptq.algorithms import QuantConfig
    from mrgptq.kernels.siblings import fuse_siblings
    from mrgptq.model.pipeline import quantize_data_free

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    m = tiny_llama(layers=2).to(dev, torch.bfloat16 if dev == "cuda" else torch.float32)  # bf16: the kernels
    quantize_data_free(m, QuantConfig(format="mxfp4", method="rtn", transform="hadamard", w4a4=True))
    fuse_siblings(m)
    r = speed.prefill_seconds(m, 2, 96, reps=2)
    assert r["cuda_graphs"] == (dev == "cuda"), r.get("eager_because")
    assert r["seconds"] > 0


def test_bench_e2e_on_a_tiny_config(tmp_path, capsys):
    tiny_llama(layers=2).config.save_pretrained(tmp_path / "cfg")
    out = tmp_path / "r.json"
    assert main(["bench-e2e", str(tmp_path / "cfg"), "--device", "cpu", "--batches", "1,2", "--prompt-len", "8",
                 "--new-tokens", "4", "--prefill", "1x16", "--json", str(out)]) == 0
    r = json.loads(out.read_text())["results"]
    assert set(r) == {"fp32", "mxfp4 W4A16", "nvfp4 W4A16", "mxfp4 W4A4"}
    for name in ("mxfp4 W4A16", "nvfp4 W4A16"):  # packed 4-bit linears: the quantized blocks shrink ~6x
        assert r[name]["weights_gib"] < r["fp32"]["weights_gib"]
    assert "decode b2 tok/s" in capsys.readouterr().out


def test_compiled_decode_step_matches_eager_and_runs_each_sibling_group_once(monkeypatch):
    """Under torch.compile QuantLinear is one opaque op: the compiled step gives the eager step's logits, and the
    merge pass leaves one product per q/k/v and gate/up group per step (plain torch.compile would run it per
    member). Where no C++ compiler exists for inductor, the graph runs through aot_eager (logits only)."""
    import shutil

    from mrgptq.algorithms import QuantConfig
    from mrgptq.kernels.siblings import Siblings, fuse_siblings
    from mrgptq.model.pipeline import quantize_data_free
    from mrgptq.runtime import compiled

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    m = tiny_llama(layers=2).to(dev)
    quantize_data_free(m, QuantConfig(format="mxfp4", method="rtn", transform="hadamard"))
    assert fuse_siblings(m) == 4
    with torch.no_grad():
        ref = speed.decode_step(m, 1, 8, 4)()  # a step's first call (a second one sees its own cache write)
    inductor = dev == "cuda" or shutil.which("g++") is not None
    fwd = compiled.compile(m.forward, dynamic=False) if inductor else torch.compile(m.forward, backend="aot_eager")
    step = speed.decode_step(m, 1, 8, 4, forward=fwd)
    calls = []
    product = Siblings.product
    monkeypatch.setattr(Siblings, "product", lambda self, x: calls.append(self) or product(self, x))
    with torch.no_grad():
        out = step()  # compiles (fake tensors only), then runs once
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    if inductor:
        assert len(calls) == 4 and len(set(map(id, calls))) == 4
