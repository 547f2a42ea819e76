"""WikiText-2 perplexity in the GPTQ convention: rows joined by "\\n\\n", tokenized once, cut into
non-overlapping windows of seqlen tokens, perplexity = exp(mean NLL over all predicted tokens)."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import MrgptqError


class EvalError(MrgptqError):
    pass


def find_wikitext2() -> Path | None:
    """The WikiText-2 raw test text: $MRGPTQ_WIKITEXT2, else ../shared/data beside a checkout, else None."""
    import os

    env = os.environ.get("MRGPTQ_WIKITEXT2")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in [Path.cwd(), *Path.cwd().parents, *here.parents]:
        cand = parent / "shared" / "data" / "wikitext2" / "test.txt"
        if cand.is_file():
            return cand
    return None


def load_eval_text(path: str | None) -> str:
    if path is None:
        found = find_wikitext2()
        if found is None:
            try:
                import datasets

                ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
                return "\n\n".join(ds["text"])
            except Exception:  # noqa: BLE001 (datasets raises many types when it cannot fetch)
                raise EvalError("WikiText-2 test text not found: pass --eval-text PATH (the raw test split "
                                "joined with blank lines) or set MRGPTQ_WIKITEXT2") from None
        path = str(found)
    p = Path(path)
    if not p.is_file():
        raise EvalError(f"evaluation text {path} does not exist; pass an existing --eval-text file")
    return p.read_text("utf-8")


@torch.no_grad()
def perplexity(model, tokenizer, text: str, seqlen: int = 2048, max_windows: int | None = None,
               device="cpu", progress: bool = True) -> dict:
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    n = ids.numel() // seqlen
    if n == 0:
        raise EvalError(f"evaluation text has {ids.numel()} tokens, fewer than one window of {seqlen}")
    if max_windows:
        n = min(n, max_windows)
    model.to(device)
    nll, count = 0.0, 0
    for i in tqdm(range(n), desc="perplexity", unit="win", disable=not progress):
        x = ids[i * seqlen : (i + 1) * seqlen].unsqueeze(0).to(device)
        logits = model(x, use_cache=False).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:], reduction="sum")
        nll += loss.item()
        count += seqlen - 1
    return {"ppl": math.exp(nll / count), "windows": n, "seqlen": seqlen, "tokens": n * seqlen}
