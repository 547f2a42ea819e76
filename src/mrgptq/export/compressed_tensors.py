"""compressed-tensors: the layout vLLM and transformers load.

Our QuantLinear buffers already use its tensor names and encodings (weight_packed: two E2M1 codes a byte,
low nibble first; weight_scale: E4M3 for NVFP4, biased E8M0 bytes for MXFP4; weight_global_scale and
input_global_scale: FP32, dequant divides by them). So exporting is writing the config, which we build
with the library's own pydantic schema (QuantizationConfig, TransformConfig) rather than by hand.

The rotation W' = W R is folded into the stored weights; its online half, x -> x R, is declared as an
`input` transform of type "hadamard" with head_dim = block (block-diagonal, deterministic Sylvester,
1/sqrt(b) normalised: exactly our R), so a runtime that applies transform configs rotates activations.
"""
from __future__ import annotations

import re

import torch

from ..algorithms import QuantConfig
from ..formats import get_spec
from ..model.arch import get_arch

_FORMAT = {"nvfp4": "nvfp4-pack-quantized", "mxfp4": "mxfp4-pack-quantized"}
EXPRESSIBLE = ("MXFP4 (group 32) and NVFP4 (group 16), W4A16 or W4A4 in the same format, with the identity "
               "or a power-of-two block Hadamard rotation without random signs")


def unsupported(cfg: QuantConfig, in_features: list[int]) -> str | None:
    cfg = cfg.resolved()
    if cfg.format not in _FORMAT:
        return f"compressed-tensors stores {cfg.format.upper()} only as int32-packed; it holds {EXPRESSIBLE}"
    if cfg.group_size != get_spec(cfg.format).group_size:
        return f"{cfg.format.upper()} needs group size {get_spec(cfg.format).group_size} there (got {cfg.group_size})"
    if cfg.weight_global_scale and cfg.format == "mxfp4":
        return "MXFP4 has no per-tensor scale there, so the 'four-thirds' scale rule cannot be stored"
    if cfg.w4a4 and cfg.act_format != cfg.format:
        return f"activations must use the weight format ({cfg.format}), got {cfg.act_format}"
    if cfg.w4a4 and cfg.format == "mxfp4" and cfg.act_scale_rule != "rounded":
        return ("its MXFP4 activation scales use the 'rounded' rule (got "
                f"{cfg.act_scale_rule!r}): quantize with --act-scale-rule rounded")
    if cfg.signs:
        return "random signs are not a deterministic transform there; quantize without --signs"
    if cfg.transform not in ("hadamard", "identity"):
        return f"its only deterministic rotation is the Hadamard (got {cfg.transform}); {EXPRESSIBLE}"
    if cfg.transform == "hadamard":
        sizes = in_features if cfg.transform_block == 0 else [cfg.transform_block]
        bad = [n for n in sizes if n & (n - 1)]
        if bad:
            return f"its Hadamard is Sylvester's (powers of two) and the rotation block is {bad[0]}"
    return None


def _targets(model) -> str:
    arch = get_arch(model)
    names = "|".join(re.escape(n) for n in arch.linears)
    return f"re:^{re.escape(arch.blocks)}\\.\\d+\\.({names})$"


def _args(fmt: str, dynamic):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationStrategy, QuantizationType

    nv = fmt == "nvfp4"
    sdt = torch.float8_e4m3fn if nv else torch.uint8
    return QuantizationArgs(
        num_bits=4, type=QuantizationType.FLOAT, symmetric=True, dynamic=dynamic, group_size=get_spec(fmt).group_size,
        strategy=QuantizationStrategy.TENSOR_GROUP if nv else QuantizationStrategy.GROUP,
        scale_dtype=sdt, zp_dtype=sdt,
    )


def schemas(cfg: QuantConfig, model):
    """(QuantizationConfig, TransformConfig | None) describing `model` quantized with `cfg`."""
    from compressed_tensors.quantization import DynamicType, QuantizationConfig, QuantizationScheme
    from compressed_tensors.transform import TransformArgs, TransformConfig, TransformScheme

    cfg = cfg.resolved()
    targets = [_targets(model)]
    acts = None
    if cfg.w4a4:  # NVFP4: static global, per-group scales on the fly; MXFP4: fully dynamic
        acts = _args(cfg.format, DynamicType.LOCAL if cfg.format == "nvfp4" else True)
    scheme = QuantizationScheme(targets=targets, weights=_args(cfg.format, False), input_activations=acts,
                                format=_FORMAT[cfg.format])
    qc = QuantizationConfig(config_groups={"group_0": scheme}, format=_FORMAT[cfg.format],
                            quantization_status="compressed", ignore=["lm_head"])
    tc = None
    if cfg.transform == "hadamard":
        tc = TransformConfig(config_groups={"mrgptq_rotation": TransformScheme(
            type="hadamard", head_dim=None if cfg.transform_block == 0 else cfg.transform_block,
            apply=[TransformArgs(targets=targets, location="input")])})
    return qc, tc
