"""QuantLinear: a linear layer holding packed 4-bit codes and scales (~4.25 bits/weight for MXFP4).

forward(x) = Q_a(x R) @ dequant(W')^T + b  (W4A4)   or   (x R) @ dequant(W')^T + b  (W4A16),
where W' = W R is the rotated weight that was quantized. On CPU the dequantize path is plain PyTorch
(formats.dequantize, the reference); on CUDA the Triton kernels take over when installed.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from .. import formats
from ..algorithms.activations import ActQuantizer
from ..formats import FormatSpec, QuantizedTensor
from ..formats.scales import FOUR_THIRDS_GLOBAL
from ..transforms import Rotation
from .compiled import compiled_forward, handle

_SCALE_DTYPES = {"e8m0": torch.uint8, "e4m3": torch.float8_e4m3fn, "fp32": torch.float32}


class QuantLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool, spec: FormatSpec,
                 rotation: Rotation | None = None, act_spec: FormatSpec | None = None,
                 dtype: torch.dtype = torch.float32, global_scale: bool | None = None, act_rule: str = "spec"):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.spec, self.rotation, self.act_spec, self.act_rule = spec, rotation, act_spec, act_rule
        has_global = spec.global_scale if global_scale is None else global_scale
        ng = in_features // spec.group_size
        self.register_buffer("weight_packed", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("weight_scale", torch.zeros(out_features, ng, dtype=_SCALE_DTYPES[spec.scale_dtype]))
        self.register_buffer("weight_global_scale", torch.ones(1, dtype=torch.float32) if has_global else None)
        self.register_buffer("weight_zero_point",
                             None if spec.symmetric else torch.zeros(out_features, ng, dtype=torch.uint8))
        self.register_buffer("input_global_scale",
                             torch.ones(1, dtype=torch.float32) if act_spec is not None and act_spec.global_scale
                             else None)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None
        self.compute_dtype = dtype
        self._w_cache = None
        self._globals = None
        self._tc = None  # the weight in the GPU decode layout (kernels.tc_weight), built on first use
        self._siblings = None  # kernels.siblings group (q/k/v, gate/up) sharing one decode product
        handle(self)  # its name inside compiled graphs (runtime/compiled.py)

    @classmethod
    def from_quantized(cls, q: QuantizedTensor, bias: torch.Tensor | None, rotation: Rotation | None,
                       act: ActQuantizer | None, dtype: torch.dtype = torch.float32) -> QuantLinear:
        out_f, in_f = q.codes.shape
        m = cls(in_f, out_f, bias is not None, q.spec, rotation, act.spec if act else None, dtype,
                global_scale=q.global_scale is not None, act_rule=act.rule if act else "spec")
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

    def __setstate__(self, state):  # a copy (deepcopy, unpickling) gets its own name in compiled graphs
        super().__setstate__(state)
        handle(self, fresh=True)

    def _load_from_state_dict(self, *args, **kwargs):
        self._w_cache = self._globals = self._tc = None
        if self._siblings is not None:
            self._siblings.tw = None
        return super()._load_from_state_dict(*args, **kwargs)

    def act_quantizer(self) -> ActQuantizer | None:
        if self.act_spec is None:
            return None
        return ActQuantizer(self.act_spec, self.rotation, self.input_global_scale, self.act_rule)

    def global_divisors(self) -> tuple[float, float]:
        """(g_w, g_a): the per-tensor scales the weight's and the activations' group scales are divided by
        (1 where a format has none), as Python floats read once, so no device sync happens per call."""
        if self._globals is None:
            gw = 1.0 if self.weight_global_scale is None else float(self.weight_global_scale)
            ga = 1.0
            if self.act_spec is not None:
                if self.input_global_scale is not None:
                    ga = float(self.input_global_scale)
                elif self.act_rule == "four-thirds":
                    ga = FOUR_THIRDS_GLOBAL
            self._globals = (gw, ga)
        return self._globals

    def kernel_alpha(self) -> float:
        """1 / (g_w g_a): the per-tensor scales the GPU GEMM applies once."""
        gw, ga = self.global_divisors()
        return 1.0 / gw / ga

    def _use_kernels(self, x: torch.Tensor) -> bool:
        if not x.is_cuda or os.environ.get("MRGPTQ_KERNELS", "1") == "0":
            return False
        from .. import kernels

        return kernels.available(x) and kernels.supports(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():  # one opaque op: the compiler fuses the work around it
            return compiled_forward(self, x)
        return self.forward_eager(x)

    def forward_eager(self, x: torch.Tensor, use_group: bool = True) -> torch.Tensor:
        if self._use_kernels(x):
            from ..kernels import fp4_linear

            return fp4_linear(x, self, use_group)
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
