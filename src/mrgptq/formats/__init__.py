"""Number formats: the one place quantization math lives.

>>> q = quantize(x, "mxfp4")          # codes (uint8 0..15), scales (E8M0 uint8), global_scale=None
>>> dequantize(q)                      # float32 codes * scales
>>> pack(q.codes), unpack(packed)      # two codes per byte, low nibble first
"""
from .pack import pack, unpack
from .quant import (
    QuantizedTensor,
    check_input,
    dequantize,
    effective_scales,
    encode_groups,
    fake_quantize,
    quant_error,
    quantize,
)
from .scales import MSE_NORM, SCALE_RULES, global_scale_for, nv_global_scale
from .scales import choose as choose_scales
from .spec import E2M1_GRID, FORMAT_NAMES, FormatError, FormatSpec, get_spec

__all__ = [
    "E2M1_GRID", "FORMAT_NAMES", "MSE_NORM", "SCALE_RULES", "FormatError", "FormatSpec", "QuantizedTensor",
    "check_input", "choose_scales", "dequantize", "effective_scales", "encode_groups", "fake_quantize", "get_spec",
    "global_scale_for", "nv_global_scale", "pack", "quant_error", "quantize", "unpack",
]
