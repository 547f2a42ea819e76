"""Fuzzing checkpoint loading: mutate a valid checkpoint's bytes, safetensors header and JSON files; `load` must
either return a model whose tensors passed validation or raise CheckpointError, never anything else, never hang.

CI runs MRGPTQ_FUZZ_EXAMPLES (default 150) derandomized examples per layout; a long run:
    MRGPTQ_FUZZ_EXAMPLES=20000 MRGPTQ_FUZZ_RANDOM=1 python -m pytest -q tests/test_fuzz_checkpoint.py \
        --hypothesis-show-statistics
"""
import json
import os
import shutil
import signal
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mrgptq.algorithms import QuantConfig
from mrgptq.model.pipeline import quantize_model
from mrgptq.runtime import CheckpointError, load, save_checkpoint

EXAMPLES = int(os.environ.get("MRGPTQ_FUZZ_EXAMPLES", "150"))
SECONDS_PER_LOAD = 60
FILES = ("model.safetensors", "mrgptq.json", "config.json")
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.sampled_from([0, -1, 1, 3, 7, 10**9]),
                 st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                 st.lists(st.integers(-5, 5), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


@pytest.fixture(scope="module", params=["mrgptq", "compressed-tensors"])
def good(request, tmp_path_factory):
    """A valid 2-block NVFP4 W4A4 checkpoint (codes, E4M3 scales, global scales, rotations) in one layout."""
    cfg = QuantConfig(format="nvfp4", method="rtn", w4a4=True, transform="hadamard")
    m = tiny_llama(layers=2)
    quantize_model(m, torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0)), cfg, progress=False)
    d = tmp_path_factory.mktemp("fuzz") / request.param
    save_checkpoint(m, None, {"config": cfg.resolved().to_dict(), "dtype": "float32"}, d, layout=request.param)
    load(d)  # the unmutated checkpoint loads
    return d


def _mutate_bytes(data, blob: bytes) -> bytes:
    b = bytearray(blob)
    header_end = 8 + struct.unpack("<Q", blob[:8])[0] if len(blob) >= 8 else len(blob)
    kind = data.draw(st.sampled_from(["flip-header", "flip-data", "truncate", "length", "splice", "zero-run"]))
    rnd = data.draw(st.randoms(use_true_random=False))  # uniform positions (hypothesis favours small integers)
    if kind in ("flip-header", "flip-data"):
        lo, hi = (0, min(header_end, len(b))) if kind == "flip-header" else (min(header_end, len(b) - 1), len(b))
        for _ in range(data.draw(st.integers(1, 8))):
            b[rnd.randrange(lo, hi)] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        b = b[: data.draw(st.integers(0, len(b) - 1))]
    elif kind == "length":  # the 8-byte header length: the classic parser attack
        n = data.draw(st.sampled_from([0, 1, header_end - 9, header_end + 1, len(b), 2**31, 2**63 - 1, 2**64 - 1]))
        b[:8] = struct.pack("<Q", max(0, n) % 2**64)
    elif kind == "splice":
        i = rnd.randrange(0, len(b) + 1)
        b[i:i] = data.draw(st.binary(min_size=1, max_size=64))
    else:
        i = rnd.randrange(0, len(b))
        n = data.draw(st.integers(1, 256))
        b[i : i + n] = b"\x00" * len(b[i : i + n])
    return bytes(b)


def _mutate_json(data, text: str) -> str:
    if data.draw(st.booleans()):  # byte-level: broken syntax, odd unicode
        return _mutate_bytes(data, text.encode()).decode("utf-8", errors="replace")
    obj = json.loads(text)
    node, path = obj, []
    while isinstance(node, dict) and node:  # walk down a random path of keys, stop anywhere
        key = data.draw(st.sampled_from(sorted(node)))
        path.append((node, key))
        node = node[key]
        if not data.draw(st.booleans()):
            break
    parent, key = path[-1]
    if data.draw(st.integers(0, 3)) == 0:
        del parent[key]
    else:
        parent[key] = data.draw(JUNK)
    return json.dumps(obj)


def _alarm(*_):
    raise TimeoutError(f"load took longer than {SECONDS_PER_LOAD}s")


def fuzz_settings():
    return settings(max_examples=EXAMPLES, deadline=None, database=None,
                    derandomize=not os.environ.get("MRGPTQ_FUZZ_RANDOM"),
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@fuzz_settings()
@given(data=st.data())
def test_mutated_checkpoint_loads_or_raises_checkpoint_error(good, data):
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "c"
        shutil.copytree(good, d)
        name = data.draw(st.sampled_from(FILES))
        f = d / name
        if name.endswith(".json"):
            f.write_text(_mutate_json(data, f.read_text()))
        else:
            f.write_bytes(_mutate_bytes(data, f.read_bytes()))
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(SECONDS_PER_LOAD)
        try:
            model, _, _ = load(d)
        except CheckpointError as e:
            assert str(e) and "\n" not in str(e)
            event(f"{name}: refused")
            return
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        event(f"{name}: loaded")
        for k, t in model.state_dict().items():  # what loaded passed validation
            assert not t.is_floating_point() or torch.isfinite(t.float()).all(), k
