"""End-to-end inference speed: decode tokens/s and prefill time, FP4 against bf16 with one harness.

Both models run the same loop: a static KV cache (transformers' StaticCache) and, on CUDA, each decode step
replayed from a captured CUDA graph, so launch overhead does not decide the comparison. Prefill is one
forward over the prompt keeping only the last position's logits. Models are Llama-shaped with random
weights drawn like the real ones (normal, std 0.02), so no checkpoint download is needed.
"""
from __future__ import annotations

import gc
import statistics
import time

import torch

from ..errors import MrgptqError

SHAPES = {  # a Llama-3 configuration's numbers: hidden, intermediate, blocks, heads, kv heads, vocab
    "llama3-8b": (4096, 14336, 32, 32, 8, 128256),
    "llama3-70b": (8192, 28672, 80, 64, 8, 128256),
    "llama3-1b": (2048, 8192, 16, 32, 8, 128256),
}


def llama_config(shape: str, layers: int | None = None):
    from transformers import LlamaConfig

    if shape not in SHAPES:
        raise MrgptqError(f"unknown model shape {shape!r}: choose one of {', '.join(SHAPES)} or pass a config.json")
    h, inter, n, heads, kv, vocab = SHAPES[shape]
    return LlamaConfig(hidden_size=h, intermediate_size=inter, num_hidden_layers=layers or n,
                       num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                       max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
                       tie_word_embeddings=False)


@torch.no_grad()
def random_model(config, device, dtype=torch.bfloat16, seed: int = 0):
    """The model of `config` built on `device` with normal(0, 0.02) weights (the same every call for a seed)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    for name, p in model.named_parameters():
        if "norm" in name:
            p.fill_(1.0)
        else:
            p.normal_(0.0, 0.02)
    return model


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def decode_step(model, batch: int, prompt_len: int, new_tokens: int, seed: int = 0, forward=None):
    """After prefilling a random prompt into a static KV cache: `step()` (one decode forward on the step
    buffers, returning logits), with `step.ids` / `step.pos` (its input token and position, written in place),
    `step.cache` and `step.first` (the token the prompt predicts). `forward`: what the step calls instead of
    the model (a compiled forward)."""
    from transformers import StaticCache

    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt_len), generator=g).to(dev)
    cache = StaticCache(config=model.config, max_cache_len=prompt_len + new_tokens)
    pos = torch.arange(prompt_len, device=dev)
    logits = model(input_ids=ids, past_key_values=cache, cache_position=pos, use_cache=True).logits
    tok = logits[:, -1:].argmax(-1)
    step_ids, step_pos = tok.clone(), torch.tensor([prompt_len], device=dev)

    fwd = forward or model

    def step():
        return fwd(input_ids=step_ids, past_key_values=cache, cache_position=step_pos, use_cache=True).logits

    step.ids, step.pos, step.cache, step.first = step_ids, step_pos, cache, tok
    return step


def _capture(fn, warmups: int, after_warmup=None):
    """(CUDA graph of fn(), its output): fn runs `warmups` times on a side stream first (kernels compiled,
    lazy buffers made), then `after_warmup()` (undo what the warm-up wrote), then the capture. Raises
    RuntimeError where fn cannot be captured."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmups):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    if after_warmup is not None:
        after_warmup()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


@torch.no_grad()
def decode(model, batch: int, prompt_len: int, new_tokens: int, graphs: bool = True, seed: int = 0, forward=None):
    """Greedy decoding of `new_tokens` after a random prompt. Returns (token ids (batch, new_tokens), seconds
    for the decode steps, whether CUDA graphs were used). Prefill is not timed. `forward`: a compiled forward
    for the decode steps (compiled during the warm-up, which is not timed)."""
    dev = next(model.parameters()).device
    step = decode_step(model, batch, prompt_len, new_tokens, seed, forward)
    step_ids, step_pos, cache, tok = step.ids, step.pos, step.cache, step.first
    graph, out = None, None
    if graphs and dev.type == "cuda":
        try:
            saved = [(t, t.clone()) for t in _cache_tensors(cache)]

            def restore():  # undo the warm-up's cache writes (and position counters), in place
                for t, v in saved:
                    t.copy_(v)

            graph, out = _capture(step, 2, restore)  # two warm-ups: scales cached too
        except RuntimeError:  # a model whose forward cannot be captured: time it eagerly, and say so
            graph = None
            torch.cuda.synchronize()
    tokens = [tok]
    _sync(dev)
    t0 = time.perf_counter()
    for i in range(new_tokens - 1):
        step_ids.copy_(tokens[-1])
        step_pos.fill_(prompt_len + i)
        if graph is not None:
            graph.replay()
            logits = out
        else:
            logits = step()
        tokens.append(logits[:, -1:].argmax(-1))
    _sync(dev)
    return torch.cat(tokens, 1), time.perf_counter() - t0, graph is not None


def _cache_tensors(cache) -> list[torch.Tensor]:
    """Every tensor a KV cache holds (keys, values, the position counters some versions keep on the device)."""
    out = []
    for obj in [cache, *getattr(cache, "layers", [])]:
        for v in vars(obj).values():
            for t in (v if isinstance(v, (list, tuple)) else [v]):
                if isinstance(t, torch.Tensor):
                    out.append(t)
    return out


@torch.no_grad()
def prefill_seconds(model, batch: int, seqlen: int, reps: int = 5, seed: int = 0, graphs: bool = True) -> dict:
    """Median time of one forward over (batch, seqlen) random tokens, keeping the last position's logits:
    {"seconds", "cuda_graphs"[, "eager_because"]}. With `graphs` (CUDA) the forward is captured once and
    replayed, so the time is the GPU's and not the Python launches' (an eager 32-block forward is hundreds of
    launches whose host-side stalls varied the W4A4 time by 50% between runs); it is timed eagerly where
    capture fails, and `eager_because` says why."""
    dev = next(model.parameters()).device
    ids = torch.randint(0, model.config.vocab_size, (batch, seqlen), generator=torch.Generator().manual_seed(seed))
    ids = ids.to(dev)

    def fwd():
        return model(input_ids=ids, use_cache=False, logits_to_keep=1).logits

    fwd()  # warm-up: kernels compiled, lazy buffers made
    run, used, why = fwd, False, None
    if graphs and dev.type == "cuda":
        try:
            run, used = _capture(fwd, 1)[0].replay, True
        except RuntimeError as e:  # a forward that cannot be captured: time it eagerly, and say why
            why = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        _sync(dev)
        t0 = time.perf_counter()
        run()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    out = {"seconds": statistics.median(times), "cuda_graphs": used}
    if why is not None:
        out["eager_because"] = why
    return out


def measure(model, batches=(1, 8, 32), prompt_len: int = 128, new_tokens: int = 256,
            prefills=((1, 4096), (8, 1024)), graphs: bool = True, compile: bool = False) -> dict:
    """Decode tokens/s per batch size, prefill seconds per (batch, seqlen), and peak device memory.
    `compile`: decode steps run the model's forward through torch.compile (runtime.compiled.compile: the FP4
    linears stay opaque ops, the compiler fuses the rest); prefill is one replayed CUDA graph (eager with
    graphs=False)."""
    dev = next(model.parameters()).device
    cuda = dev.type == "cuda"
    if compile:
        # every model's forward is one code object: drop the previous model's graphs, or their count reaches
        # dynamo's recompile limit (8) and later models silently run eagerly; they also hold that model's memory
        torch._dynamo.reset()
    if cuda:
        from ..kernels.siblings import fuse_siblings

        fuse_siblings(model)  # as runtime.load does: q/k/v and gate/up decode as one product
        gc.collect()  # a previous model's CUDA graphs and buffers, so the peak below is this model's
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    res = {"decode": {}, "prefill": {}, "compiled": compile}
    forward = None
    if compile:
        from ..runtime.compiled import compile as compile_fn

        forward = compile_fn(model.forward, dynamic=False)
    for b in batches:
        _, secs, used = decode(model, b, prompt_len, new_tokens, graphs, forward=forward)
        res["decode"][str(b)] = {"tokens_per_s": b * (new_tokens - 1) / secs, "cuda_graphs": used}
    for b, s in prefills:
        res["prefill"][f"{b}x{s}"] = prefill_seconds(model, b, s, graphs=graphs)
    res["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    res["weights_gib"] = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**30
    return res
