"""prolora: PRoLoRA (Wang et al., "Partial Rotation Empowers More Parameter-Efficient LoRA", ACL 2024).

``import prolora`` registers PRoLoRA with PEFT (see :mod:`prolora.peft_shim`), so
``peft.get_peft_model(model, PRoLoRAConfig(...))`` and ``PeftModel.from_pretrained`` work as for LoRA.
"""

import logging

# bitsandbytes (imported by peft) warns on every CPU import that it cannot fetch an optional kernel from
# the Hugging Face hub; its fallback kernel is used and nothing is wrong, so keep the warning out of sight.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from .config import PRoLoRAConfig
from .layer import PRoLoRALayer, PRoLoRALinear
from .model import PRoLoRAModel
from .peft_shim import PROLORA, register

register()

from . import baselines  # noqa: F401  (registers the Tied-LoRA baseline with peft too)
from .api import get_prolora_model
from .io import export_lora

__all__ = ["PROLORA", "PRoLoRAConfig", "PRoLoRALayer", "PRoLoRALinear", "PRoLoRAModel", "export_lora",
           "get_prolora_model"]
__version__ = "0.1.0"
