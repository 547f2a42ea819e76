"""Calibration data: token windows from a local text file, the shipped default, or a hub dataset."""
from __future__ import annotations

import hashlib
import importlib.resources
import json
from pathlib import Path

import torch

from ..errors import MrgptqError

BUILTIN = "builtin"  # Python-docs prose (PSF-2.0) shipped in the package; never the evaluation text


class CalibrationError(MrgptqError):
    pass


def builtin_text() -> str:
    return importlib.resources.files("mrgptq").joinpath("data/calibration_python_docs.txt").read_text("utf-8")


def read_text(source: str) -> str:
    if source in (BUILTIN, "default"):
        return builtin_text()
    p = Path(source)
    if p.exists():
        if p.is_dir():
            raise CalibrationError(f"calibration path {source} is a directory; pass a .txt or .jsonl file")
        raw = p.read_text("utf-8", errors="replace")
        if p.suffix == ".jsonl":
            rows = []
            for i, line in enumerate(raw.splitlines()):
                if line.strip():
                    try:
                        rows.append(json.loads(line).get("text", ""))
                    except (json.JSONDecodeError, AttributeError):
                        raise CalibrationError(f"{source}: line {i + 1} is not a JSON object with 'text'") from None
            return "\n\n".join(rows)
        return raw
    if source in ("wikitext2", "c4", "fineweb-edu"):
        return _hub_text(source)
    raise CalibrationError(f"calibration source {source!r} not found: pass a .txt/.jsonl path, 'builtin', "
                           "or one of wikitext2, c4, fineweb-edu (needs network)")


def _hub_text(name: str) -> str:
    try:
        import datasets
    except ImportError:
        raise CalibrationError(f"--calib {name} needs the 'datasets' package (pip install datasets) and network; "
                               "offline, use --calib builtin or a local file") from None
    spec = {"wikitext2": ("wikitext", "wikitext-2-raw-v1", "train"),
            "c4": ("allenai/c4", "en", "validation"),
            "fineweb-edu": ("HuggingFaceFW/fineweb-edu", "sample-10BT", "train")}[name]
    try:
        ds = datasets.load_dataset(spec[0], spec[1], split=spec[2], streaming=name != "wikitext2")
        rows = [r["text"] for _, r in zip(range(20000), ds)]
    except Exception as e:  # noqa: BLE001 network / hub errors come in many types
        raise CalibrationError(f"cannot download {name}: {str(e).splitlines()[0]}; offline, use --calib builtin") from None
    return "\n\n".join(rows)


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sample_windows(tokenizer, text: str, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """nsamples random windows of seqlen tokens (LongTensor [nsamples, seqlen]), reproducible by seed."""
    if nsamples < 1 or seqlen < 1:
        raise CalibrationError(f"nsamples and seqlen must be positive (got {nsamples}, {seqlen})")
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    if ids.numel() < seqlen + 1:
        raise CalibrationError(
            f"calibration text has {ids.numel()} tokens, fewer than one window of {seqlen}; "
            "use a longer text or a smaller --seqlen"
        )
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (nsamples,), generator=g)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])
