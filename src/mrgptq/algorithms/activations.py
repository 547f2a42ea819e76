"""W4A4: the online activation quantizer, x -> Q(x R), RTN per token-group in the weight's format.

The same module is used while calibrating (so GPTQ's Hessian is that of the inputs the quantized model
really sees) and at inference. NVFP4's per-tensor global scale is static once calibrated (`observe`), as
deployed runtimes need; before that it is computed per call.
"""
from __future__ import annotations

import torch

from .. import formats
from ..formats import FormatSpec
from ..transforms import Rotation


class ActQuantizer:
    def __init__(self, spec: FormatSpec, rotation: Rotation | None = None, global_scale: torch.Tensor | None = None,
                 rule: str = "spec"):
        self.spec = spec
        self.rule = rule
        self.rotation = rotation
        self.global_scale = global_scale
        self._amax = None

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.rotation is None else self.rotation.apply(x)

    def observe(self, x: torch.Tensor) -> None:
        """Track the calibration amax of rotated inputs; finalize() turns it into the static global scale."""
        a = self.rotate(x).detach().abs().amax().float().cpu()
        self._amax = a if self._amax is None else torch.maximum(self._amax, a)

    def finalize(self) -> None:
        if self.spec.global_scale and self._amax is not None:
            self.global_scale = (448.0 * 6.0 / self._amax.clamp_min(1e-12)).reshape(())

    def quantize(self, x: torch.Tensor) -> formats.QuantizedTensor:
        xr = self.rotate(x)
        gs = self.global_scale
        if gs is not None:
            gs = gs.to(xr.device)
        return formats.quantize(xr, self.spec, scale_rule=self.rule, global_scale=gs, name="activation")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantized rotated activations, in x's dtype."""
        return formats.dequantize(self.quantize(x), x.dtype)
