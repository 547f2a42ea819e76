"""Sequential block-by-block quantization of a whole causal LM.

For block i: run the calibration stream through it with hooks that accumulate each input-sharing group's
Hessian (never storing activations), quantize its linears, then hand block i+1 its inputs: the
full-precision outputs, or with QEP the quantized block's outputs on the quantized stream (while the
full-precision stream is carried alongside as QEP's target). Only one block is on the device at a time.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import formats
from ..algorithms import Hessian, LayerPlan, QuantConfig
from ..errors import MrgptqError
from ..runtime.qlinear import QuantLinear
from .arch import blocks, get_arch, get_module, set_module

log = logging.getLogger("mrgptq")


class _Caught(Exception):
    pass


class _Catcher(nn.Module):
    """Stands in for block 0 to record what the model feeds its first block."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.inputs, self.kwargs = [], None

    def forward(self, hidden_states, *args, **kwargs):
        self.inputs.append(hidden_states.detach())
        if self.kwargs is None:
            self.kwargs = kwargs
        raise _Caught


@dataclass
class BlockStream:
    """Calibration activations entering the current block: fp (full precision) and q (quantized model)."""

    fp: torch.Tensor
    q: torch.Tensor | None = None  # only with QEP
    kwargs: dict = field(default_factory=dict)


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


@torch.no_grad()
def first_block_inputs(model, calib_ids: torch.Tensor, device, batch_size: int = 1) -> BlockStream:
    layers = blocks(model)
    catcher = _Catcher(layers[0])
    layers[0] = catcher
    moved = []  # embeddings, rotary tables: everything of the decoder but its blocks
    inner = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    for name, mod in inner.named_children():
        if mod is not layers:
            mod.to(device)
            moved.append(mod)
    try:
        for i in range(0, calib_ids.shape[0], batch_size):
            try:
                model(calib_ids[i : i + batch_size].to(device), use_cache=False)
            except _Caught:
                pass
    finally:
        layers[0] = catcher.inner
        for mod in moved:
            mod.to("cpu")
    kwargs = {k: v for k, v in (catcher.kwargs or {}).items() if k not in ("past_key_values", "past_key_value")}
    kwargs["use_cache"] = False
    return BlockStream(fp=torch.cat(catcher.inputs).to("cpu"), kwargs=_to(kwargs, "cpu"))


def _run_block(block, x: torch.Tensor, kwargs: dict, device, batch_size: int) -> torch.Tensor:
    kw = _to(kwargs, device)
    outs = []
    for i in range(0, x.shape[0], batch_size):
        y = block(x[i : i + batch_size].to(device), **kw)
        outs.append((y[0] if isinstance(y, tuple) else y).to("cpu"))
    return torch.cat(outs)


def relative_output_error(W: torch.Tensor, Wq: torch.Tensor, H: torch.Tensor) -> float:
    """sqrt(tr(dW H dW^T) / tr(W H W^T)): the layer's relative output error on the calibration inputs."""
    d = (W - Wq).double()
    num = (d @ H.double() * d).sum()
    den = (W.double() @ H.double() * W.double()).sum().clamp_min(1e-30)
    return float((num / den).clamp_min(0).sqrt())


def quantize_block(block, cfg: QuantConfig, arch, stream: BlockStream, device, batch_size: int = 1,
                   block_index: int = 0, on_layer=None):
    """Quantize one decoder block in place. Returns (next stream, per-layer report rows)."""
    cfg = cfg.resolved()
    block.to(device)
    plans, hessians, handles = {}, {}, []
    stash = {}
    mode = {"m": "fp"}
    for group in arch.groups:
        lin = get_module(block, group[0])
        plan = LayerPlan.build(cfg, lin.in_features)
        hess = Hessian(lin.in_features, device, cross=cfg.qep)
        plans[group], hessians[group] = plan, hess

        def hook(mod, inp, plan=plan, hess=hess, key=group):
            x = inp[0]
            if cfg.qep and mode["m"] == "fp":
                stash[key] = plan.target_input(x)
                return
            if plan.act is not None:
                plan.act.observe(x)
            x_in = plan.layer_input(x)
            if not cfg.qep:
                hess.add(x_in)
            elif plan.act is not None:  # W4A4: QEP regresses on x^ R, before this layer's activation rounding
                hess.add(x_in, stash.pop(key), x_cross=plan.target_input(x))
            else:
                hess.add(x_in, stash.pop(key))

        handles.append(lin.register_forward_pre_hook(hook))

    t0 = time.time()
    with torch.no_grad():
        if cfg.qep:
            kw = _to(stream.kwargs, device)
            fp_out = []
            for i in range(0, stream.fp.shape[0], batch_size):
                mode["m"] = "fp"
                y = block(stream.fp[i : i + batch_size].to(device), **kw)
                fp_out.append((y[0] if isinstance(y, tuple) else y).to("cpu"))
                mode["m"] = "q"
                block(stream.q[i : i + batch_size].to(device), **kw)
            next_fp = torch.cat(fp_out)
        else:
            next_fp = _run_block(block, stream.fp, stream.kwargs, device, batch_size)
    for h in handles:
        h.remove()
    t_capture = time.time() - t0

    rows = []
    for group in arch.groups:
        plan, hess = plans[group], hessians[group]
        if plan.act is not None:
            plan.act.finalize()
        for name in group:
            t1 = time.time()
            lin = get_module(block, name)
            W = lin.weight.data.to(device)
            full = f"{arch.blocks}.{block_index}.{name}"
            if not torch.isfinite(W).all():
                raise MrgptqError(f"{full}: weight contains NaN/Inf; the model file is damaged")
            q = plan.quantize(W, hess, name=full)
            Wq = formats.dequantize(q)
            err = relative_output_error(plan.rotate_weight(W), Wq, hess.H)
            qlin = QuantLinear.from_quantized(q, lin.bias, plan.rotation, plan.act, dtype=W.dtype)
            set_module(block, name, qlin.to(device))
            row = {"layer": full, "rel_error": err, "seconds": round(time.time() - t1, 3),
                   "shape": list(W.shape)}
            rows.append(row)
            if on_layer:
                on_layer(row)
    del hessians
    with torch.no_grad():
        next_q = _run_block(block, stream.q, stream.kwargs, device, batch_size) if cfg.qep else None
    block.to("cpu")
    for r in rows:
        r["capture_seconds"] = round(t_capture, 3)
    return BlockStream(next_fp, next_q, stream.kwargs), rows


def quantize_model(model, calib_ids: torch.Tensor, cfg: QuantConfig, device="cpu", batch_size: int = 1,
                   progress: bool = True, on_block=None, saved_block=None):
    """Quantize every block of `model` in place; returns the per-layer report.

    on_block(i, block, rows) is called after each block (to save it); saved_block(i) may return
    (state_dict, rows) of a block finished by an earlier, interrupted run, which is then restored instead
    of re-quantized while the calibration streams are advanced exactly as before.
    """
    cfg = cfg.resolved()
    arch = get_arch(model)
    validate(model, cfg)
    if cfg.qep and cfg.w4a4 and cfg.qep_alpha > 0.25:
        log.warning(f"--qep with --w4a4 at alpha {cfg.qep_alpha} measured worse than no QEP on SmolLM2, alpha 0.25 "
                    "slightly better (README, QEP note): upstream errors are mostly activation rounding, which a "
                    "strong weight correction over-fits; consider --qep-alpha 0.25")
    model.config.use_cache = False
    layers = blocks(model)
    stream = first_block_inputs(model, calib_ids, device, batch_size)
    if cfg.qep:
        stream.q = stream.fp.clone()
    report = []
    bar = tqdm(total=len(layers), desc=cfg.label, unit="block", disable=not progress)
    for i, block in enumerate(layers):
        saved = saved_block(i) if saved_block is not None else None
        if saved is not None:
            state, rows = saved
            with torch.no_grad():
                block.to(device)
                next_fp = _run_block(block, stream.fp, stream.kwargs, device, batch_size)
                quantized_skeleton(block, cfg, arch)
                block.load_state_dict(state, strict=True)
                block.to(device)
                next_q = _run_block(block, stream.q, stream.kwargs, device, batch_size) if cfg.qep else None
                block.to("cpu")
            stream = BlockStream(next_fp, next_q, stream.kwargs)
            bar.set_postfix(resumed=i)
        else:
            stream, rows = quantize_block(block, cfg, arch, stream, device, batch_size, i)
            if on_block:
                on_block(i, block, rows)
            bar.set_postfix(err=f"{sum(r['rel_error'] for r in rows) / len(rows):.4f}")
        report.extend(rows)
        bar.update(1)
    bar.close()
    return report


def validate(model, cfg: QuantConfig) -> None:
    """Fail before any work if a linear cannot take this recipe (group or rotation block not dividing)."""
    cfg = cfg.resolved()
    arch = get_arch(model)
    block = blocks(model)[0]
    for name in arch.linears:
        k = get_module(block, name).in_features
        if k % cfg.group_size:
            ok = [g for g in (16, 32, 64, 128) if k % g == 0]
            raise MrgptqError(f"input dim {k} of {name} is not divisible by group size {cfg.group_size}; "
                             f"choose a --group-size that divides it (e.g. {', '.join(map(str, ok))})")
        LayerPlan.build(cfg, k)  # raises a clear RotationError for an impossible rotation block
    for name, t in model.named_parameters():  # a damaged model fails here, not hours later at its block
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise MrgptqError(f"{name} contains {int((~torch.isfinite(t)).sum())} NaN/Inf values; the model "
                              "file is damaged: re-download or re-convert it")


def quantized_skeleton(module: nn.Module, cfg: QuantConfig, arch, prefix: str = "") -> None:
    """Replace the arch's linears in `module` (a block, or the whole model) by empty QuantLinears."""
    cfg = cfg.resolved()
    targets = [f"{prefix}{n}" for n in arch.linears]
    for name in targets:
        lin = get_module(module, name)
        if isinstance(lin, QuantLinear):
            continue
        plan = LayerPlan.build(cfg, lin.in_features)
        q = QuantLinear(lin.in_features, lin.out_features, lin.bias is not None, cfg.spec, plan.rotation,
                        plan.act.spec if plan.act else None, dtype=lin.weight.dtype,
                        global_scale=cfg.weight_global_scale, act_rule=cfg.act_scale_rule or "spec")
        set_module(module, name, q)


@torch.no_grad()
def quantize_data_free(model, cfg: QuantConfig, device=None) -> None:
    """RTN of every block's linears with no calibration (speed benchmarks, quick previews).

    Activation scales that must be calibrated (NVFP4's per-tensor global scale in W4A4) cannot be set
    without data, so that recipe is refused."""
    cfg = cfg.resolved()
    if cfg.method != "rtn" or cfg.qep:
        raise MrgptqError(f"data-free quantization is RTN only, got {cfg.label}; calibrate for {cfg.method}")
    if cfg.w4a4 and formats.get_spec(cfg.act_format).global_scale:
        raise MrgptqError(f"{cfg.act_format} activations need a calibrated global scale; use mxfp4 or calibrate")
    validate(model, cfg)
    arch = get_arch(model)
    for block in blocks(model):
        for name in arch.linears:
            lin = get_module(block, name)
            plan = LayerPlan.build(cfg, lin.in_features)
            W = lin.weight.data if device is None else lin.weight.data.to(device)
            q = plan.quantize(W, None, name=name)
            set_module(block, name, QuantLinear.from_quantized(q, lin.bias, plan.rotation, plan.act,
                                                               dtype=lin.weight.dtype).to(W.device))
            del lin, W, q
