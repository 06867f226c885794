"""The baselines the PRoLoRA paper compares against (Section 4.1, Table 2): Tied LoRA and VeRA.

* :mod:`~prolora.baselines.tied_lora`: Tied-LoRA (Renduchintala et al., 2023), a PEFT tuner of this package;
  importing :mod:`prolora.baselines` registers it with PEFT, so ``get_peft_model``, ``save_pretrained``,
  ``PeftModel.from_pretrained`` and the HF Trainer work with it as with LoRA.
* :mod:`~prolora.baselines.vera`: VeRA (Kopiczko et al., 2023) through PEFT's own ``VeraConfig``.

See ``docs/baselines.md``.
"""

from .tied_lora import (
    TIED_LORA,
    TiedLoRAConfig,
    TiedLoRALinear,
    TiedLoRAModel,
    apply_tied_lora,
    load_tied_lora,
    make_tied_lora_config,
    register,
    tied_lora_param_count,
)
from .vera import PAPER_TARGET_MODULES, VeraCounts, make_vera_config, vera_param_counts

register()

__all__ = [
    "PAPER_TARGET_MODULES",
    "TIED_LORA",
    "TiedLoRAConfig",
    "TiedLoRALinear",
    "TiedLoRAModel",
    "VeraCounts",
    "apply_tied_lora",
    "load_tied_lora",
    "make_tied_lora_config",
    "make_vera_config",
    "register",
    "tied_lora_param_count",
    "vera_param_counts",
]
