"""Zero-shot tasks through lm-eval (extra `eval`); their datasets come from the hub, so this needs network."""
from __future__ import annotations

from .perplexity import EvalError


def run_tasks(model, tokenizer, tasks: list[str], batch_size: int = 8, limit: int | None = None) -> dict:
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise EvalError("--tasks needs lm-eval: pip install 'mrgptq[eval]'") from None
    try:
        res = simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size),
                              tasks=tasks, limit=limit)
    except Exception as e:  # noqa: BLE001 dataset download / unknown task errors come in many types
        raise EvalError(f"lm-eval could not run {', '.join(tasks)}: {str(e).splitlines()[0] if str(e) else e!r} "
                        "(its datasets need network access)") from None
    out = {}
    for task, metrics in res["results"].items():
        acc = metrics.get("acc_norm,none", metrics.get("acc,none"))
        out[task] = {"acc": acc, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
    return out
