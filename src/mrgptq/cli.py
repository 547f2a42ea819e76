"""mrgptq command line: quantize, eval, export, generate, inspect.

Every user error is one line on stderr and exit code 2; no traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from . import __version__

# MrgptqError (and ValueError, its base) is bad input; OSError is the environment (missing path, full disk).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)
EXIT_USAGE = 2
DEMO_WINDOWS = 40


def _fmt_table(headers, rows) -> str:
    cols = [[str(h)] + [str(r[i]) for r in rows] for i, h in enumerate(headers)]
    widths = [max(len(c) for c in col) for col in cols]

    def line(cells):
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _torch_setup(threads: int | None):
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch


def _device(arg: str | None) -> str:
    import torch

    if arg:
        return arg
    return "cuda" if torch.cuda.is_available() else "cpu"


# ----------------------------------------------------------------------------------------------- quantize
def add_quant_args(p: argparse.ArgumentParser) -> None:
    from .algorithms import METHODS
    from .formats import FORMAT_NAMES, SCALE_RULES
    from .formats.scales import ONLINE_RULES
    from .transforms import TRANSFORMS

    p.add_argument("model", nargs="?", help="HF hub id, local model dir or .gguf file (default: built-in SmolLM2)")
    p.add_argument("--model", dest="model_opt", help="same as the positional MODEL")
    p.add_argument("--gguf", help="GGUF file name inside MODEL (or a path to one)")
    p.add_argument("--format", default="mxfp4", choices=FORMAT_NAMES, help="weight format (default mxfp4)")
    p.add_argument("--method", default="mr-gptq", choices=METHODS, help="algorithm (default mr-gptq)")
    p.add_argument("--group-size", type=int, help="override the format's group size")
    p.add_argument("--scale-rule", choices=SCALE_RULES,
                   help="group scale rule (default: mse for mr-gptq, spec otherwise; four-thirds: the reference's "
                        "MXFP4 4/3 trick)")
    p.add_argument("--transform", choices=TRANSFORMS, help="input rotation (default: hadamard for mr-gptq)")
    p.add_argument("--transform-block", type=int, help="rotation block size; 0 = whole input dim (default: group)")
    p.add_argument("--signs", action="store_true", help="random +-1 signs before the rotation")
    p.add_argument("--act-order", action="store_true", help="GPTQ act-order (static groups)")
    p.add_argument("--scales", choices=("static", "dynamic"),
                   help="choose group scales before the GPTQ loop (static) or when reached (dynamic)")
    p.add_argument("--damp", type=float, default=0.01, help="relative Hessian dampening (default 0.01)")
    p.add_argument("--qep", action="store_true",
                   help="quantization error propagation (with --w4a4, a smaller --qep-alpha such as 0.25)")
    p.add_argument("--qep-alpha", type=float, default=0.5, help="QEP propagation strength (default 0.5)")
    p.add_argument("--w4a4", action="store_true", help="also quantize activations (W4A4)")
    p.add_argument("--act-format", choices=FORMAT_NAMES, help="activation format for W4A4 (implies --w4a4)")
    p.add_argument("--act-scale-rule", choices=ONLINE_RULES,
                   help="W4A4 activation scale rule (default: rounded for MXFP4, as compressed-tensors/vLLM; spec "
                        "for NVFP4)")
    p.add_argument("--calib", default="builtin",
                   help="calibration text: builtin (shipped prose), a .txt/.jsonl path, or wikitext2|c4|fineweb-edu")
    p.add_argument("--nsamples", type=int, default=128, help="calibration windows (default 128)")
    p.add_argument("--seqlen", type=int, default=2048, help="calibration window length (default 2048)")
    p.add_argument("--seed", type=int, default=0)


def _config_from_args(a):
    from .algorithms import QuantConfig

    return QuantConfig(
        format=a.format, method=a.method, group_size=a.group_size, scale_rule=a.scale_rule, transform=a.transform,
        transform_block=a.transform_block, signs=a.signs, act_order=a.act_order, scales=a.scales, damp=a.damp,
        w4a4=a.w4a4 or a.act_format is not None or a.act_scale_rule is not None, act_format=a.act_format,
        act_scale_rule=a.act_scale_rule, qep=a.qep, qep_alpha=a.qep_alpha,
        seed=a.seed,
    ).resolved()


def _model_arg(a) -> str | None:
    if a.model and a.model_opt and a.model != a.model_opt:
        raise ValueError(f"two different models given ({a.model} and --model {a.model_opt}); pass one")
    return a.model or a.model_opt


def _default_out(model: str | None, cfg) -> Path:
    name = "smollm2-135m" if model is None else Path(model.rstrip("/")).name.removesuffix(".gguf")
    tag = f"{cfg.method}-{cfg.format}" + ("-qep" if cfg.qep else "") + ("-w4a4" if cfg.w4a4 else "")
    return Path("out") / f"{name}-{tag}"


def cmd_quantize(a) -> int:
    torch = _torch_setup(a.threads)
    from .model import calibration, loading
    from .model.pipeline import quantize_model
    from .runtime import checkpoint

    cfg = _config_from_args(a)
    model_id = _model_arg(a)
    if a.nsamples < 1 or a.seqlen < 8:
        raise ValueError(f"--nsamples must be >= 1 and --seqlen >= 8 (got {a.nsamples}, {a.seqlen})")
    out = Path(a.out) if a.out else _default_out(model_id, cfg)
    partial = out.with_name(out.name + ".partial")
    device = _device(a.device)
    builtin = model_id is None and a.gguf is None
    do_eval = a.eval if a.eval is not None else builtin
    if do_eval and builtin and a.max_windows is None:
        a.max_windows = DEMO_WINDOWS  # the demo stays short on a CPU; --max-windows 0 evaluates all 148
    if a.max_windows == 0:
        a.max_windows = None
    identity = {"config": cfg.to_dict(), "model": model_id or loading.DEFAULT_MODEL_NAME, "gguf": a.gguf,
                "calib": a.calib, "nsamples": a.nsamples, "seqlen": a.seqlen, "dtype": a.dtype}

    done = _existing_run(out, identity, a.overwrite)
    _check_writable(out)
    text = calibration.read_text(a.calib)
    calib_hash = calibration.text_sha256(text)
    identity["calib_sha256"] = calib_hash
    if partial.exists():
        prev = partial / "run.json"
        same = prev.is_file() and json.loads(prev.read_text()) == identity
        if not same and not a.overwrite:
            raise ValueError(f"{partial} holds an interrupted run with a different config; "
                             "re-run the same command to resume, or pass --overwrite to start over")
        if not same:
            shutil.rmtree(partial)

    print(f"mrgptq {__version__}: {cfg.label} of {identity['model']} on {device}", file=sys.stderr)
    dtype = getattr(torch, a.dtype)
    tok = loading.load_tokenizer(model_id, a.gguf)
    model = loading.load_model(model_id, a.gguf, dtype=dtype, trust_remote_code=a.trust_remote_code)
    from .model.pipeline import validate

    validate(model, cfg)  # unsupported architecture, group or block not dividing: fail before any work
    layout = _layout(a.export, cfg, model)
    ctx = getattr(model.config, "max_position_embeddings", None)
    if ctx and a.seqlen > ctx:
        raise ValueError(f"--seqlen {a.seqlen} exceeds the model's context ({ctx}); pass --seqlen {ctx} or less")

    results = {}
    eval_text = None
    if do_eval:
        from .eval import EvalError, load_eval_text

        try:
            eval_text = load_eval_text(a.eval_text)
        except EvalError as e:
            if a.eval:  # asked for explicitly: an error
                raise
            print(f"mrgptq: skipping the before/after perplexity: {e}", file=sys.stderr)
            do_eval = False
    if do_eval and not done:
        from .eval import perplexity

        results["unquantized"] = perplexity(model, tok, eval_text, a.eval_seqlen, a.max_windows, device)
        print(f"unquantized perplexity: {results['unquantized']['ppl']:.3f}", file=sys.stderr)

    if done:
        print(f"{out} already holds this exact run; nothing to do (pass --overwrite to redo it)", file=sys.stderr)
        model = None
    else:
        ids = calibration.sample_windows(tok, text, a.nsamples, a.seqlen, a.seed)
        saver = _PartialSaver(partial, identity)
        t0 = time.time()
        report = quantize_model(model, ids, cfg, device=device, batch_size=a.batch_size, progress=not a.quiet,
                                on_block=saver.save, saved_block=saver.load)
        elapsed = time.time() - t0
        meta = {
            "mrgptq_version": __version__, "config": cfg.to_dict(), "label": cfg.label, "model": identity["model"],
            "gguf": a.gguf, "calibration": {"source": a.calib, "sha256": calib_hash, "nsamples": a.nsamples,
                                            "seqlen": a.seqlen, "seed": a.seed},
            "dtype": a.dtype, "command": _command_line(),
            "layers": [{k: r[k] for k in ("layer", "shape", "rel_error")} for r in report],
            "versions": _versions(),
        }
        model.config.use_cache = True
        timings = {"total_seconds": round(elapsed, 1), "layers": report}
        checkpoint.save_checkpoint(model, tok, meta, out, extra_files={"timings.json": timings}, layout=layout)
        shutil.rmtree(partial, ignore_errors=True)
        print(f"quantized {len(report)} linears in {elapsed:.0f}s -> {out} ({layout} layout)", file=sys.stderr)
        _print_layer_summary(report)

    if do_eval:
        from .eval import perplexity
        from .runtime import load

        qmodel, qtok, meta = load(out, device=device)
        results[meta["label"]] = perplexity(qmodel, qtok or tok, eval_text, a.eval_seqlen, a.max_windows, device)
        rows = [[k, f"{v['ppl']:.3f}", v["windows"], v["seqlen"]] for k, v in results.items()]
        print(_fmt_table(["model", "wikitext2 ppl", "windows", "seqlen"], rows))
        (out / "eval.json").write_text(json.dumps({"wikitext2": results}, indent=2) + "\n")
    return 0


def _layout(asked: str, cfg, model) -> str:
    """The checkpoint layout for --export: checked against the recipe before any work is done."""
    from .export import check, default_layout
    from .model.arch import linear_in_features

    in_features = linear_in_features(model)
    if asked == "auto":
        return default_layout(cfg, in_features)
    check(cfg, asked, in_features)
    return asked


def _existing_run(out: Path, identity: dict, overwrite: bool) -> bool:
    """True if `out` already holds this exact run. Raises if it holds something else (unless overwrite)."""
    if not out.exists():
        return False
    meta_p = out / "mrgptq.json"
    if overwrite:
        return False
    if not meta_p.is_file():
        if out.is_dir() and not any(out.iterdir()):
            return False
        raise ValueError(f"--out {out} exists and is not an mrgptq checkpoint; choose another --out or pass --overwrite")
    meta = json.loads(meta_p.read_text())
    same = meta.get("config") == identity["config"] and meta.get("model") == identity["model"] and \
        meta.get("calibration", {}).get("nsamples") == identity["nsamples"] and \
        meta.get("calibration", {}).get("seqlen") == identity["seqlen"]
    if not same:
        raise ValueError(f"--out {out} holds a checkpoint with a different config; choose another --out "
                         "or pass --overwrite")
    return True


def _check_writable(out: Path) -> None:
    parent = out.parent if out.parent != Path("") else Path(".")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(f"--out {out} is under {probe}, which is a file; choose a directory path for --out")
    if not os.access(probe, os.W_OK):
        raise PermissionError(f"cannot write to {probe}; choose a writable --out")


class _PartialSaver:
    """Per-block state of an unfinished run, so a killed run continues from the next block."""

    def __init__(self, partial: Path, identity: dict):
        self.dir, self.identity = partial, identity

    def save(self, i, block, rows):
        from safetensors.torch import save_file

        from .runtime.checkpoint import CheckpointError, _state_dict, write_problem

        self.dir.mkdir(parents=True, exist_ok=True)
        run = self.dir / "run.json"
        if not run.exists():
            run.write_text(json.dumps(self.identity))
        tmp = self.dir / f".block_{i:04d}.tmp"
        try:
            save_file(_state_dict(block), str(tmp))
            (self.dir / f"block_{i:04d}.json").write_text(json.dumps(rows))
            os.replace(tmp, self.dir / f"block_{i:04d}.safetensors")  # the .safetensors marks the block done
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if not any(self.dir.glob("block_*.safetensors")):  # nothing worth resuming: leave nothing behind
                shutil.rmtree(self.dir, ignore_errors=True)
            raise CheckpointError(f"could not save block {i} to {self.dir}: {write_problem(e)}; blocks saved so far "
                                  "are kept: re-run the same command to resume") from None

    def load(self, i):
        from .runtime.checkpoint import _read_tensors

        st = self.dir / f"block_{i:04d}.safetensors"
        js = self.dir / f"block_{i:04d}.json"
        if not (st.is_file() and js.is_file()):
            return None
        try:
            return _read_tensors(st), json.loads(js.read_text())
        except (ValueError, json.JSONDecodeError):
            return None  # a damaged partial block is simply redone


def _print_layer_summary(report):
    import statistics

    by_kind = {}
    for r in report:
        by_kind.setdefault(r["layer"].rsplit(".", 1)[-1], []).append(r["rel_error"])
    rows = [[k, f"{statistics.mean(v):.4f}", f"{max(v):.4f}"] for k, v in by_kind.items()]
    print(_fmt_table(["linear", "mean rel. output error", "max"], rows), file=sys.stderr)


_ARGV: list[str] = []


def _command_line() -> str:
    import shlex

    return " ".join(["mrgptq"] + [shlex.quote(x) for x in _ARGV])


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "transformers", "safetensors", "compressed-tensors"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


# ----------------------------------------------------------------------------------------------- eval
def cmd_eval(a) -> int:
    _torch_setup(a.threads)
    from .eval import load_eval_text, perplexity
    from .model import loading
    from .runtime import load
    from .runtime.checkpoint import META

    targets = list(a.models or []) + ([a.model_opt] if a.model_opt else []) + list(a.compare or [])
    if not targets:
        targets = [None]
    device = _device(a.device)
    text = load_eval_text(a.eval_text)
    results = {}
    for t in targets:
        if t is not None and (Path(t) / META).is_file():
            model, tok, meta = load(t, device=device)
            name = f"{meta['label']} ({t})"
        else:
            tok = loading.load_tokenizer(t, a.gguf)
            model = loading.load_model(t, a.gguf)
            name = f"unquantized ({t or loading.DEFAULT_MODEL_NAME})"
        results[name] = {"wikitext2": perplexity(model, tok, text, a.seqlen, a.max_windows, device,
                                                  progress=not a.quiet)}
        if a.tasks:
            from .eval.tasks import run_tasks

            results[name].update(run_tasks(model, tok, a.tasks.split(","), limit=a.limit))
        del model
    task_names = a.tasks.split(",") if a.tasks else []
    rows = [[k, f"{v['wikitext2']['ppl']:.3f}", v["wikitext2"]["windows"], v["wikitext2"]["tokens"]]
            + [f"{v[t]['acc']:.4f}" for t in task_names if t in v] for k, v in results.items()]
    print(_fmt_table(["model", "wikitext2 ppl", "windows", "tokens", *task_names], rows))
    if a.json:
        payload = next(iter(results.values())) if len(results) == 1 else results
        Path(a.json).write_text(json.dumps(payload, indent=2) + "\n")
    if a.plot:
        _bar_plot(results, a.plot)
    return 0


def _bar_plot(results: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'mrgptq[eval]'") from None
    names = list(results)
    vals = [results[n]["wikitext2"]["ppl"] for n in names]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(names)), 3.5))
    ax.bar(range(len(names)), vals, color="#4a7dbf")
    ax.set_xticks(range(len(names)), [n.split(" (")[0] for n in names], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("WikiText-2 perplexity")
    for i, v in enumerate(vals):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ----------------------------------------------------------------------------------------------- export
def cmd_export(a) -> int:
    _torch_setup(a.threads)
    from .runtime import load
    from .runtime.checkpoint import read_meta, save_checkpoint

    src, out = Path(a.checkpoint), Path(a.out)
    read_meta(src)  # a clear error before anything else if it is not a checkpoint
    if out.resolve() == src.resolve():
        raise ValueError("--out must differ from the checkpoint being converted")
    if out.exists() and not a.overwrite:
        raise ValueError(f"--out {out} exists; choose another directory or pass --overwrite")
    _check_writable(out)
    model, tok, meta = load(src)
    meta = {**meta, "exported_from": str(src), "export_command": _command_line()}
    meta.pop("layout", None)
    save_checkpoint(model, tok, meta, out, layout=a.to)
    print(f"{src} -> {out} ({a.to} layout)", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------- generate
def cmd_generate(a) -> int:
    torch = _torch_setup(a.threads)
    from .runtime import load

    device = _device(a.device)
    model, tok, _ = load(a.checkpoint, device=device)
    if tok is None:
        raise ValueError(f"{a.checkpoint} has no tokenizer files; re-export it with mrgptq export")
    if a.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {a.max_new_tokens}")
    chat = getattr(tok, "chat_template", None) and not a.raw
    if chat:
        ids = tok.apply_chat_template([{"role": "user", "content": a.prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tok(a.prompt, return_tensors="pt")["input_ids"]
    ids = ids.to(device)
    torch.manual_seed(a.seed)
    sample = a.temperature > 0
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.max_new_tokens,
                             do_sample=sample, temperature=a.temperature if sample else None,
                             top_p=None, top_k=None, pad_token_id=tok.pad_token_id or tok.eos_token_id)
    print(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return 0


# ----------------------------------------------------------------------------------------------- bench-e2e
def _pairs(text: str, flag: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item]
    except ValueError:
        raise ValueError(f"{flag} takes BATCHxSEQLEN items separated by commas, e.g. 1x4096,8x1024") from None


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise ValueError(f"{flag} takes integers separated by commas, e.g. 1,8,32") from None


def cmd_bench_e2e(a) -> int:
    torch = _torch_setup(a.threads)
    from .algorithms import QuantConfig
    from .eval import speed
    from .model.pipeline import quantize_data_free
    from .runtime.checkpoint import META

    device = _device(a.device)
    if a.device is None and device == "cpu":
        raise ValueError("bench-e2e measures GPU speed and no CUDA device is visible; pass --device cpu to run "
                         "it on the CPU anyway (slow, for checking the harness)")
    batches, prefills = _ints(a.batches, "--batches"), _pairs(a.prefill, "--prefill")
    target = a.model or "llama3-8b"
    ckpt = Path(target) if (Path(target) / META).is_file() else None
    if Path(target).exists():  # a checkpoint, a model directory or a config.json: its architecture
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(target)
        if hasattr(config, "quantization_config"):  # the bf16 baseline is built from it unquantized
            del config.quantization_config
    else:
        config = speed.llama_config(target)
    if a.layers:
        if ckpt is not None:
            raise ValueError("--layers trims random-weight models; a checkpoint is measured whole (drop --layers)")
        config.num_hidden_layers = a.layers
    dtype = torch.bfloat16 if device != "cpu" else torch.float32
    base_name = "bf16" if dtype == torch.bfloat16 else "fp32"
    variants = [(base_name, None)]
    if ckpt is None:
        variants += [(f"{f} W4A16", QuantConfig(format=f, method="rtn", transform="hadamard"))
                     for f in a.formats.split(",") if f]
        variants += [(f"{f} W4A4", QuantConfig(format=f, method="rtn", transform="hadamard", w4a4=True))
                     for f in a.w4a4_formats.split(",") if f]
    for _, cfg in variants:  # clear errors before minutes of building
        if cfg is not None:
            cfg.resolved()
    results = {}
    for name, cfg in variants:
        model = speed.random_model(config, device, dtype, seed=a.seed)
        if cfg is not None:
            quantize_data_free(model, cfg)
        print(f"measuring {name} ...", file=sys.stderr)
        results[name] = speed.measure(model, batches, a.prompt_len, a.new_tokens, prefills, graphs=not a.no_graphs,
                                      compile=a.compile)
        del model
    if ckpt is not None:
        from .runtime import load

        model, _, meta = load(ckpt, device=device, dtype=dtype)
        print(f"measuring {meta['label']} ...", file=sys.stderr)
        results[meta["label"]] = speed.measure(model, batches, a.prompt_len, a.new_tokens, prefills,
                                               graphs=not a.no_graphs, compile=a.compile)
        del model
    base = results[base_name]
    headers = ["model"] + [f"decode b{b} tok/s" for b in batches] + [f"prefill {b}x{s} ms" for b, s in prefills] + \
        ["weights GiB", "peak GiB"]
    rows = []
    for name, r in results.items():
        row = [name]
        for b in batches:
            v, v0 = r["decode"][str(b)]["tokens_per_s"], base["decode"][str(b)]["tokens_per_s"]
            row.append(f"{v:.1f}" + ("" if r is base else f" (x{v / v0:.2f})"))
        for b, s in prefills:
            v, v0 = r["prefill"][f"{b}x{s}"]["seconds"], base["prefill"][f"{b}x{s}"]["seconds"]
            row.append(f"{v * 1e3:.1f}" + ("" if r is base else f" (x{v0 / v:.2f})"))
        row.append(f"{r['weights_gib']:.2f}")
        row.append("-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}")
        rows.append(row)
    dev_name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    print(f"{target} ({config.num_hidden_layers} blocks) on {dev_name}; prompt {a.prompt_len}, "
          f"{a.new_tokens} new tokens; decode {'torch.compile + ' if a.compile else ''}"
          f"{'eager' if a.no_graphs else 'CUDA graphs'}; prefill {'eager' if a.no_graphs else 'one CUDA graph'}; "
          f"(xN) = speed-up over {base_name} in this run")
    print(_fmt_table(headers, rows))
    if a.json:
        import datetime

        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({
            "model": target, "blocks": config.num_hidden_layers, "device": dev_name, "command": _command_line(),
            "date": datetime.date.today().isoformat(), "versions": _versions(), "prompt_len": a.prompt_len,
            "new_tokens": a.new_tokens, "results": results}, indent=2) + "\n")
    return 0


# ----------------------------------------------------------------------------------------------- inspect
def cmd_inspect(a) -> int:
    from .runtime.checkpoint import WEIGHTS, read_meta

    meta = read_meta(a.checkpoint)
    size = (Path(a.checkpoint) / WEIGHTS).stat().st_size
    n_params = 0
    for r in meta.get("layers", []):
        o, i = r["shape"]
        n_params += o * i
    print(f"{a.checkpoint}: {meta.get('label')} of {meta.get('model')}")
    c = meta["config"]
    print(f"layout {meta.get('layout', 'mrgptq')}; format {c['format']} g{c['group_size']}, method {c['method']}, scale rule {c['scale_rule']}, "
          f"transform {c['transform']}/{c['transform_block']}, qep {c['qep']}, w4a4 {c['w4a4']}")
    print(f"weights file {size / 2**20:.1f} MiB; quantized linears hold {n_params / 1e6:.1f}M weights "
          f"({n_params * 2 / 2**20:.1f} MiB in bf16)")
    rows = [[r["layer"], f"{r['rel_error']:.4f}"] for r in meta.get("layers", [])]
    if rows:
        print(_fmt_table(["layer", "rel. output error"], rows))
    return 0


# ----------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    from .export import LAYOUTS

    p = _Parser(prog="mrgptq", description="MR-GPTQ quantization of causal LMs to MXFP4/NVFP4.")
    p.add_argument("--version", action="version", version=f"mrgptq {__version__}")
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser)

    def common(sp):
        sp.add_argument("--device", help="cpu or cuda (default: cuda if available)")
        sp.add_argument("--threads", type=int, help="CPU threads for torch")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")

    q = sub.add_parser("quantize", help="quantize a model and write a checkpoint")
    add_quant_args(q)
    q.add_argument("--out", help="output directory (default: out/<model>-<method>-<format>)")
    q.add_argument("--export", default="auto", choices=("auto", *LAYOUTS),
                   help="checkpoint layout (default auto: compressed-tensors where the recipe fits, else mrgptq)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing --out / partial run")
    q.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    q.add_argument("--batch-size", type=int, default=1, help="calibration windows per forward")
    q.add_argument("--trust-remote-code", action="store_true", help="allow custom model code (off by default)")
    q.add_argument("--eval", dest="eval", action="store_true", default=None,
                   help="evaluate perplexity before/after (default: on for the built-in model)")
    q.add_argument("--no-eval", dest="eval", action="store_false")
    q.add_argument("--eval-text", help="evaluation text file (default: WikiText-2 test)")
    q.add_argument("--eval-seqlen", type=int, default=2048)
    q.add_argument("--max-windows", type=int,
                   help=f"evaluate on the first N windows only (0 = all; built-in model: {DEMO_WINDOWS})")
    common(q)
    q.set_defaults(func=cmd_quantize)

    e = sub.add_parser("eval", help="WikiText-2 perplexity of models / checkpoints")
    e.add_argument("models", nargs="*", help="models or mrgptq checkpoints (default: built-in SmolLM2)")
    e.add_argument("--model", dest="model_opt")
    e.add_argument("--gguf")
    e.add_argument("--compare", nargs="+", help="more models/checkpoints for the same table")
    e.add_argument("--ppl", default="wikitext2", choices=("wikitext2",))
    e.add_argument("--seqlen", type=int, default=2048)
    e.add_argument("--max-windows", type=int, help="evaluate on the first N windows only")
    e.add_argument("--eval-text", help="text file in the WikiText-2 convention (default: WikiText-2 test)")
    e.add_argument("--tasks", help="comma-separated lm-eval tasks, e.g. arc_easy,hellaswag (extra 'eval', network)")
    e.add_argument("--limit", type=int, help="lm-eval: examples per task")
    e.add_argument("--json", help="write results as JSON")
    e.add_argument("--plot", help="write a bar plot (PNG) of perplexity")
    common(e)
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="convert a checkpoint to another layout")
    x.add_argument("checkpoint")
    x.add_argument("--to", required=True, choices=LAYOUTS, help="target layout")
    x.add_argument("--out", required=True, help="output directory")
    x.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    common(x)
    x.set_defaults(func=cmd_export)

    g = sub.add_parser("generate", help="generate text with a quantized checkpoint")
    g.add_argument("checkpoint")
    g.add_argument("prompt")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--raw", action="store_true", help="do not wrap the prompt in the tokenizer's chat template")
    common(g)
    g.set_defaults(func=cmd_generate)

    b = sub.add_parser("bench-e2e", help="decode/prefill speed of FP4 against bf16 (GPU)")
    b.add_argument("model", nargs="?", help="llama3-8b (default), llama3-70b, llama3-1b, a config.json or model dir "
                                            "(random weights), or an mrgptq checkpoint")
    b.add_argument("--formats", default="mxfp4,nvfp4", help="W4A16 formats to measure (default mxfp4,nvfp4)")
    b.add_argument("--w4a4-formats", default="mxfp4", help="W4A4 formats to measure (default mxfp4; '' for none)")
    b.add_argument("--batches", default="1,8,32", help="decode batch sizes (default 1,8,32)")
    b.add_argument("--prompt-len", type=int, default=128)
    b.add_argument("--new-tokens", type=int, default=256)
    b.add_argument("--prefill", default="1x4096,8x1024", help="prefill shapes BATCHxSEQLEN (default 1x4096,8x1024)")
    b.add_argument("--layers", type=int, help="use only the first N blocks (quick runs)")
    b.add_argument("--no-graphs", action="store_true", help="decode eagerly (no CUDA graphs)")
    b.add_argument("--compile", action="store_true",
                   help="decode steps through torch.compile for every model (FP4 linears stay opaque ops; norms, "
                        "rotary and residuals fuse), then CUDA graphs; compiling takes tens of seconds per model "
                        "and batch size")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--json", help="write results as JSON")
    common(b)
    b.set_defaults(func=cmd_bench_e2e)

    i = sub.add_parser("inspect", help="describe an mrgptq checkpoint")
    i.add_argument("checkpoint")
    i.set_defaults(func=cmd_inspect)
    return p


def _os_message(e: OSError) -> str:
    import errno

    from .runtime.checkpoint import write_problem

    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return f"{e.filename}: {write_problem(e)}"
    return f"cannot access {e.filename}: {(e.strerror or type(e).__name__).lower()}; check the path and its permissions"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what is wrong, where to look) and exit code 2."""

    def error(self, message):
        print(f"mrgptq: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    _ARGV[:] = argv
    a = parser.parse_args(argv)
    if a.cmd is None:
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, format="mrgptq: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return a.func(a)
    except USER_ERRORS as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, OSError) and e.filename:
            msg = _os_message(e)
        print(f"mrgptq: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mrgptq: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
