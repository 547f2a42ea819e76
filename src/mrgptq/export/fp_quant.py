"""FP-Quant: the layout of transformers' `FPQuantConfig` (IST-DASLab's `fp_quant` FPQuantLinear).

Per linear: `qweight` (uint8, two E2M1 codes a byte), `scales` (uint8: E8M0 bytes for MXFP4, E4M3 bytes for
NVFP4), `weight_global_scale` and `act_global_scale` (dequant divides by them: y = (x_q w_q) / (gw ga)), and
the rotation block as `forward_hadamard_matrix` / `backward_hadamard_matrix` (x is rotated as x @ R_b).
FPQuantLinear always quantizes activations, so only W4A4 recipes fit, with its activation rules: MXFP4 uses
the 4/3 trick (our 'four-thirds', global 3), NVFP4 the spec rule with a static global scale.
`pseudo=True` stores `dqweight` (dequantized rotated weights), the only form it runs off Blackwell GPUs.
"""
from __future__ import annotations

import torch

from ..algorithms import QuantConfig
from ..formats import get_spec
from ..model.arch import get_arch
from ..transforms.rotation import block_matrix

_BLOCKS = {"mxfp4": (32, 64, 128), "nvfp4": (16, 32, 64, 128)}
_ACT_RULE = {"mxfp4": "four-thirds", "nvfp4": "spec"}
_MX_ACT_GLOBAL = 3.0  # FPQuantLinear's MXFP4 abs_max activations: scales 2^floor(log2 amax) / 3
EXPRESSIBLE = ("W4A4 MXFP4 (group 32, rotation block 32/64/128, --act-scale-rule four-thirds) or NVFP4 (group 16, "
               "block 16/32/64/128), with the hadamard, gsr or identity transform and no random signs")


def unsupported(cfg: QuantConfig) -> str | None:
    cfg = cfg.resolved()
    if cfg.format not in _BLOCKS:
        return f"FPQuantConfig knows MXFP4 and NVFP4 only; it holds {EXPRESSIBLE}"
    if cfg.group_size != get_spec(cfg.format).group_size:
        return f"{cfg.format.upper()} has a fixed group size there ({cfg.group_size} given)"
    if not cfg.w4a4:
        return "FPQuantLinear always quantizes activations, so only W4A4 fits: quantize with --w4a4, or export " \
               "W4A16 as compressed-tensors"
    if cfg.act_format != cfg.format:
        return f"activations must use the weight format ({cfg.format}), got {cfg.act_format}"
    if cfg.act_scale_rule != _ACT_RULE[cfg.format]:
        return (f"its {cfg.format.upper()} activations use the {_ACT_RULE[cfg.format]!r} scale rule: quantize with "
                f"--act-scale-rule {_ACT_RULE[cfg.format]}")
    if cfg.signs:
        return "it has no random signs; quantize without --signs"
    if cfg.transform not in ("hadamard", "gsr", "identity"):
        return f"transform_init is hadamard, gsr or identity (got {cfg.transform})"
    if cfg.transform_block not in _BLOCKS[cfg.format]:
        return f"hadamard_group_size must be one of {_BLOCKS[cfg.format]} for {cfg.format.upper()}"
    return None


def config_dict(cfg: QuantConfig, pseudo: bool = False) -> dict:
    """The `quantization_config` entry, validated by transformers' own FPQuantConfig."""
    from transformers.utils.quantization_config import FPQuantConfig

    cfg = cfg.resolved()
    return FPQuantConfig(
        forward_dtype=cfg.format, forward_method="abs_max", backward_dtype="bf16", store_master_weights=False,
        hadamard_group_size=cfg.transform_block, pseudoquantization=pseudo, transform_init=cfg.transform,
        modules_to_not_convert=["lm_head"],
    ).to_dict()


def _linears(model) -> list[str]:
    arch = get_arch(model)
    n = len(model.get_submodule(arch.blocks))
    return [f"{arch.blocks}.{i}.{name}" for i in range(n) for name in arch.linears]


def to_tensors(sd: dict[str, torch.Tensor], cfg: QuantConfig, model, pseudo: bool = False) -> dict:
    from .. import formats

    cfg = cfg.resolved()
    rb = block_matrix(cfg.transform, cfg.transform_block).float()
    out = dict(sd)
    one = torch.ones(1, dtype=torch.float32)
    for p in _linears(model):
        packed, scale = out.pop(f"{p}.weight_packed"), out.pop(f"{p}.weight_scale")
        wgs = out.pop(f"{p}.weight_global_scale", one)
        igs = out.pop(f"{p}.input_global_scale", None)
        if pseudo:
            q = formats.QuantizedTensor(formats.unpack(packed), scale, wgs, cfg.spec)
            out[f"{p}.dqweight"] = formats.dequantize(q)
        else:
            out[f"{p}.qweight"] = packed
            out[f"{p}.scales"] = scale.view(torch.uint8)
        out[f"{p}.weight_global_scale"] = wgs.reshape(1).float()
        out[f"{p}.act_global_scale"] = (igs if igs is not None else one * _MX_ACT_GLOBAL).reshape(1).float()
        out[f"{p}.forward_hadamard_matrix"] = rb.clone()
        out[f"{p}.backward_hadamard_matrix"] = rb.clone()
    return out


def from_tensors(t: dict[str, torch.Tensor], cfg: QuantConfig, model) -> dict[str, torch.Tensor]:
    """Our QuantLinear state dict from an FP-Quant real-quant checkpoint."""
    from ..runtime.checkpoint import CheckpointError

    cfg = cfg.resolved()
    rb = block_matrix(cfg.transform, cfg.transform_block).float()
    out = dict(t)
    for p in _linears(model):
        if f"{p}.dqweight" in out:
            raise CheckpointError(f"{p} holds dequantized weights (FP-Quant pseudoquantization): it cannot be "
                                  "loaded as packed FP4; load the checkpoint it was exported from")
        for k in ("qweight", "scales", "weight_global_scale", "act_global_scale"):
            if f"{p}.{k}" not in out:
                raise CheckpointError(f"FP-Quant checkpoint is missing {p}.{k}; the file is incomplete: re-export it")
        out[f"{p}.weight_packed"] = out.pop(f"{p}.qweight")
        sc = out.pop(f"{p}.scales")
        out[f"{p}.weight_scale"] = sc.view(torch.float8_e4m3fn) if cfg.format == "nvfp4" else sc
        wgs, ags = out.pop(f"{p}.weight_global_scale"), out.pop(f"{p}.act_global_scale")
        if cfg.weight_global_scale:
            out[f"{p}.weight_global_scale"] = wgs.float().reshape(1)
        if cfg.format == "nvfp4":
            out[f"{p}.input_global_scale"] = ags.float().reshape(1)
        for k in ("forward_hadamard_matrix", "backward_hadamard_matrix"):
            m = out.pop(f"{p}.{k}", None)
            if m is not None and (m.shape != rb.shape or not torch.allclose(m.float(), rb, atol=1e-2)):
                raise CheckpointError(f"{p}.{k} is not the {cfg.transform} block of size {cfg.transform_block} its "
                                      "config names; the checkpoint is corrupt or was not written by mrgptq")
    return out
