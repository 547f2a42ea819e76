"""Layer-level algorithms: RTN, GPTQ, MR-GPTQ (rotation + GPTQ + format-specific scales), W4A4, QEP."""
from .activations import ActQuantizer
from .config import METHODS, ConfigError, QuantConfig
from .damping import NumericsError
from .gptq import gptq
from .hessian import Hessian
from .layer import LayerPlan
from .qep import QEP_ALPHA, qep_correct
from .rtn import rtn

__all__ = [
    "METHODS", "QEP_ALPHA", "ActQuantizer", "ConfigError", "Hessian", "LayerPlan", "NumericsError", "QuantConfig",
    "gptq", "qep_correct", "rtn",
]
