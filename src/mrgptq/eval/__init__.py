"""Evaluation: WikiText-2 perplexity (GPTQ convention) and optional lm-eval tasks."""
from .perplexity import EvalError, load_eval_text, perplexity

__all__ = ["EvalError", "load_eval_text", "perplexity"]
