"""Harness that points peft's own generic tuner tests at PRoLoRA (copied as ``conftest.py`` by
``scripts/peft_conformance.py``; not imported by prolora or its test suite).

What it changes in peft's test run, and nothing else (each is a *harness difference*, see
docs/peft-conformance.md):

* The case lists of peft's test modules (``TEST_CASES``, ``ALL_CONFIGS``, ...) are replaced by the PRoLoRA
  cases below (the runner inserts ``X = prolora_peft_cases.X`` lines into the copied test files).
* Only test items parametrized with a PRoLoRA case are kept; LoRA-/method-specific tests are deselected.
* The hub ids of the decoder tests are served by tiny random models built locally (same architectures,
  seeded, saved once under the cache directory); the hub is never contacted (``hub_online_once`` is a
  no-op, ``HF_HUB_OFFLINE=1``).
* ``diffusers`` (imported by peft's ``testing_common`` for Stable Diffusion tests that we do not run) is
  replaced by a stub module when it is not installed.
* ``--prolora-order=default|reverse|random:SEED`` reorders the selected items (order-independence check).
* For prolora sources without ``init_weights`` (``--src`` of an older commit, for "before" counts) peft's
  ``set_init_weights_false`` leaves PRoLoRA kwargs unchanged instead of adding ``init_weights=False``.
"""

from __future__ import annotations

import dataclasses
import os
import random
import sys
import types
from contextlib import contextmanager
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if "diffusers" not in sys.modules:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        _stub = types.ModuleType("diffusers")
        _stub.StableDiffusionPipeline = type("StableDiffusionPipeline", (), {})
        sys.modules["diffusers"] = _stub

import peft_tests.testing_utils as _testing_utils
import torch
from transformers import AutoModelForCausalLM

import prolora  # noqa: F401  (registers PRoLoRA with peft)
from prolora import PRoLoRAConfig

MODEL_DIR = Path(os.environ.get("PROLORA_CONFORMANCE_MODELS", Path(__file__).parent / "models"))


@contextmanager
def _offline(model_id: str):
    yield


_testing_utils.hub_online_once = _offline

if "init_weights" not in {f.name for f in dataclasses.fields(PRoLoRAConfig)}:
    # prolora sources from before issue 16 (``--src``, for the "before" counts) have no init_weights: peft's
    # helper would make every test that calls it fail at config construction, hiding what the test checks
    _original_set_init_weights_false = _testing_utils.set_init_weights_false

    def _set_init_weights_false(config_cls, kwargs):
        if config_cls is PRoLoRAConfig:
            return dict(kwargs)
        return _original_set_init_weights_false(config_cls, kwargs)

    _testing_utils.set_init_weights_false = _set_init_weights_false


def _tiny_config(model_id: str):
    import transformers as tf

    common = {"vocab_size": 1000, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    if "Llama" in model_id:
        return tf.LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            **common,
        )
    if "GPT2" in model_id:
        return tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, **common)
    if "OPT" in model_id:
        return tf.OPTConfig(
            hidden_size=32,
            ffn_dim=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            word_embed_proj_dim=32,
            max_position_embeddings=128,
            **common,
        )
    if "qwen2" in model_id:
        return tf.Qwen2Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            **common,
        )
    return None


def local_model_path(model_id: str) -> str:
    """A directory holding a seeded tiny random model of ``model_id``'s architecture (built once)."""
    config = _tiny_config(model_id)
    if config is None:
        return model_id
    path = MODEL_DIR / model_id.replace("/", "--")
    if not (path / "config.json").exists():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        tmp = path.with_name(path.name + ".tmp")
        model.save_pretrained(tmp)
        tmp.rename(path)
    return str(path)


_original_from_pretrained = AutoModelForCausalLM.from_pretrained.__func__


def _from_pretrained(cls, name, *args, **kwargs):
    if isinstance(name, str) and _tiny_config(name) is not None:
        name = local_model_path(name)
    return _original_from_pretrained(cls, name, *args, **kwargs)


AutoModelForCausalLM.from_pretrained = classmethod(_from_pretrained)


def _involves_prolora(item) -> bool:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return False
    for value in callspec.params.values():
        if value is PRoLoRAConfig or isinstance(value, PRoLoRAConfig):
            return True
        if isinstance(value, str) and "PRoLoRA" in value:
            return True
    return False


def pytest_addoption(parser):
    parser.addoption("--prolora-order", default="default", help="default | reverse | random:SEED")


def pytest_collection_modifyitems(config, items):
    keep = [item for item in items if _involves_prolora(item)]
    dropped = [item for item in items if not _involves_prolora(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    order = config.getoption("--prolora-order")
    if order == "reverse":
        keep.reverse()
    elif order.startswith("random"):
        random.Random(int(order.partition(":")[2] or 0)).shuffle(keep)
    items[:] = keep
