"""Formats against the spec's rules and against independent implementations (bit-exact)."""
import numpy as np
import pytest
import torch
from conftest import student_t

from mrgptq import formats as F
from mrgptq.formats.codec import decode, encode_e2m1

GRID = np.array(F.E2M1_GRID)


def ref_e2m1(v: np.ndarray) -> np.ndarray:
    """Independent E2M1 rounding: brute-force nearest magnitude, ties to the even code, sign in bit 3."""
    a = np.minimum(np.abs(v), 6.0)[..., None]
    d = np.abs(a - GRID)
    best = d.min(-1, keepdims=True)
    cand = d == best  # one or two candidates
    idx = np.where(cand.sum(-1) == 2, np.argmax(cand & (np.arange(8) % 2 == 0), -1), np.argmax(cand, -1))
    return (idx | (np.signbit(v).astype(np.int64) << 3)).astype(np.uint8)


def test_e2m1_every_code_and_midpoint():
    # each exact grid value maps to its own code, positive and negative
    for i, m in enumerate(F.E2M1_GRID):
        assert encode_e2m1(torch.tensor([m])).item() == i
        assert encode_e2m1(torch.tensor([-m])).item() == i | 8
    # every midpoint goes to the even code (the spec's tie table)
    ties = {0.25: 0.0, 0.75: 1.0, 1.25: 1.0, 1.75: 2.0, 2.5: 2.0, 3.5: 4.0, 5.0: 4.0}
    for t, want in ties.items():
        for s in (1, -1):
            code = encode_e2m1(torch.tensor([s * t])).item()
            assert code % 2 == 0 and abs(decode(torch.tensor([code]), F.get_spec("mxfp4")).item()) == want
            # just off the midpoint goes to the nearer side
            tt = torch.tensor([t])
            up = encode_e2m1(s * torch.nextafter(tt, tt + 1)).item() & 7
            dn = encode_e2m1(s * torch.nextafter(tt, tt - 1)).item() & 7
            assert up == dn + 1
    # saturation
    big = torch.tensor([6.0, 7.0, 1e30, -1e30])
    assert encode_e2m1(big).tolist() == [7, 7, 7, 15]


def test_e2m1_matches_bruteforce_dense():
    v = torch.linspace(-8, 8, 200001)
    assert np.array_equal(encode_e2m1(v).numpy(), ref_e2m1(v.numpy()))


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(3, 5, 128), (64, 256)])
def test_codes_are_nearest_grid_point(fmt, dtype, shape):
    # a fixed seed per case (hash() of a str changes from process to process)
    x = student_t(shape, df=3, seed=1000 * ("mxfp4", "nvfp4").index(fmt) + len(shape), dtype=dtype)
    q = F.quantize(x, fmt)
    g = q.spec.group_size
    assert q.codes.shape == x.shape and q.codes.dtype == torch.uint8
    assert q.scales.shape == (*x.shape[:-1], x.shape[-1] // g)
    eff = q.effective_scales().repeat_interleave(g, -1)
    # independent decode: codes * scales
    vals = torch.tensor(np.concatenate([GRID, -GRID]), dtype=torch.float32)[q.codes.long()]
    assert torch.equal(F.dequantize(q), vals * eff)
    # each code is the spec's rounding of x / scale
    want = ref_e2m1((x.float() / eff).numpy())
    assert np.array_equal(q.codes.numpy(), want)


def test_mx_scale_is_spec_rule():
    x = student_t((32, 512), df=3, seed=1)
    q = F.quantize(x, "mxfp4")
    amax = x.reshape(32, -1, 32).abs().amax(-1).double().numpy()
    want = np.floor(np.log2(amax)) - 2 + 127
    assert q.scales.dtype == torch.uint8 and np.array_equal(q.scales.numpy().astype(float), want)
    # 'ceil' never clips: every |x| <= 6 * scale; the spec rule may clip
    qc = F.quantize(x, "mxfp4", scale_rule="ceil")
    eff = qc.effective_scales().repeat_interleave(32, -1)
    assert bool((x.abs() <= 6 * eff).all())


def test_nv_scales_follow_spec_formula():
    x = student_t((16, 256), df=3, seed=2, dtype=torch.bfloat16)
    q = F.quantize(x, "nvfp4")
    gs = (448.0 * 6.0) / x.float().abs().amax()
    assert q.global_scale.dtype == torch.float32 and torch.equal(q.global_scale, gs)
    blk = x.float().reshape(16, -1, 16).abs().amax(-1)
    want = (gs * (blk / 6.0)).to(torch.float8_e4m3fn)
    assert q.scales.dtype == torch.float8_e4m3fn and torch.equal(q.scales.float(), want.float())


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_nv_scale_divides_by_six_correctly_rounded_on_every_device(device):
    """A group whose g * amax / 6 lies one float32 step below an E4M3 rounding boundary (3.5 subnormal steps):
    the correctly rounded quotient gives byte 3, amax times a rounded 1/6 (what CUDA does for a tensor divided by
    a Python number) gives 4. Found on the H200: the GPU reference disagreed with the CPU and the kernels."""
    x = torch.zeros(1, 16, device=device)
    x[0, 0] = 13.0625
    g = torch.tensor(0.003139951964840293, device=device)
    assert (g * (torch.tensor(13.0625) * torch.tensor(1 / 6))).item() * 512 == 3.5  # the multiply lands on the tie
    q = F.quantize(x, "nvfp4", global_scale=g)
    assert q.scales.view(torch.uint8).item() == 3


def test_zero_and_tiny_groups():
    x = torch.zeros(2, 64)
    x[1, 32:] = 1e-40  # subnormal: exponent below -127 is clamped to the E8M0 minimum
    q = F.quantize(x, "mxfp4")
    assert q.scales[0].tolist() == [0, 0] and torch.equal(F.dequantize(q)[0], torch.zeros(64))
    assert torch.isfinite(F.dequantize(q)).all()
    y = torch.randn(2, 64)
    y[0, :16] = 0
    qn = F.quantize(y, "nvfp4")
    assert torch.isfinite(F.dequantize(qn)).all() and torch.equal(F.dequantize(qn)[0, :16], torch.zeros(16))
    assert torch.equal(F.dequantize(F.quantize(torch.zeros(4, 32), "nvfp4")), torch.zeros(4, 32))


def test_error_ordering_gaussian_and_student():
    g = torch.randn(256, 1024, generator=torch.Generator().manual_seed(0))
    assert F.quant_error(g, "nvfp4") < F.quant_error(g, "mxfp4")
    t = student_t((256, 1024), df=4, seed=3)
    nv, mx = F.quant_error(t, "nvfp4"), F.quant_error(t, "mxfp4")
    assert 0.07 < nv < 0.11 and 0.11 < mx < 0.15 and nv < mx


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "int4", "int4-asym"])
def test_mse_rule_never_worse_per_group(fmt):
    x = student_t((32, 256), df=3, seed=4)
    spec = F.get_spec(fmt)
    g = spec.group_size

    def group_err(q):
        return (x - F.dequantize(q)).abs().pow(F.MSE_NORM).reshape(32, -1, g).sum(-1)

    e_spec, e_mse = group_err(F.quantize(x, fmt)), group_err(F.quantize(x, fmt, scale_rule="mse"))
    assert bool((e_mse <= e_spec * (1 + 1e-6)).all()) and e_mse.sum() < e_spec.sum()


def test_int4_grid_and_group_size_override():
    x = student_t((8, 96), df=5, seed=5)
    q = F.quantize(x, "int4", group_size=48)
    assert q.scales.shape == (8, 2)
    s = x.reshape(8, 2, 48).abs().amax(-1) / 7
    assert torch.allclose(q.effective_scales(), s)
    want = torch.round(x / s.repeat_interleave(48, -1)).clamp(-8, 7) + 8
    assert torch.equal(q.codes.float(), want)
    qa = F.quantize(x, "int4-asym", group_size=32)
    assert qa.zeros is not None and F.quant_error(x, "int4-asym") < F.quant_error(x, "int4")


def test_pack_unpack_low_nibble_first():
    codes = torch.randint(0, 16, (4, 6, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    p = F.pack(codes)
    assert p.shape == (4, 6, 32)
    assert torch.equal(p & 0xF, codes[..., 0::2]) and torch.equal(p >> 4, codes[..., 1::2])
    assert torch.equal(F.unpack(p), codes)


@pytest.mark.parametrize(
    "call, msg",
    [
        (lambda: F.quantize(torch.randn(4, 48), "mxfp4"), "not divisible"),
        (lambda: F.quantize(torch.randint(0, 5, (4, 32)), "mxfp4"), "not a float"),
        (lambda: F.quantize(torch.tensor([[float("nan")] * 32]), "nvfp4", name="w"), "NaN"),
        (lambda: F.quantize(torch.randn(4, 32), "fp5"), "unknown format"),
        (lambda: F.quantize(torch.randn(4, 32), "nvfp4", scale_rule="ceil"), "MXFP4 only"),
        (lambda: F.pack(torch.zeros(3, dtype=torch.uint8)), "even"),
    ],
)
def test_clear_errors(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


def test_bitexact_vs_compressed_tensors():
    from compressed_tensors.compressors.nvfp4.helpers import pack_fp4_to_uint8
    from compressed_tensors.quantization.lifecycle.forward import quantize as ct_quantize
    from compressed_tensors.quantization.quant_scheme import preset_name_to_scheme
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

    x = student_t((64, 512), df=3, seed=6)
    # compressed-tensors' MX scale rounds amax to E2M1 precision first: our 'rounded' rule, not the spec's floor
    for preset, fmt, rule in [("NVFP4", "nvfp4", "spec"), ("MXFP4", "mxfp4", "rounded")]:
        args = preset_name_to_scheme(preset, ["Linear"]).weights
        xg = x.reshape(64, -1, args.group_size)
        gs = generate_gparam(x.amin(), x.amax()) if fmt == "nvfp4" else None
        sc, zp = calculate_qparams(xg.amin(-1), xg.amax(-1), args, global_scale=gs)
        theirs = pack_fp4_to_uint8(ct_quantize(x, sc, zp, args, global_scale=gs))
        q = F.quantize(x, fmt, scale_rule=rule)
        assert torch.equal(theirs, F.pack(q.codes)), fmt
        assert torch.equal(sc.float().reshape(q.scales.shape), q.effective_scales() if gs is None else q.scales.float())


def test_bitexact_vs_torchao():
    pytest.importorskip("torchao")
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    from torchao.prototype.mx_formats.mx_tensor import to_mx
    from torchao.prototype.mx_formats.nvfp4_tensor import nvfp4_quantize

    x = student_t((64, 512), df=3, seed=7)
    s, d = to_mx(x, torch.float4_e2m1fn_x2, 32, ScaleCalculationMode.FLOOR)  # FLOOR is the OCP spec rule
    q = F.quantize(x, "mxfp4")
    assert torch.equal(s.view(torch.uint8).reshape(q.scales.shape), q.scales)
    assert torch.equal(d.view(torch.uint8), F.pack(q.codes))
    qn = F.quantize(x, "nvfp4")
    bs, dn = nvfp4_quantize(x, 16, per_tensor_scale=1 / qn.global_scale)
    assert torch.equal(bs.float().reshape(qn.scales.shape), qn.scales.float())
    assert torch.equal(dn.view(torch.uint8), F.pack(qn.codes))
