"""Shared fixtures: tiny random models (fast) and the real embedded model (slow, loaded once)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _model_cache_in_tmp(tmp_path_factory):
    """De-quantized GGUF copies built by tests go to a temporary folder, not the user's cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv("PROLORA_CACHE", str(tmp_path_factory.mktemp("prolora-cache")))
    yield
    patch.undo()


def make_tiny_llama(seed: int = 0, **overrides):
    """A 2-layer Llama with SmolLM2's proportions (GQA: k/v project to 1/3 of the hidden size)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = {
        "vocab_size": 128,
        "hidden_size": 48,
        "intermediate_size": 80,
        "num_hidden_layers": 2,
        "num_attention_heads": 6,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
    }
    cfg.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


def make_tiny_gpt2(seed: int = 0):
    """A 2-layer GPT-2 (its projections are transformers ``Conv1D``)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=48, n_layer=2, n_head=4, n_positions=64)).eval()


def make_tiny_opt(seed: int = 0):
    """A 2-layer OPT: its fc1/fc2 see the batch flattened to (batch·seq, hidden) rows."""
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    config = OPTConfig(
        vocab_size=128,
        hidden_size=32,
        ffn_dim=56,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        word_embed_proj_dim=32,
    )
    return OPTForCausalLM(config).eval()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one torch thread is fastest (a second one only waits, and spins on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture
def tiny_gpt2():
    return make_tiny_gpt2()


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded SmolLM2-135M-Instruct (model, tokenizer); about 20 s to load on 2 cores."""
    from prolora.base_models import load_model, load_tokenizer

    return load_model(), load_tokenizer()
