"""Per-architecture tables: where the decoder blocks are, and which linears share an input.

Linears that share an input (q/k/v, gate/up) share one rotation and one captured Hessian.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import MrgptqError


class UnsupportedArchitecture(MrgptqError):
    pass


@dataclass(frozen=True)
class Arch:
    blocks: str  # attribute path of the decoder-block ModuleList
    groups: tuple[tuple[str, ...], ...]  # linears in forward order, grouped by shared input

    @property
    def linears(self) -> tuple[str, ...]:
        return tuple(n for g in self.groups for n in g)


_LLAMA_LIKE = Arch(
    "model.layers",
    (
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        ("self_attn.o_proj",),
        ("mlp.gate_proj", "mlp.up_proj"),
        ("mlp.down_proj",),
    ),
)
_PHI3 = Arch(
    "model.layers",
    (("self_attn.qkv_proj",), ("self_attn.o_proj",), ("mlp.gate_up_proj",), ("mlp.down_proj",)),
)
ARCHS = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "phi3": _PHI3,
}


def get_arch(model) -> Arch:
    mt = getattr(model.config, "model_type", None)
    if mt not in ARCHS:
        raise UnsupportedArchitecture(
            f"architecture {mt!r} is not supported; supported: {', '.join(sorted(ARCHS))}"
        )
    return ARCHS[mt]


def get_module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    m = root
    for part in path.split("."):
        m = getattr(m, part)
    return m


def set_module(root: torch.nn.Module, path: str, new: torch.nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(get_module(root, parent) if parent else root, leaf, new)


def blocks(model) -> torch.nn.ModuleList:
    return get_module(model, get_arch(model).blocks)


def linear_in_features(model) -> list[int]:
    """The distinct input widths of the arch's linears (block 0 stands for all), quantized or not."""
    first = blocks(model)[0]
    return sorted({get_module(first, n).in_features for n in get_arch(model).linears})
