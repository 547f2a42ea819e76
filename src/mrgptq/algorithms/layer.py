"""One linear layer: its rotation, the input it will see, and the quantization of its weight."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..formats import QuantizedTensor, get_spec
from ..transforms import Rotation
from .activations import ActQuantizer
from .config import QuantConfig
from .gptq import gptq
from .hessian import Hessian
from .qep import qep_correct
from .rtn import rtn


@dataclass
class LayerPlan:
    """Everything decided before calibration: R (shared by layers with the same input) and the act quantizer."""

    cfg: QuantConfig
    rotation: Rotation | None
    act: ActQuantizer | None

    @classmethod
    def build(cls, cfg: QuantConfig, in_features: int) -> LayerPlan:
        cfg = cfg.resolved()
        rot = None
        if cfg.transform != "identity" or cfg.signs:
            block = None if cfg.transform_block == 0 else cfg.transform_block
            rot = Rotation(in_features, cfg.transform, block, cfg.signs, cfg.seed)
        act = None
        if cfg.w4a4:
            act = ActQuantizer(get_spec(cfg.act_format, cfg.group_size), rot, rule=cfg.act_scale_rule)
        return cls(cfg, rot, act)

    def layer_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the quantized layer multiplies its weight with: Q(x R) for W4A4, x R for W4A16."""
        if self.act is not None:
            return self.act(x)
        return x if self.rotation is None else self.rotation.apply(x)

    def target_input(self, x_fp: torch.Tensor) -> torch.Tensor:
        """The full-precision input in the rotated basis (QEP's target)."""
        return x_fp if self.rotation is None else self.rotation.apply(x_fp)

    def rotate_weight(self, W: torch.Tensor) -> torch.Tensor:
        return W.float() if self.rotation is None else self.rotation.fuse(W.float())

    def quantize(self, W: torch.Tensor, hessian: Hessian | None, name: str = "weight") -> QuantizedTensor:
        """Quantize W (out, in) given the Hessian of `layer_input` (None for RTN)."""
        cfg = self.cfg
        Wr = self.rotate_weight(W)
        if cfg.method == "rtn":
            if cfg.qep and hessian is not None and hessian.C is not None:
                Wr = qep_correct(Wr, hessian.H_qep, hessian.C, cfg.qep_alpha, cfg.damp)
            return rtn(Wr, cfg.spec, cfg.scale_rule, name)
        if hessian is None or hessian.n == 0:
            raise ValueError(f"{name}: {cfg.method} needs calibration inputs (empty Hessian)")
        if cfg.qep and hessian.C is not None:
            Wr = qep_correct(Wr, hessian.H_qep, hessian.C, cfg.qep_alpha, cfg.damp)
        return gptq(
            Wr, hessian.H, cfg.spec, scale_rule=cfg.scale_rule, scales=cfg.scales, act_order=cfg.act_order,
            block_size=cfg.block_size, damp=cfg.damp, name=name,
        )
