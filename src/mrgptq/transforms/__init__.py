"""Orthogonal input rotations: Hadamard (any constructible order), DCT, DST, GSR, identity."""
from .hadamard import RotationError, fwht, hadamard, has_hadamard
from .rotation import TRANSFORMS, Rotation, block_matrix

__all__ = ["TRANSFORMS", "Rotation", "RotationError", "block_matrix", "fwht", "hadamard", "has_hadamard"]
