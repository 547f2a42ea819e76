"""Whole-model pipeline on a tiny Llama: every recipe runs, resume is exact, checkpoints round-trip."""
import pytest
import torch
from conftest import tiny_llama

from mrgptq.algorithms import QuantConfig
from mrgptq.model.pipeline import quantize_model
from mrgptq.runtime import CheckpointError, QuantLinear, load, save_checkpoint


def calib(n=4, seqlen=32, vocab=256, seed=0):
    return torch.randint(0, vocab, (n, seqlen), generator=torch.Generator().manual_seed(seed))


RECIPES = [
    QuantConfig(format="mxfp4", method="mr-gptq"),
    QuantConfig(format="nvfp4", method="gptq", w4a4=True, transform="hadamard"),
    QuantConfig(format="mxfp4", method="mr-gptq", qep=True),
    QuantConfig(format="nvfp4", method="mr-gptq", qep=True, w4a4=True),
    QuantConfig(format="int4", method="rtn"),
    QuantConfig(format="int4-asym", method="gptq", act_order=True),
]


@pytest.mark.parametrize("cfg", RECIPES, ids=lambda c: c.label.replace(" ", "-") + "-" + c.format)
def test_recipes_quantize_all_linears_and_stay_close(cfg, tmp_path):
    model = tiny_llama()
    ids = calib()
    with torch.no_grad():
        ref = model(ids).logits
    report = quantize_model(model, ids, cfg, progress=False)
    assert len(report) == 2 * 7
    assert all(0 < r["rel_error"] < 0.5 for r in report)
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 14
    with torch.no_grad():
        out = model(ids).logits
    rel = ((out - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.5
    # checkpoint round trip: logits bit-exact
    save_checkpoint(model, None, {"config": cfg.resolved().to_dict(), "dtype": "float32", "label": cfg.label},
                    tmp_path / "ckpt")
    loaded, _, _ = load(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, out)


def test_resume_after_interruption_is_exact(tmp_path):
    cfg = QuantConfig(format="nvfp4", method="mr-gptq", qep=True)
    ids = calib(seed=3)
    full = tiny_llama(layers=3)
    quantize_model(full, ids, cfg, progress=False)

    saved = {}

    class Killed(Exception):
        pass

    def save_then_die(i, block, rows):
        saved[i] = ({k: v.clone() for k, v in block.state_dict().items()}, rows)
        if i == 1:
            raise Killed

    first = tiny_llama(layers=3)
    with pytest.raises(Killed):
        quantize_model(first, ids, cfg, progress=False, on_block=save_then_die)
    resumed = tiny_llama(layers=3)
    quantize_model(resumed, ids, cfg, progress=False, saved_block=lambda i: saved.get(i))
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_bytes(tmp_path):
    cfg = QuantConfig(format="mxfp4", method="mr-gptq")
    paths = []
    for run in range(2):
        m = tiny_llama()
        quantize_model(m, calib(), cfg, progress=False)
        paths.append(save_checkpoint(m, None, {"config": cfg.resolved().to_dict(), "dtype": "float32"},
                                     tmp_path / f"r{run}"))
    assert (paths[0] / "model.safetensors").read_bytes() == (paths[1] / "model.safetensors").read_bytes()


def test_corrupt_checkpoints_are_clear_errors(tmp_path):
    cfg = QuantConfig(format="mxfp4", method="rtn")
    m = tiny_llama(layers=1)
    quantize_model(m, calib(), cfg, progress=False)
    good = save_checkpoint(m, None, {"config": cfg.resolved().to_dict(), "dtype": "float32"}, tmp_path / "c")
    from safetensors.torch import load_file, save_file

    w = good / "model.safetensors"
    blob = w.read_bytes()
    tensors = load_file(w)
    key = next(k for k in tensors if k.endswith("weight_scale"))
    cases = {
        "truncated": lambda: w.write_bytes(blob[: len(blob) // 2]),
        "garbage": lambda: w.write_bytes(b"\x00" * 64),
        "missing scale": lambda: save_file({k: v for k, v in tensors.items() if k != key}, str(w)),
        "wrong dtype": lambda: save_file({**tensors, key: tensors[key].float()}, str(w)),
        "NaN scale code": lambda: save_file({**tensors, key: torch.full_like(tensors[key], 255)}, str(w)),
        "no meta": lambda: (good / "mrgptq.json").unlink(),
    }
    for name, corrupt in cases.items():
        corrupt()
        with pytest.raises(CheckpointError):
            load(good)
            pytest.fail(f"{name}: the corrupt checkpoint loaded")
        w.write_bytes(blob)
        if not (good / "mrgptq.json").exists():
            save_checkpoint(m, None, {"config": cfg.resolved().to_dict(), "dtype": "float32"}, good)
        load(good)  # restored: loads again
