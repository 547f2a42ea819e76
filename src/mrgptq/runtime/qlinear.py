"""QuantLinear: a linear layer holding packed 4-bit codes and scales (~4.25 bits/weight for MXFP4).

forward(x) = Q_a(x R) @ dequant(W')^T + b  (W4A4)   or   (x R) @ dequant(W')^T + b  (W4A16),
where W' = W R is the rotated weight that was quantized. On CPU the dequantize path is plain PyTorch
(formats.dequantize, the reference); on CUDA the Triton kernels take over when installed.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import formats
from ..algorithms.activations import ActQuantizer
from ..formats import FormatSpec, QuantizedTensor
from ..transforms import Rotation

_SCALE_DTYPES = {"e8m0": torch.uint8, "e4m3": torch.float8_e4m3fn, "fp32": torch.float32}


class QuantLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool, spec: FormatSpec,
                 rotation: Rotation | None = None, act_spec: FormatSpec | None = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.spec, self.rotation, self.act_spec = spec, rotation, act_spec
        ng = in_features // spec.group_size
        self.register_buffer("weight_packed", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("weight_scale", torch.zeros(out_features, ng, dtype=_SCALE_DTYPES[spec.scale_dtype]))
        self.register_buffer("weight_global_scale", torch.ones((), dtype=torch.float32) if spec.global_scale else None)
        self.register_buffer("weight_zero_point",
                             None if spec.symmetric else torch.zeros(out_features, ng, dtype=torch.uint8))
        self.register_buffer("input_global_scale",
                             torch.ones((), dtype=torch.float32) if act_spec is not None and act_spec.global_scale
                             else None)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None
        self.compute_dtype = dtype
        self._w_cache = None

    @classmethod
    def from_quantized(cls, q: QuantizedTensor, bias: torch.Tensor | None, rotation: Rotation | None,
                       act: ActQuantizer | None, dtype: torch.dtype = torch.float32) -> "QuantLinear":
        out_f, in_f = q.codes.shape
        m = cls(in_f, out_f, bias is not None, q.spec, rotation, act.spec if act else None, dtype)
        m.weight_packed.copy_(formats.pack(q.codes))
        m.weight_scale.copy_(q.scales)
        if q.global_scale is not None:
            m.weight_global_scale.copy_(q.global_scale)
        if q.zeros is not None:
            m.weight_zero_point.copy_(q.zeros)
        if m.input_global_scale is not None and act.global_scale is not None:
            m.input_global_scale.copy_(act.global_scale)
        if bias is not None:
            m.bias.data.copy_(bias.to(dtype))
        return m

    def quantized(self) -> QuantizedTensor:
        return QuantizedTensor(formats.unpack(self.weight_packed), self.weight_scale, self.weight_global_scale,
                               self.spec, self.weight_zero_point)

    def dequantized_weight(self, dtype=None) -> torch.Tensor:
        dtype = dtype or self.compute_dtype
        c = self._w_cache
        if c is None or c.dtype != dtype or c.device != self.weight_packed.device:
            c = formats.dequantize(self.quantized(), dtype)
            self._w_cache = c
        return c

    def _load_from_state_dict(self, *args, **kwargs):
        self._w_cache = None
        return super()._load_from_state_dict(*args, **kwargs)

    def act_quantizer(self) -> ActQuantizer | None:
        if self.act_spec is None:
            return None
        return ActQuantizer(self.act_spec, self.rotation, self.input_global_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.act_quantizer()
        if act is not None:
            x = act(x)
        elif self.rotation is not None:
            x = self.rotation.apply(x)
        w = self.dequantized_weight(x.dtype)
        return nn.functional.linear(x, w.to(x.device), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        rot = "none" if self.rotation is None else f"{self.rotation.kind}/{self.rotation.size}"
        act = self.act_spec.name if self.act_spec else "bf16"
        return f"{self.in_features}, {self.out_features}, w={self.spec.name}/g{self.spec.group_size}, a={act}, rot={rot}"
