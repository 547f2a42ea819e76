"""Layer-level RTN / GPTQ / MR-GPTQ / W4A4 / QEP on real SmolLM2 activations (held-out tokens)."""
import pytest
import torch
from conftest import student_t

from mrgptq import formats
from mrgptq.algorithms import ActQuantizer, Hessian, LayerPlan, QuantConfig, gptq, qep_correct
from mrgptq.transforms import Rotation

LAYERS = {"b2.q_proj": (2, "self_attn.q_proj"), "b2.down_proj": (2, "mlp.down_proj"),
          "b20.q_proj": (20, "self_attn.q_proj"), "b20.down_proj": (20, "mlp.down_proj")}


@pytest.fixture(scope="module")
def captured(smol, calib_text):
    """Inputs of four real linears on 8 x 256 calibration tokens and 2 x 256 held-out tokens."""
    model, tok = smol
    ids = tok(calib_text[:200_000], return_tensors="pt").input_ids[0]
    calib, held = ids[: 8 * 256].view(8, 256), ids[8 * 256 : 10 * 256].view(2, 256)
    caps, handles = {}, []
    for key, (b, name) in LAYERS.items():
        lin = model.model.layers[b].get_submodule(name)
        handles.append(lin.register_forward_pre_hook(
            lambda m, inp, key=key: caps.setdefault(key, []).append(inp[0].reshape(-1, inp[0].shape[-1]))))
    with torch.no_grad():
        model(calib)
        model(held)
    for h in handles:
        h.remove()
    out = {}
    for key, (b, name) in LAYERS.items():
        X = torch.cat(caps[key])
        out[key] = (model.model.layers[b].get_submodule(name).weight.data.float(), X[: 8 * 256], X[8 * 256 :])
    return out


def layer_error(W, Xc, Xh, cfg):
    plan = LayerPlan.build(cfg, W.shape[1])
    H = Hessian(W.shape[1])
    H.add(plan.layer_input(Xc))
    Wq = formats.dequantize(plan.quantize(W, H))
    Y, Yq = Xh @ W.T, plan.layer_input(Xh) @ Wq.T
    return ((Y - Yq).norm() / Y.norm()).item()


def test_method_ordering_on_real_layers(captured, capsys):
    rows = []
    for key, (W, Xc, Xh) in captured.items():
        e = {(f, m): layer_error(W, Xc, Xh, QuantConfig(format=f, method=m))
             for f in ("mxfp4", "nvfp4") for m in ("rtn", "gptq", "mr-gptq")}
        rows.append((key, e))
        assert e["mxfp4", "gptq"] < e["mxfp4", "rtn"], key
        assert e["mxfp4", "mr-gptq"] <= e["mxfp4", "gptq"], key
        assert e["nvfp4", "rtn"] < e["mxfp4", "rtn"], key
        assert e["nvfp4", "gptq"] < e["nvfp4", "rtn"], key
    with capsys.disabled():
        print("\nrelative output error on held-out tokens (W4A16)")
        print(f"{'layer':14s}" + "".join(f"{f + '-' + m:>16s}" for f in ("mxfp4", "nvfp4")
                                         for m in ("rtn", "gptq", "mr-gptq")))
        for key, e in rows:
            print(f"{key:14s}" + "".join(f"{v:16.4f}" for v in e.values()))


def test_act_order_keeps_layout(captured):
    W, Xc, _ = captured["b2.q_proj"]
    H = Hessian(W.shape[1])
    H.add(Xc)
    spec = formats.get_spec("mxfp4")
    plain = gptq(W, H.H, spec)
    ordered = gptq(W, H.H, spec, act_order=True)
    assert plain.codes.shape == ordered.codes.shape and plain.scales.shape == ordered.scales.shape
    assert plain.scales.dtype == ordered.scales.dtype
    assert not torch.equal(plain.codes, ordered.codes)  # values differ...
    # ...but every group's scale is the static one of the original column order
    static = formats.choose_scales(W.float().reshape(W.shape[0], -1, 32), spec, "spec")[0]
    assert torch.equal(ordered.scales, static)
    # and the codes decode with those scales in place: no permutation needed at runtime
    assert torch.isfinite(formats.dequantize(ordered)).all()


def test_w4a4_calibrates_on_quantized_inputs(captured):
    W, Xc, Xh = captured["b2.down_proj"]
    e16 = layer_error(W, Xc, Xh, QuantConfig(format="nvfp4", method="gptq", transform="hadamard"))
    e4 = layer_error(W, Xc, Xh, QuantConfig(format="nvfp4", method="gptq", transform="hadamard", w4a4=True))
    e4_rtn = layer_error(W, Xc, Xh, QuantConfig(format="nvfp4", method="rtn", transform="hadamard", w4a4=True))
    assert e16 < e4 < e4_rtn


def test_act_quantizer_is_rotate_then_rtn():
    x = student_t((5, 128), seed=9)
    r = Rotation(128, "hadamard", 32)
    aq = ActQuantizer(formats.get_spec("mxfp4"), r)
    assert torch.equal(aq(x), formats.fake_quantize(r.apply(x), "mxfp4"))


def test_qep_reduces_error_against_full_precision_target(captured):
    W, Xc, Xh = captured["b20.q_proj"]
    # the quantized model's input differs from the fp one: upstream quantized weights distort it
    # systematically, here a fixed linear map close to identity
    d = W.shape[1]
    A = torch.eye(d) + 0.05 * student_t((d, d), df=30, seed=13) / d**0.5
    Xc_hat, Xh_hat = Xc @ A, Xh @ A
    H = Hessian(W.shape[1], cross=True)
    H.add(Xc_hat, Xc)
    spec = formats.get_spec("nvfp4")
    Y = Xh @ W.T

    def err(Wc):
        Wq = formats.dequantize(gptq(Wc, H.H, spec))
        return ((Y - Xh_hat @ Wq.T).norm() / Y.norm()).item()

    plain, corrected = err(W), err(qep_correct(W, H.H, H.C, alpha=0.5))
    assert corrected < plain


def test_w4a4_qep_corrects_only_upstream_error(captured):
    """With W4A4 the layer sees Q(x^ R); QEP regresses on x^ R. If nothing upstream is quantized (x^ = x), the
    correction is exactly zero, however large this layer's own activation rounding is; with an upstream
    distortion it is not, and GPTQ's Hessian stays that of the activation-quantized input."""
    W, Xc, _ = captured["b20.q_proj"]
    act = ActQuantizer(formats.get_spec("mxfp4"))
    act.observe(Xc)
    act.finalize()
    clean = Hessian(W.shape[1], cross=True)
    clean.add(act(Xc), Xc, x_cross=Xc)
    assert clean.C.abs().max().item() == 0.0
    assert torch.equal(qep_correct(W, clean.H_qep, clean.C, alpha=0.5), W)
    assert torch.allclose(clean.H, 2 * act(Xc).T @ act(Xc) / Xc.shape[0], rtol=1e-4, atol=1e-4)
    A = torch.eye(W.shape[1]) + 0.05 * student_t((W.shape[1],) * 2, df=30, seed=14) / W.shape[1] ** 0.5
    moved = Hessian(W.shape[1], cross=True)
    moved.add(act(Xc @ A), Xc, x_cross=Xc @ A)
    assert moved.C.abs().max().item() > 0
    assert torch.allclose(moved.H_qep, 2 * (Xc @ A).T @ (Xc @ A) / Xc.shape[0], rtol=1e-4, atol=1e-4)


def test_hessian_streaming_and_dead_inputs():
    x = student_t((300, 48), seed=11)
    h = Hessian(48)
    for chunk in x.split(37):
        h.add(chunk)
    assert torch.allclose(h.H, 2 * x.T @ x / 300, rtol=1e-5, atol=1e-5)
    x[:, 5] = 0  # a dead input and a duplicated column: singular H
    x[:, 7] = x[:, 6]
    h2 = Hessian(48)
    h2.add(x)
    W = student_t((16, 48), seed=12)
    q = gptq(W, h2.H, formats.get_spec("mxfp4", 16))
    dq = formats.dequantize(q)
    assert torch.isfinite(dq).all() and torch.equal(dq[:, 5], torch.zeros(16))


def test_scales_static_vs_dynamic_both_valid(captured):
    W, Xc, Xh = captured["b2.q_proj"]
    for scales in ("static", "dynamic"):
        e = layer_error(W, Xc, Xh, QuantConfig(format="mxfp4", method="mr-gptq", scales=scales))
        assert e < layer_error(W, Xc, Xh, QuantConfig(format="mxfp4", method="rtn"))


def test_near_singular_hessian_escalates_damping_and_reports(caplog):
    x = student_t((4, 64), seed=3)  # 4 tokens for a 64-wide input: rank-4 Hessian, 60 zero eigenvalues
    x[:, 10] = x[:, 11]  # and a duplicated column
    H = 2 * x.T @ x / 4
    W = student_t((16, 64), seed=4)
    W[3] = 0  # an all-zero row
    with caplog.at_level("WARNING", logger="mrgptq"):
        q = gptq(W, H, formats.get_spec("nvfp4"), damp=1e-14, name="blk.q_proj")
    assert any("blk.q_proj" in r.message and "dampening raised" in r.message for r in caplog.records)
    dq = formats.dequantize(q)
    assert torch.isfinite(dq).all() and torch.equal(dq[3], torch.zeros(64))
    rtn_err = (formats.dequantize(formats.quantize(W, "nvfp4")) - W).norm()
    assert (dq - W).norm() < 3 * rtn_err  # heavy dampening degrades to (close to) plain rounding, not to noise
