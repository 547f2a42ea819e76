"""Our native checkpoint: HF config + tokenizer + model.safetensors (packed codes, scales) + mrgptq.json.

Written into a temporary sibling directory and renamed into place, so a directory named like the
output is always complete. Loaded with safetensors only (never pickle), every tensor checked first.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..algorithms import QuantConfig
from ..errors import MrgptqError, first_line
from ..model.arch import get_arch, linear_in_features

log = logging.getLogger("mrgptq")
WEIGHTS = "model.safetensors"
META = "mrgptq.json"


class CheckpointError(MrgptqError):
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
    """Move the complete `tmp` to `out`; an `out` already there is put back if the swap is interrupted."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


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
    try:
        tmp = atomic_dir(out)
    except OSError as e:
        raise CheckpointError(f"could not create the checkpoint directory {out}: {write_problem(e)}") from None
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
    except OSError as e:  # full disk, quota, read-only mount: nothing half-written is left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write the checkpoint to {out}: {write_problem(e)}; nothing was written") \
            from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_problem(e: OSError) -> str:
    """An OS failure in words, with the fix where there is one."""
    import errno

    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device; free some space or choose another --out"
    if e.errno == errno.EROFS:
        return "the file system is read-only; choose another --out"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied; choose a writable --out"
    return (e.strerror or type(e).__name__).lower()


def read_meta(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a directory")
    mp = p / META
    if not mp.is_file():
        raise CheckpointError(f"{path} is not an mrgptq checkpoint (no {META}); quantize it with mrgptq first")
    try:
        meta = json.loads(mp.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{mp} is corrupt ({e.msg}); re-create the checkpoint") from None
    except (UnicodeDecodeError, OSError) as e:
        raise CheckpointError(f"{mp} is unreadable ({type(e).__name__}); re-create the checkpoint") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{mp} is corrupt (no quantization config object); re-create the checkpoint")
    return meta


def load(path: str | Path, device="cpu", dtype: torch.dtype | None = None):
    """A transformers model whose quantized linears are QuantLinear modules, tokenizer; validated."""
    from transformers import AutoConfig, AutoTokenizer

    from ..export import LAYOUTS, from_layout

    p = Path(path)
    meta = read_meta(p)
    try:
        cfg = QuantConfig(**meta["config"]).resolved()
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{p / META}: invalid quantization config ({e})") from None
    try:
        hf_cfg = AutoConfig.from_pretrained(p, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 untrusted JSON: any failure to parse it is a corrupt file, never a traceback
        raise CheckpointError(f"{p}/config.json is unreadable: {first_line(e)}; re-create the checkpoint") from None
    if hasattr(hf_cfg, "quantization_config"):  # the ecosystem's entry; we build QuantLinears ourselves
        del hf_cfg.quantization_config
    layout = meta.get("layout", "mrgptq")
    if layout not in LAYOUTS:
        raise CheckpointError(f"{p / META}: unknown layout {layout!r}; this mrgptq reads {', '.join(LAYOUTS)}")
    name = meta.get("dtype", "float32")
    dt = dtype or (_DTYPES.get(name) if isinstance(name, str) else None)
    if dt is None:
        raise CheckpointError(f"{p / META}: unknown dtype {meta.get('dtype')!r}; expected one of {', '.join(_DTYPES)}")
    header = _read_header(p / WEIGHTS)
    _check_config_matches_file(hf_cfg, header, p)
    with torch.device("meta"):  # sizes first, no memory: a config inflated by corruption is refused here
        expected = _build(hf_cfg, cfg, dt, p).state_dict()
    nbytes = sum(t.numel() * t.element_size() for t in expected.values())
    if nbytes > 2 * header.data_bytes + (1 << 20):
        raise CheckpointError(f"{p}/config.json describes {nbytes / 2**20:.1f} MiB of tensors but {WEIGHTS} holds "
                              f"{header.data_bytes / 2**20:.1f} MiB; the files do not belong together")
    model = _build(hf_cfg, cfg, dt, p)
    expected = model.state_dict()
    try:
        tensors = from_layout(_read_tensors(p / WEIGHTS), cfg, layout, model)
    except CheckpointError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{p / WEIGHTS}: tensors do not fit the {layout} layout ({first_line(e)}); "
                              "the file is corrupt or mismatched") from None
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
    from ..kernels.siblings import fuse_siblings

    fuse_siblings(model)  # q/k/v and gate/up decode as one product on the GPU (no effect on the CPU path)
    tok = None
    try:
        tok = AutoTokenizer.from_pretrained(p)
    except Exception as e:  # noqa: BLE001 the tokenizer is optional: a damaged one must not hide the model
        if any(p.glob("tokenizer*")):
            log.warning("%s: tokenizer files could not be read (%s); load the model's tokenizer yourself", p,
                        first_line(e))
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


def _build(hf_cfg, cfg: QuantConfig, dt: torch.dtype, p: Path):
    """The empty model the checkpoint describes: transformers' model with QuantLinear skeletons."""
    from transformers import AutoModelForCausalLM

    from ..model.pipeline import quantized_skeleton

    try:
        with _no_init():  # allocate, skip random init; non-persistent buffers (RoPE tables) are still computed
            model = AutoModelForCausalLM.from_config(hf_cfg, dtype=dt)
        arch = get_arch(model)
        nblocks = len(model.get_submodule(arch.blocks))
        for i in range(nblocks):
            quantized_skeleton(model, cfg, arch, prefix=f"{arch.blocks}.{i}.")
        return model
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 untrusted numbers that describe no buildable model
        raise CheckpointError(f"{p}/config.json describes a model that cannot be built ({first_line(e)}); "
                              "re-create the checkpoint") from None


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class _Header(dict):
    """name -> shape of every tensor in a safetensors file, read without loading data; data_bytes: their size."""

    data_bytes: int = 0


@contextlib.contextmanager
def _safetensors(path: Path):
    """safe_open(path), with a missing, truncated or corrupt file (at opening or reading) as a CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete")
    try:
        with safe_open(str(path), framework="pt") as f:
            yield f
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors file ({first_line(e)}); "
                              "it is truncated or corrupt: re-create it") from None


def _read_header(path: Path) -> _Header:
    out = _Header()
    with _safetensors(path) as f:
        for k in f.keys():  # noqa: SIM118 - safe_open is not a dict
            out[k] = tuple(f.get_slice(k).get_shape())
    out.data_bytes = path.stat().st_size
    return out


def _check_config_matches_file(hf_cfg, header: _Header, p: Path) -> None:
    """Refuse a config.json whose block count disagrees with the weights file, before building anything."""
    import re

    n = getattr(hf_cfg, "num_hidden_layers", None)
    idx = {int(m.group(1)) for k in header for m in [re.search(r"\.layers\.(\d+)\.", k)] if m}
    if not isinstance(n, int) or n < 1 or (idx and max(idx) + 1 != n):
        found = max(idx) + 1 if idx else 0
        raise CheckpointError(f"{p}/config.json says {n!r} decoder blocks but {WEIGHTS} holds {found}; "
                              "the files do not belong together: re-create the checkpoint")


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    with _safetensors(path) as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
