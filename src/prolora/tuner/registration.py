"""Registration shim: make stock PEFT know PRoLoRA (tested against peft 0.21.2).

What it does, and nothing else:

* ``PROLORA`` (defined in :mod:`.config`) is a one-member ``str`` enum. PEFT's ``register_peft_method`` refuses names missing from its
  closed ``PeftType`` enum, so we do not call it; instead we add our entries to the four plain dicts it
  would fill (``peft.mapping.PEFT_TYPE_TO_{CONFIG,TUNER,PREFIX,MIXED_MODEL}_MAPPING``, where it
  fills the mixed one only for mixed-compatible methods, which we are not). Being a ``str`` that equals
  ``"PROLORA"`` (and hashes like it), the key is found both by our config object and by the plain string
  read back from ``adapter_config.json``; being an enum member, it has the ``.value`` that a few PEFT code
  paths read.
* No PEFT function or class is patched.

After ``import prolora``: ``peft.get_peft_model(model, PRoLoRAConfig(...))``, ``PeftModel.from_pretrained``,
``PeftConfig.from_pretrained`` and transformers' ``model.load_adapter`` work with PRoLoRA adapters.
"""

from __future__ import annotations

from .config import PREFIX, PROLORA, PRoLoRAConfig
from .model import PRoLoRAModel


def register() -> None:
    """Add PRoLoRA to PEFT's method mappings. Idempotent; raises if another method took the name/prefix."""
    from peft import mapping

    wanted = [
        (mapping.PEFT_TYPE_TO_CONFIG_MAPPING, PRoLoRAConfig),
        (mapping.PEFT_TYPE_TO_TUNER_MAPPING, PRoLoRAModel),
        (mapping.PEFT_TYPE_TO_PREFIX_MAPPING, PREFIX),
    ]
    for table, value in wanted:
        current = table.get(PROLORA)
        if current is not None and current is not value:
            raise RuntimeError(
                f"peft already maps {PROLORA.value!r} to {current!r}; cannot register PRoLoRA."
            )
    if any(p == PREFIX for k, p in mapping.PEFT_TYPE_TO_PREFIX_MAPPING.items() if k != PROLORA):
        raise RuntimeError(f"another PEFT method already uses the parameter prefix {PREFIX!r}.")
    for table, value in wanted:
        table[PROLORA] = value
