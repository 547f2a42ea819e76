"""The quantization recipe: format x method x rotation x W4A16/W4A4 x QEP, with the reference's defaults."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..errors import MrgptqError
from ..formats import FORMAT_NAMES, SCALE_RULES, get_spec
from ..formats.scales import MX_ONLY_RULES, ONLINE_RULES, has_global_scale
from ..transforms import TRANSFORMS
from .qep import QEP_ALPHA

METHODS = ("rtn", "gptq", "mr-gptq")


class ConfigError(MrgptqError):
    """An impossible or unknown recipe; the message names the valid choices."""


@dataclass(frozen=True)
class QuantConfig:
    format: str = "mxfp4"
    method: str = "mr-gptq"
    group_size: int | None = None  # None: the format's own (32 MXFP4, 16 NVFP4, 32 INT4)
    scale_rule: str | None = None  # None: 'mse' for mr-gptq, 'spec' otherwise
    transform: str | None = None  # None: 'hadamard' for mr-gptq (and for W4A4), 'identity' otherwise
    transform_block: int | None = None  # None: the group size; 0 = the whole input dim
    signs: bool = False  # random +-1 signs before the rotation
    act_order: bool = False
    scales: str | None = None  # 'static' (chosen before the GPTQ loop, reference) | 'dynamic'
    damp: float = 0.01
    block_size: int = 128
    w4a4: bool = False
    act_format: str | None = None  # None: same as the weight format
    act_scale_rule: str | None = None  # None: 'rounded' for MXFP4 (the compressed-tensors/vLLM rule), else 'spec'
    qep: bool = False
    qep_alpha: float = QEP_ALPHA
    mse_norm: float = 2.4
    seed: int = 0

    def resolved(self) -> QuantConfig:
        """Fill every None with its default and validate; the result is what gets recorded in checkpoints."""
        _check_types(self)
        fmt = self.format.lower()
        if fmt not in FORMAT_NAMES:
            raise ConfigError(f"unknown format {self.format!r}: choose one of {', '.join(FORMAT_NAMES)}")
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        spec = get_spec(fmt, self.group_size)
        mr = self.method == "mr-gptq"
        rule = self.scale_rule or ("mse" if mr else "spec")
        if rule not in SCALE_RULES:
            raise ConfigError(f"unknown scale rule {rule!r}: choose one of {', '.join(SCALE_RULES)}")
        transform = self.transform or ("hadamard" if mr else "identity")
        if transform not in TRANSFORMS:
            raise ConfigError(f"unknown transform {transform!r}: choose one of {', '.join(TRANSFORMS)}")
        block = spec.group_size if self.transform_block is None else self.transform_block
        scales = self.scales or ("static" if mr else "dynamic")
        if scales not in ("static", "dynamic"):
            raise ConfigError(f"scales must be 'static' or 'dynamic', got {scales!r}")
        act_format = (self.act_format or fmt).lower() if self.w4a4 else None
        if act_format is not None and act_format not in FORMAT_NAMES:
            raise ConfigError(f"unknown activation format {act_format!r}: choose one of {', '.join(FORMAT_NAMES)}")
        act_rule = None
        if act_format is not None:
            act_rule = self.act_scale_rule or ("rounded" if act_format == "mxfp4" else "spec")
            if act_rule not in ONLINE_RULES:
                raise ConfigError(f"activation scale rule {act_rule!r} is not an online rule: "
                                  f"choose {', '.join(ONLINE_RULES)}")
            if act_format != "mxfp4" and act_rule != "spec":
                raise ConfigError(f"activation scale rule {act_rule!r} is for MXFP4 only; use 'spec' for {act_format}")
        if rule in MX_ONLY_RULES and spec.scale_dtype != "e8m0":
            raise ConfigError(f"scale rule {rule!r} is for MXFP4 only; use 'spec' or 'mse' for {fmt}")
        if not 0 <= self.qep_alpha <= 1:
            raise ConfigError(f"qep_alpha must be in [0, 1], got {self.qep_alpha}")
        if self.damp <= 0:
            raise ConfigError(f"damp must be positive, got {self.damp}")
        return replace(
            self, format=fmt, group_size=spec.group_size, scale_rule=rule, transform=transform,
            transform_block=block, scales=scales, act_format=act_format, act_scale_rule=act_rule,
        )

    @property
    def spec(self):
        return get_spec(self.format, self.group_size)

    @property
    def weight_global_scale(self) -> bool:
        """Whether the quantized weights carry a per-tensor scale (NVFP4, or MXFP4's 4/3 trick)."""
        return has_global_scale(self.spec, self.scale_rule)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def label(self) -> str:
        parts = [self.method.upper().replace("MR-GPTQ", "MR-GPTQ"), self.format.upper()]
        if self.qep:
            parts.append("QEP")
        parts.append("W4A4" if self.w4a4 else "W4A16")
        return " ".join(parts)


def _check_types(cfg: QuantConfig) -> None:
    """Every field has its declared type (a config read from a file or built by hand can hold anything)."""
    import typing

    for name, hint in typing.get_type_hints(QuantConfig).items():
        allowed = typing.get_args(hint) or (hint,)
        v = getattr(cfg, name)
        ok = any(v is None if t is type(None) else
                 (isinstance(v, (int, float)) and not isinstance(v, bool)) if t is float else
                 isinstance(v, t) and (t is bool or not isinstance(v, bool)) for t in allowed)
        if not ok:
            want = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
            raise ConfigError(f"config field {name} must be {want}, got {type(v).__name__} {v!r}")
