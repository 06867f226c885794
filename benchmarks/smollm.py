"""The embedded SmolLM2-135M-Instruct and the three adapters the model-level sections compare.

Adapters go on every linear layer of the transformer blocks (q, k, v, o, gate, up, down), as in the
paper (Section 4.1), with ``lora_alpha = 16``:

* ``LoRA r=8`` — the same rank as PRoLoRA;
* ``PRoLoRA r=8`` — the paper's Table 2 setting: u = 1, m = n = 7;
* ``LoRA r=2`` — the same trainable-parameter budget as ``PRoLoRA r=8`` (the paper's Table 2 pair).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VARIANTS = ("LoRA r=8", "PRoLoRA r=8", "LoRA r=2")


@functools.lru_cache(maxsize=1)
def base_model() -> torch.nn.Module:
    """The embedded SmolLM2-135M-Instruct in float32 (loaded once per process; about 20 s)."""
    from prolora.base_models import load_model

    model = load_model()
    model.requires_grad_(False)
    return model


@functools.lru_cache(maxsize=1)
def tokenizer():
    from prolora.base_models import load_tokenizer

    return load_tokenizer()


def adapter_config(variant: str, dropout: float = 0.0):
    """The PEFT config of ``variant`` (one of :data:`VARIANTS`)."""
    from peft import LoraConfig

    import prolora

    if variant == "PRoLoRA r=8":
        return prolora.PRoLoRAConfig(
            r=8,
            unshared_r=1,
            sharing_rate_a=7,
            sharing_rate_b=7,
            lora_alpha=16,
            lora_dropout=dropout,
            target_modules=TARGETS,
        )
    rank = {"LoRA r=8": 8, "LoRA r=2": 2}[variant]
    return LoraConfig(r=rank, lora_alpha=16, lora_dropout=dropout, target_modules=TARGETS)


def frozen_sharing_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` that shares every tensor not requiring grad (frozen weights, buffers).

    Several variants of the 135M model then cost one set of frozen weights, not one each (the machine is
    shared and has a few GiB free). Only for variants that never write the frozen weights: merging does,
    so merged variants use a full ``copy.deepcopy``.
    """
    shared = [t for t in (*model.parameters(), *model.buffers()) if not t.requires_grad]
    return copy.deepcopy(model, memo={id(t): t for t in shared})


def wrap(model: torch.nn.Module, variant: str, dropout: float = 0.0, copy_base: bool = True):
    """``variant``'s adapter on (a frozen-sharing copy of) ``model``; returns the ``PeftModel``."""
    from peft import get_peft_model

    import prolora  # noqa: F401  (registers PRoLoRA with PEFT)

    target = frozen_sharing_copy(model) if copy_base else model
    return get_peft_model(target, adapter_config(variant, dropout))


def trainable_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_base(model: torch.nn.Module, directory: Path) -> None:
    """Write ``model`` as ``config.json`` + ``state.pt`` (the GGUF-loaded model refuses save_pretrained)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(directory)
    torch.save(model.state_dict(), directory / "state.pt")


def load_saved_base(directory: Path) -> torch.nn.Module:
    """Inverse of :func:`save_base`: a few seconds instead of the GGUF's 20."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(directory), dtype=torch.float32)
    model.load_state_dict(torch.load(directory / "state.pt"), assign=True)
    model.tie_weights()
    model.requires_grad_(False)
    return model
