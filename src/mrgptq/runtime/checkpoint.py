"""Our native checkpoint: HF config + tokenizer + model.safetensors (packed codes, scales) + mrgptq.json.

Written into a temporary sibling directory and renamed into place, so a directory named like the
output is always complete. Loaded with safetensors only (never pickle), every tensor checked first.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..algorithms import QuantConfig
from ..model.arch import get_arch, linear_in_features

WEIGHTS = "model.safetensors"
META = "mrgptq.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or inconsistent; the message names the file and what is wrong."""


def _state_dict(model) -> dict[str, torch.Tensor]:
    sd, seen = {}, {}
    for k, v in model.state_dict().items():
        key = (v.data_ptr(), v.shape, v.dtype) if v.numel() else None
        if key is not None and key in seen:  # tied weights (lm_head = embed_tokens): stored once
            continue
        if key is not None:
            seen[key] = k
        sd[k] = v.detach().contiguous().cpu()
    return sd


def atomic_dir(out: Path):
    """A temp dir beside `out`; call finish(tmp) to move it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))


def finish(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def save_checkpoint(model, tokenizer, meta: dict, out: str | Path, extra_files: dict | None = None,
                    layout: str = "mrgptq") -> Path:
    """Write the checkpoint atomically in `layout` (see mrgptq.export); `extra_files`: name -> JSON-able."""
    from ..export import check, to_layout, write_config

    out = Path(out)
    cfg = QuantConfig(**meta["config"]).resolved()
    check(cfg, layout, linear_in_features(model))
    meta = {**meta, "layout": layout}
    sd = _state_dict(model)
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v.float()).all()]
    if bad:
        raise CheckpointError(f"refusing to save: NaN/Inf in {', '.join(bad[:3])}; quantization diverged")
    sd = to_layout(sd, cfg, layout, model)
    tmp = atomic_dir(out)
    try:
        model.config.save_pretrained(tmp)
        write_config(tmp, cfg, layout, model)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_file(sd, str(tmp / WEIGHTS), metadata={"format": "pt"})  # one key: a hash map, order not kept
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        for name, content in (extra_files or {}).items():
            (tmp / name).write_text(json.dumps(content, indent=2) + "\n")
        finish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_meta(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a directory")
    mp = p / META
    if not mp.is_file():
        raise CheckpointError(f"{path} is not an mrgptq checkpoint (no {META}); quantize it with mrgptq first")
    try:
        return json.loads(mp.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{mp} is corrupt ({e.msg}); re-create the checkpoint") from None


def load(path: str | Path, device="cpu", dtype: torch.dtype | None = None):
    """A transformers model whose quantized linears are QuantLinear modules, tokenizer; validated."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ..export import LAYOUTS, from_layout
    from ..model.pipeline import quantized_skeleton

    p = Path(path)
    meta = read_meta(p)
    try:
        cfg = QuantConfig(**meta["config"]).resolved()
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{p / META}: invalid quantization config ({e})") from None
    try:
        hf_cfg = AutoConfig.from_pretrained(p)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{p}/config.json is unreadable: {str(e).splitlines()[0]}") from None
    if hasattr(hf_cfg, "quantization_config"):  # the ecosystem's entry; we build QuantLinears ourselves
        del hf_cfg.quantization_config
    layout = meta.get("layout", "mrgptq")
    if layout not in LAYOUTS:
        raise CheckpointError(f"{p / META}: unknown layout {layout!r}; this mrgptq reads {', '.join(LAYOUTS)}")
    dt = dtype or getattr(torch, meta.get("dtype", "float32"))
    with _no_init():  # allocate, skip random init; non-persistent buffers (RoPE tables) are still computed
        model = AutoModelForCausalLM.from_config(hf_cfg, dtype=dt)
    arch = get_arch(model)
    nblocks = len(model.get_submodule(arch.blocks))
    for i in range(nblocks):
        quantized_skeleton(model, cfg, arch, prefix=f"{arch.blocks}.{i}.")
    expected = model.state_dict()
    tensors = from_layout(_read_tensors(p / WEIGHTS), cfg, layout, model)
    missing = [k for k in expected if k not in tensors and not _is_tied(model, k)]
    if missing:
        raise CheckpointError(f"{p / WEIGHTS}: missing tensor {missing[0]} (and {len(missing) - 1} more); "
                              "the file is incomplete: re-export it")
    extra = [k for k in tensors if k not in expected]
    if extra:
        raise CheckpointError(f"{p / WEIGHTS}: unexpected tensor {extra[0]}; the checkpoint does not match its config")
    for k, t in list(tensors.items()):
        e = expected[k]
        if t.dtype != e.dtype and _is_model_float(t, e, k):  # embeddings, norms, biases: cast to the asked dtype
            t = tensors[k] = t.to(e.dtype)
        if t.shape != e.shape or t.dtype != e.dtype:
            raise CheckpointError(f"{p / WEIGHTS}: {k} has shape {tuple(t.shape)} {t.dtype}, "
                                  f"expected {tuple(e.shape)} {e.dtype}; the file is corrupt or mismatched")
        if t.is_floating_point() and not torch.isfinite(t.float()).all():
            raise CheckpointError(f"{p / WEIGHTS}: {k} contains NaN/Inf")
        if k.endswith("weight_scale") and t.dtype == torch.uint8 and bool((t == 0xFF).any()):
            raise CheckpointError(f"{p / WEIGHTS}: {k} has the reserved E8M0 NaN code 0xFF")
        if k.endswith("global_scale") and not bool((t > 0).all()):
            raise CheckpointError(f"{p / WEIGHTS}: {k} must be positive")
    model.load_state_dict(tensors, strict=False)
    if getattr(hf_cfg, "tie_word_embeddings", False):
        model.tie_weights()
    model.eval().to(device)
    tok = None
    try:
        tok = AutoTokenizer.from_pretrained(p)
    except (OSError, ValueError):
        pass
    return model, tok, meta


def _no_init():
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers < 5
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


def _is_model_float(t: torch.Tensor, e: torch.Tensor, key: str) -> bool:
    floats = (torch.float32, torch.bfloat16, torch.float16)
    return t.dtype in floats and e.dtype in floats and not key.endswith(("weight_scale", "global_scale"))


def _is_tied(model, key: str) -> bool:
    return key == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete")
    try:
        out = {}
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():  # noqa: SIM118 - safe_open is not a dict
                out[k] = f.get_tensor(k)
        return out
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors file ({str(e).splitlines()[0]}); "
                              "it is truncated or corrupt: re-create it") from None
