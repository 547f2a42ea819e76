"""Checkpoint layouts the ecosystem reads.

`compressed-tensors` (vLLM, transformers): our tensors as they are, plus a `quantization_config` (and a
`transform_config` for the online rotation) written with the compressed-tensors library's own schema.
`fp-quant` (transformers' `FPQuantConfig`, IST-DASLab's reference runtime): `qweight`/`scales` per linear and
the rotation block as a matrix. `mrgptq`: our tensors without an ecosystem config (any recipe).
"""
from .layouts import (
    LAYOUTS,
    ExportError,
    check,
    default_layout,
    from_layout,
    to_layout,
    unsupported,
    write_config,
)

__all__ = ["LAYOUTS", "ExportError", "check", "default_layout", "from_layout", "to_layout", "unsupported", "write_config"]
