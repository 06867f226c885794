"""Model-level entry points: build a PRoLoRA model, and export a PRoLoRA adapter as a dense LoRA."""

from __future__ import annotations

import torch

from .config import PRoLoRAConfig


def get_prolora_model(model: torch.nn.Module, config: PRoLoRAConfig, adapter_name: str = "default", **kwargs):
    """Wrap ``model`` with a PRoLoRA adapter; returns a ``peft.PeftModel`` (same API as LoRA's).

    Equivalent to ``peft.get_peft_model(model, config, adapter_name)``. Only the compact tensors
    (A_0, B_0, A_u, B_u of each targeted module) are trainable.

    Raises:
        TypeError: if ``config`` is not a :class:`PRoLoRAConfig`.
        ValueError: if r/u/m/n do not fit a targeted module (the message names it).
    """
    from peft import get_peft_model

    if not isinstance(config, PRoLoRAConfig):
        raise TypeError(f"config must be a PRoLoRAConfig, got {type(config).__name__}.")
    return get_peft_model(model, config, adapter_name=adapter_name, **kwargs)
