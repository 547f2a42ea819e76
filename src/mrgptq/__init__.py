"""mrgptq: MR-GPTQ quantization of causal LMs to MXFP4 / NVFP4 (and INT4), export, runtime and kernels."""
from . import formats

__version__ = "0.1.0"
__all__ = ["formats", "__version__"]
