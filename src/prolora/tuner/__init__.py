"""The PRoLoRA PEFT tuner, in PEFT's own shape (``peft/tuners/<method>/``).

* :mod:`.config` — :class:`PRoLoRAConfig`, the knobs of Section 3.1;
* :mod:`.layer` — :class:`PRoLoRALayer` / :class:`PRoLoRALinear`, the compact tensors of each adapted module,
  their forward, ``get_delta_weight`` and merge (they call :mod:`prolora.equations`);
* :mod:`.model` — :class:`PRoLoRAModel`, where the layers go, and :func:`get_prolora_model`;
* :mod:`.registration` — the small shim that makes stock PEFT know ``peft_type="PROLORA"``.

Nothing here imports anything of prolora above :mod:`prolora.equations`. Importing this package registers
PRoLoRA with PEFT (``import prolora`` arranges that for every PEFT user, see :mod:`prolora`).
"""

from .config import PREFIX, PROLORA, PRoLoRAConfig, UnsupportedOptionError
from .layer import PRoLoRALayer, PRoLoRALinear
from .model import PRoLoRAModel, get_prolora_model, prolora_modules
from .registration import register

__all__ = [
    "PREFIX",
    "PROLORA",
    "PRoLoRAConfig",
    "PRoLoRALayer",
    "PRoLoRALinear",
    "PRoLoRAModel",
    "UnsupportedOptionError",
    "get_prolora_model",
    "prolora_modules",
    "register",
]

register()
