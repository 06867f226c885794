"""prolora: PRoLoRA (Wang et al., "Partial Rotation Empowers More Parameter-Efficient LoRA", ACL 2024).

``import prolora`` registers PRoLoRA with PEFT (see :mod:`prolora.tuner.registration`), so
``peft.get_peft_model(model, PRoLoRAConfig(...))`` and ``PeftModel.from_pretrained`` work as for LoRA.
``docs/architecture.md`` maps the package.
"""

import logging

# bitsandbytes (imported by peft) warns on every CPU import that it cannot fetch an optional kernel from
# the Hugging Face hub; its fallback kernel is used and nothing is wrong, so keep the warning out of sight.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from .tuner import (
           PROLORA,
           PRoLoRAConfig,
           PRoLoRALayer,
           PRoLoRALinear,
           PRoLoRAModel,
           get_prolora_model,
           register,
)

register()

from . import baselines  # noqa: F401  (registers the Tied-LoRA baseline with peft too)
from .format import export_lora

__all__ = ["PROLORA", "PRoLoRAConfig", "PRoLoRALayer", "PRoLoRALinear", "PRoLoRAModel", "export_lora",
           "get_prolora_model"]
__version__ = "0.1.0"
