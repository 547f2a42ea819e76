"""Which layout can express which recipe; the tensors and config.json entry of each."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..algorithms import QuantConfig
from ..errors import MrgptqError
from . import compressed_tensors, fp_quant

LAYOUTS = ("compressed-tensors", "fp-quant", "fp-quant-pseudo", "mrgptq")


class ExportError(MrgptqError):
    """A recipe the chosen layout cannot express; the message names what it can."""


def unsupported(cfg: QuantConfig, layout: str, in_features: list[int] | None = None) -> str | None:
    """None if `layout` can hold `cfg`, else the reason (one sentence that names what would work)."""
    if layout == "mrgptq":
        return None
    if layout == "compressed-tensors":
        return compressed_tensors.unsupported(cfg, in_features or [])
    if layout in ("fp-quant", "fp-quant-pseudo"):
        return fp_quant.unsupported(cfg)
    raise ExportError(f"unknown layout {layout!r}: choose one of {', '.join(LAYOUTS)}")


def check(cfg: QuantConfig, layout: str, in_features: list[int] | None = None) -> None:
    why = unsupported(cfg, layout, in_features)
    if why:
        raise ExportError(f"cannot export {cfg.resolved().label} as {layout}: {why}")


def default_layout(cfg: QuantConfig, in_features: list[int] | None = None) -> str:
    """compressed-tensors wherever it can express the recipe, our own layout otherwise."""
    return "compressed-tensors" if unsupported(cfg, "compressed-tensors", in_features) is None else "mrgptq"


def to_layout(sd: dict[str, torch.Tensor], cfg: QuantConfig, layout: str, model) -> dict[str, torch.Tensor]:
    """The tensors of `layout`, from our state dict."""
    if layout in ("fp-quant", "fp-quant-pseudo"):
        return fp_quant.to_tensors(sd, cfg, model, pseudo=layout == "fp-quant-pseudo")
    return sd


def from_layout(tensors: dict[str, torch.Tensor], cfg: QuantConfig, layout: str, model) -> dict[str, torch.Tensor]:
    """Our state dict from a checkpoint's tensors (the inverse of to_layout)."""
    if layout in ("fp-quant", "fp-quant-pseudo"):
        return fp_quant.from_tensors(tensors, cfg, model)
    return tensors


def write_config(directory: Path, cfg: QuantConfig, layout: str, model) -> None:
    """Add the layout's `quantization_config` to directory/config.json (written by save_pretrained)."""
    if layout == "compressed-tensors":
        from compressed_tensors.compressors import ModelCompressor

        qc, tc = compressed_tensors.schemas(cfg, model)
        ModelCompressor(quantization_config=qc, transform_config=tc).update_config(str(directory))
    elif layout in ("fp-quant", "fp-quant-pseudo"):
        p = Path(directory) / "config.json"
        data = json.loads(p.read_text())
        data["quantization_config"] = fp_quant.config_dict(cfg, pseudo=layout == "fp-quant-pseudo")
        p.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
