"""QuantLinear under torch.compile: its product is an opaque custom op, so the compiler fuses what lies between
the linears (norms, rotary, residuals, SiLU) while the FP4 kernels run exactly as they do eagerly.

Ops take no modules, so each module (and sibling group) gets an integer handle. A sibling group (q/k/v,
gate/up; `kernels/siblings.py`) is one op returning the members' outputs side by side, which each member
slices in the traced graph. The compiler does not merge calls of an opaque op, so `compile` adds a post-grad
pass that keeps the first of the members' identical calls: the group runs once per input, as it does eagerly,
and no op returns a view of another's output.
"""
from __future__ import annotations

import itertools
import weakref

import torch

from ..errors import MrgptqError

_OBJECTS: dict[int, weakref.ref] = {}
_next = itertools.count()


def handle(obj, fresh: bool = False) -> int:
    """A process-wide integer naming `obj` (a QuantLinear or a sibling group) inside compiled graphs, stored
    as obj._handle. `fresh`: a new one (a copy, via __setstate__, must not run the original's weights)."""
    h = None if fresh else obj.__dict__.get("_handle")
    if h is None:
        h = next(_next)
        obj.__dict__["_handle"] = h
        _OBJECTS[h] = weakref.ref(obj, lambda _, h=h: _OBJECTS.pop(h, None))
    return h


def _lookup(h: int):
    obj = _OBJECTS[h]() if h in _OBJECTS else None
    if obj is None:
        raise MrgptqError("a compiled graph refers to a quantized layer that no longer exists; compile the model again")
    return obj


@torch.library.custom_op("mrgptq::quant_linear", mutates_args=())
def quant_linear(x: torch.Tensor, h: int) -> torch.Tensor:
    return _lookup(h).forward_eager(x, use_group=False)


@quant_linear.register_fake
def _(x, h):
    return x.new_empty((*x.shape[:-1], _lookup(h).out_features))


@torch.library.custom_op("mrgptq::sibling_linears", mutates_args=())
def sibling_linears(x: torch.Tensor, h: int) -> torch.Tensor:
    return _lookup(h).product(x)


@sibling_linears.register_fake
def _(x, h):
    return x.new_empty((*x.shape[:-1], sum(_lookup(h).sizes)))


def _group_serves(h: int, rows: int, device: str, dtype_name: str) -> bool:
    """Traced as a constant (see mark_constants): whether the group's op serves this call."""
    return _lookup(h).serves(rows, torch.device(device), getattr(torch, dtype_name))


def mark_constants() -> None:
    """Let torch.compile take _group_serves' result as a constant instead of tracing into it (it may re-lay a
    weight). Called when a sibling group is made: marking imports torch._dynamo (~2 s, and Triton), which
    importing mrgptq should not."""
    if not getattr(_group_serves, "_dynamo_marked_constant", False):
        torch.compiler.assume_constant_result(_group_serves)


def compiled_forward(module, x: torch.Tensor) -> torch.Tensor:
    """What QuantLinear.forward traces to: one op call, or the module's slice of its group's op."""
    group = module._siblings
    rows = x.numel() // x.shape[-1]
    if group is not None and _group_serves(group._handle, rows, str(x.device), str(x.dtype).split(".")[-1]):
        start = group.offset(module)
        return sibling_linears(x, group._handle)[..., start:start + module.out_features]
    return quant_linear(x, module._handle)


def _merge_sibling_calls(graph) -> None:
    """Replace repeated sibling_linears(x, group) calls on the same x by the first one's result."""
    seen = {}
    target = torch.ops.mrgptq.sibling_linears.default
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is target:
            key = tuple(node.args)
            if key in seen:
                node.replace_all_uses_with(seen[key])
                graph.erase_node(node)
            else:
                seen[key] = node


def _merge_pass():
    from torch._inductor.custom_graph_pass import CustomGraphPass

    class MergeSiblingCalls(CustomGraphPass):
        def __call__(self, graph):
            _merge_sibling_calls(graph)

        def uuid(self):
            return "mrgptq-merge-sibling-calls-1"

    return MergeSiblingCalls()


def compile(fn, **kwargs):
    """torch.compile(fn) with the pass that runs each sibling group once per input (plain torch.compile is
    correct too, but runs the group's product once per member). kwargs go to torch.compile."""
    options = dict(kwargs.pop("options", None) or {})
    options.setdefault("post_grad_custom_post_pass", _merge_pass())
    return torch.compile(fn, options=options, **kwargs)
