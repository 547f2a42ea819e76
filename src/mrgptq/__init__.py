"""mrgptq: MR-GPTQ quantization of causal LMs to MXFP4 / NVFP4 (and INT4), export, runtime and kernels."""
from . import formats

__version__ = "0.1.0"
__all__ = ["__version__", "formats", "load"]


def load(path, device: str = "cpu", dtype=None):
    """A quantized checkpoint (any layout mrgptq writes) as a transformers model with QuantLinear layers.

    Validated before use (safetensors only, shapes, dtypes, scale ranges); the tokenizer is
    `transformers.AutoTokenizer.from_pretrained(path)`.
    """
    from .runtime.checkpoint import load as _load

    return _load(path, device=device, dtype=dtype)[0]
