"""Linears that read the same input (q/k/v, gate/up) run as one: one rotation, one decode GEMM, one launch.

Hugging Face calls q_proj, k_proj and v_proj one after another on the same tensor. At decode sizes each call is
a few microseconds of fixed cost (launch, ramp-up, the rotation kernel), so `fuse_siblings` ties such modules
into a group: the first call computes every member's output with the concatenated weight (built once in the
decode layout) and the others return their slice of it. In prefill (GPU) the members keep their own GEMMs but
share the rotated (and quantized) input. The CPU path is unchanged. Members must agree on format, rotation and
activation quantizer; where their weights' per-tensor scales differ (NVFP4) the fused product applies each
member's per output row, so it is exactly the members' products side by side.
"""
from __future__ import annotations

import functools

import torch

from ..runtime.compiled import handle, mark_constants

SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class Siblings:
    def __init__(self, members):
        self.members = members
        self.sizes = [m.out_features for m in members]
        self.tw = None  # the concatenated weight in the decode layout, built on first use
        self.bias = None
        self.last = None  # (input, outputs, members still to be served)
        handle(self)  # its name inside compiled graphs (runtime/compiled.py)
        mark_constants()

    @functools.cached_property
    def per_row(self) -> bool:
        """Whether the members' weights have per-tensor scales of their own (NVFP4): applied per output row."""
        return len({m.global_divisors()[0] for m in self.members}) > 1

    @functools.cached_property
    def alpha(self) -> float:
        """The product's scalar factor: 1 / g_w when the members share it, else 1 (and the weight's row_alpha)."""
        return 1.0 if self.per_row else 1.0 / self.members[0].global_divisors()[0]

    def weight(self):
        from .tcgemv import packed_once

        self.tw = packed_once(self.tw, self.members[0].weight_packed.device, self._pack)
        return self.tw or None

    def _pack(self):
        from .tcgemv import tc_pack

        ms = self.members
        if ms[0].bias is not None:
            self.bias = torch.cat([m.bias for m in ms])
        scales = torch.cat([m.weight_scale.view(torch.uint8) for m in ms]).view(ms[0].weight_scale.dtype)
        tw = tc_pack(torch.cat([m.weight_packed for m in ms]), scales, ms[0].spec)
        if tw is not None and self.per_row:  # 1 / g_w of each member's rows, float32 as a scalar launch rounds it
            tw.row_alpha = torch.cat([torch.full((m.out_features,), 1.0 / m.global_divisors()[0], dtype=torch.float32)
                                      for m in ms]).to(tw.words.device)
        return tw

    def __setstate__(self, state):  # a copy (deepcopy of the model) is a group of its own
        self.__dict__.update(state)
        handle(self, fresh=True)

    def one_gemm(self, rows: int) -> bool:
        """Whether the GPU kernels compute the group's product for `rows` rows as one decode GEMM (decode sizes,
        and the concatenated weight fits the decode layout)."""
        from .. import kernels

        return rows <= kernels.TC_ROWS and self.weight() is not None

    def serves(self, rows: int, device: torch.device, dtype: torch.dtype) -> bool:
        """Whether members' calls on such an input run as one product (the GPU decode path; on the CPU the
        group's product is the members' own outputs side by side, which costs the same)."""
        probe = torch.empty(0, device=device, dtype=dtype)
        return not self.members[0]._use_kernels(probe) or self.one_gemm(rows)

    def offset(self, module) -> int:
        """Where module's outputs start in the group's product."""
        return sum(self.sizes[:self.members.index(module)])

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's output for x side by side (..., sum of out_features)."""
        if self.members[0]._use_kernels(x) and self.one_gemm(x.numel() // x.shape[-1]):
            from ..kernels import sibling_product

            return sibling_product(x, self)
        return torch.cat([m.forward_eager(x, use_group=False) for m in self.members], dim=-1)

    def shared(self, module, x, compute):
        """`compute()` once per input x for all members (each member's call on x gets the same value): the
        prefill operand (rotated, quantized activations) that every member's own GEMM reads."""
        last = self.last
        if last is None or last[0] is not x or module not in last[2]:
            last = self.last = (x, compute(), set(self.members))
        last[2].discard(module)
        if not last[2]:
            self.last = None  # every member served: drop the reference to the input
        return last[1]

    def output(self, module, x, compute):
        """module's slice of the group's product for input x; `compute()` runs the fused product."""
        parts = self.shared(module, x, lambda: torch.split(compute(), self.sizes, dim=-1))
        return parts[self.members.index(module)]


def _compatible(ms) -> bool:
    """Same input treatment (format, rotation, activation quantizer and its per-tensor scale); the weights'
    per-tensor scales may differ (the fused product applies each member's per row)."""
    a = ms[0]
    return all(m.in_features == a.in_features and m.spec == a.spec and m.act_spec == a.act_spec
               and m.act_rule == a.act_rule and (m.bias is None) == (a.bias is None)
               and m.global_divisors()[1] == a.global_divisors()[1] and _same_rotation(m.rotation, a.rotation)
               for m in ms[1:])


def _same_rotation(r1, r2) -> bool:
    """Both absent, or the same sign-free rotation (random signs would have to be compared value by value)."""
    if r1 is None or r2 is None:
        return r1 is r2
    return not r1.signs and not r2.signs and (r1.kind, r1.size, r1.is_identity) == (r2.kind, r2.size, r2.is_identity)


def fuse_siblings(model) -> int:
    """Group QuantLinear siblings that share an input; returns how many groups were formed."""
    from ..runtime.qlinear import QuantLinear

    n = 0
    for parent in model.modules():
        for names in SIBLINGS:
            ms = [getattr(parent, k, None) for k in names]
            if all(isinstance(m, QuantLinear) for m in ms) and _compatible(ms):
                g = Siblings(ms)
                for m in ms:
                    m._siblings = g
                n += 1
    return n
