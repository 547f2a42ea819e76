"""Export layouts: compressed-tensors (transformers / vLLM) and FP-Quant, each reloaded into our runtime."""
import json

import pytest
import torch
from conftest import student_t, tiny_llama
from safetensors import safe_open

from mrgptq.algorithms import QuantConfig
from mrgptq.export import ExportError, default_layout, unsupported
from mrgptq.model.pipeline import quantize_model
from mrgptq.runtime import load, save_checkpoint
from mrgptq.runtime.checkpoint import CheckpointError

COMBOS = {
    "mxfp4-w4a16": QuantConfig(format="mxfp4", method="mr-gptq"),
    "nvfp4-w4a16": QuantConfig(format="nvfp4", method="mr-gptq"),
    "mxfp4-w4a4": QuantConfig(format="mxfp4", method="gptq", transform="hadamard", w4a4=True),
    "nvfp4-w4a4": QuantConfig(format="nvfp4", method="mr-gptq", w4a4=True),
}
FPQ = {
    "mxfp4-w4a4": QuantConfig(format="mxfp4", method="mr-gptq", w4a4=True, act_scale_rule="four-thirds",
                              scale_rule="four-thirds"),
    "nvfp4-w4a4": QuantConfig(format="nvfp4", method="mr-gptq", w4a4=True, transform_block=32),
}


def calib(n=4, seqlen=32, seed=0):
    return torch.randint(0, 256, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def quantized_tiny(cfg, layers=2):
    m = tiny_llama(layers=layers)
    quantize_model(m, calib(), cfg, progress=False)
    return m


def save(m, cfg, path, layout):
    return save_checkpoint(m, None, {"config": cfg.resolved().to_dict(), "dtype": "float32", "label": cfg.label},
                           path, layout=layout)


@pytest.mark.parametrize("name", list(COMBOS) + [f"fpq-{k}" for k in FPQ])
def test_export_reload_is_bit_exact(name, tmp_path):
    layout = "fp-quant" if name.startswith("fpq-") else "compressed-tensors"
    cfg = FPQ[name[4:]] if layout == "fp-quant" else COMBOS[name]
    m = quantized_tiny(cfg)
    ids = calib(2, 24, seed=5)
    with torch.no_grad():
        ref = m(ids).logits
    d = save(m, cfg, tmp_path / "ckpt", layout)
    loaded, _, meta = load(d)
    assert meta["layout"] == layout
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, ref)


@pytest.mark.parametrize("name", list(COMBOS))
def test_compressed_tensors_config_validates_and_transformers_loads_it(name, tmp_path):
    from compressed_tensors.quantization import QuantizationConfig
    from compressed_tensors.transform import TransformConfig, apply_transform_config
    from transformers import AutoModelForCausalLM

    cfg = COMBOS[name]
    m = quantized_tiny(cfg)
    d = save(m, cfg, tmp_path / "ct", "compressed-tensors")
    qc = json.loads((d / "config.json").read_text())["quantization_config"]
    parsed = QuantizationConfig.model_validate({k: v for k, v in qc.items() if k != "transform_config"})
    scheme = parsed.config_groups["group_0"]
    assert scheme.weights.group_size == cfg.resolved().group_size
    assert (scheme.input_activations is not None) == cfg.w4a4
    tc = TransformConfig.model_validate(qc["transform_config"])
    assert tc.config_groups["mrgptq_rotation"].head_dim == cfg.resolved().transform_block

    ids = calib(2, 24, seed=7)

    def to_float32(model):  # both sides load in bf16 (compressed-tensors decompresses to bf16), compute in fp32
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                t.data = t.data.float()
        return model

    ours, _, _ = load(d, dtype=torch.bfloat16)
    with torch.no_grad():
        want = to_float32(ours)(ids).logits

    def hf_model(rotate: bool):
        hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16)
        if rotate:
            apply_transform_config(hf, tc)
        with torch.no_grad():
            hf(ids[:, :2])  # the first forward decompresses the packed weights
        return to_float32(hf)

    def rel(x, ref):
        return ((x - ref).norm() / ref.norm()).item()

    hf, plain = hf_model(True), hf_model(False)
    with torch.no_grad():  # layer by layer, on the same input: only NVFP4's bf16 weight rounding differs
        for lname, mod in ours.named_modules():
            if hasattr(mod, "weight_packed"):
                x = student_t((3, 5, mod.in_features), seed=len(lname))
                assert rel(hf.get_submodule(lname)(x), mod(x)) < 0.01, lname
        good, unrotated = rel(hf(ids).logits, want), rel(plain(ids).logits, want)
    # end to end, NVFP4 W4A4 compounds compressed-tensors' bf16 weight dequant through activation re-quantization
    tol = 0.1 if name == "nvfp4-w4a4" else 0.01
    assert good < tol, f"transformers' logits differ from ours by {good:.4f}"
    assert unrotated > 5 * good, "without the online rotation the logits must be visibly wrong"


def test_size_on_disk_and_tensor_encodings(tmp_path):
    cfg = COMBOS["nvfp4-w4a16"]
    m = quantized_tiny(cfg)
    d = save(m, cfg, tmp_path / "ct", "compressed-tensors")
    quant_bytes, dense = 0, 0
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        for k in f.keys():  # noqa: SIM118
            t = f.get_tensor(k)
            if k.endswith("weight_packed"):
                assert t.dtype == torch.uint8
                dense += t.numel() * 2 * 2  # two weights a byte, bf16 = 2 bytes each
            if k.endswith("weight_scale"):
                assert t.dtype == torch.float8_e4m3fn
            if k.endswith("global_scale"):
                assert t.dtype == torch.float32 and t.shape == (1,)
            if any(k.endswith(s) for s in ("weight_packed", "weight_scale", "global_scale")):
                quant_bytes += t.numel() * t.element_size()
    assert 0 < quant_bytes <= 0.32 * dense


def test_refusals_name_what_works():
    assert default_layout(QuantConfig(format="int4", method="rtn")) == "mrgptq"
    assert default_layout(COMBOS["mxfp4-w4a16"]) == "compressed-tensors"
    why = unsupported(QuantConfig(format="mxfp4", method="mr-gptq", transform="dct"), "compressed-tensors")
    assert "Hadamard" in why
    why = unsupported(COMBOS["mxfp4-w4a16"], "fp-quant")
    assert "W4A4" in why and "compressed-tensors" in why
    why = unsupported(QuantConfig(format="mxfp4", method="mr-gptq", w4a4=True), "fp-quant")
    assert "four-thirds" in why
    why = unsupported(QuantConfig(format="nvfp4", method="mr-gptq", signs=True), "compressed-tensors")
    assert "signs" in why
    m = quantized_tiny(QuantConfig(format="int4", method="rtn"), layers=1)
    with pytest.raises(ExportError, match="cannot export"):
        save(m, QuantConfig(format="int4", method="rtn"), "/nonexistent/never-written", "compressed-tensors")


def test_fp_quant_layout_matches_fpquantlinear(tmp_path):
    from transformers.utils.quantization_config import FPQuantConfig

    cfg = FPQ["nvfp4-w4a4"]
    m = quantized_tiny(cfg, layers=1)
    d = save(m, cfg, tmp_path / "fpq", "fp-quant")
    qc = json.loads((d / "config.json").read_text())["quantization_config"]
    parsed = FPQuantConfig.from_dict(qc)  # transformers' own validation
    assert parsed.forward_dtype == "nvfp4" and parsed.hadamard_group_size == 32
    p = "model.layers.0.mlp.down_proj"
    lin = m.get_submodule(p)
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        assert f.get_tensor(f"{p}.qweight").shape == (lin.out_features, lin.in_features // 2)
        assert f.get_tensor(f"{p}.scales").shape == (lin.out_features, lin.in_features // 16)
        assert f.get_tensor(f"{p}.scales").dtype == torch.uint8
        h = f.get_tensor(f"{p}.forward_hadamard_matrix")
        assert h.shape == (32, 32) and torch.allclose(h @ h.T, torch.eye(32), atol=1e-6)
        assert f"{p}.weight_packed" not in set(f.keys())
    # a checkpoint whose rotation matrix was tampered with is refused
    from safetensors.torch import load_file, save_file

    t = load_file(d / "model.safetensors")
    t[f"{p}.forward_hadamard_matrix"] = torch.eye(32)
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="forward_hadamard_matrix"):
        load(d)


@pytest.mark.slow
def test_real_model_export_round_trip(smol, tmp_path):
    """SmolLM2 quantized in memory -> compressed-tensors -> load: logits identical (float32, CPU)."""
    import copy

    from mrgptq.model.calibration import builtin_text, sample_windows

    model0, tok = smol
    ids = sample_windows(tok, builtin_text(), 2, 64, 0)
    probe = tok("The quick brown fox jumps over the lazy dog.", return_tensors="pt")["input_ids"]
    for cfg in (QuantConfig(format="mxfp4", method="rtn", transform="hadamard"),
                QuantConfig(format="nvfp4", method="rtn", transform="hadamard", w4a4=True)):
        model = copy.deepcopy(model0)
        quantize_model(model, ids, cfg, progress=False)
        with torch.no_grad():
            ref = model(probe).logits
        d = save_checkpoint(model, tok, {"config": cfg.resolved().to_dict(), "dtype": "float32", "label": cfg.label},
                            tmp_path / cfg.format, layout="compressed-tensors")
        loaded, tok2, _ = load(d)
        assert tok2 is not None and (d / "generation_config.json").is_file()
        with torch.no_grad():
            assert torch.equal(loaded(probe).logits, ref), cfg.label
        del model, loaded


@pytest.mark.skipif(not torch.cuda.is_available(), reason="transformers runs FP-Quant on GPUs only")
@pytest.mark.parametrize("name", list(FPQ))
def test_fp_quant_pseudo_export_loads_in_transformers(name, tmp_path):
    """With `fp_quant` installed, transformers' FPQuantConfig path (pseudo-quantization: the Triton emulation
    that Hopper supports; real FP-Quant kernels need Blackwell) loads our export and computes what we compute."""
    pytest.importorskip("fp_quant")
    from transformers import AutoModelForCausalLM

    cfg = FPQ[name]
    m = quantized_tiny(cfg, layers=2)
    d = save(m, cfg, tmp_path / name, "fp-quant-pseudo")
    ids = calib(2, 32, seed=5)
    with torch.no_grad():
        exact = m(ids).logits.float()  # ours in float32 on the CPU
    theirs = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, device_map="cuda").eval()
    ours = m.to("cuda", torch.bfloat16).eval()
    with torch.no_grad():
        a, b = theirs(ids.cuda()).logits.float().cpu(), ours(ids.cuda()).logits.float().cpu()

    def rel(u, v):
        return ((u - v).norm() / v.norm()).item()

    # In bf16, activations near an FP4 rounding boundary flip code with the summation order, and a flip is a
    # whole FP4 step, so even our own bf16 run is a few % from our float32 run on a random 64-wide model.
    # FP-Quant's kernels may differ from ours by that much, not more; a wrong rotation, scale or layout
    # would put it near 100%.
    noise = rel(b, exact)
    print(f"{name}: FP-Quant vs ours (bf16) {rel(a, b):.4f}; ours bf16 vs float32 {noise:.4f}; "
          f"FP-Quant vs ours float32 {rel(a, exact):.4f}")
    assert rel(a, b) < max(0.05, 2.5 * noise), (rel(a, b), noise)
    assert rel(a, exact) < max(0.05, 3.0 * noise), (rel(a, exact), noise)
