"""Round-to-nearest: every weight to its nearest grid point under the format's group scales."""
from __future__ import annotations

import torch

from .. import formats
from ..formats import FormatSpec, QuantizedTensor


def rtn(W: torch.Tensor, spec: FormatSpec, scale_rule: str = "spec", name: str = "weight") -> QuantizedTensor:
    return formats.quantize(W.float(), spec, scale_rule=scale_rule, name=name)
