"""Quantized modules and checkpoint loading."""
from .qlinear import QuantLinear
from .checkpoint import CheckpointError, load, read_meta, save_checkpoint

__all__ = ["CheckpointError", "QuantLinear", "load", "read_meta", "save_checkpoint"]
