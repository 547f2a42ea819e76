"""Quantized modules and checkpoint loading."""
from .checkpoint import CheckpointError, load, read_meta, save_checkpoint
from .qlinear import QuantLinear

__all__ = ["CheckpointError", "QuantLinear", "load", "read_meta", "save_checkpoint"]
