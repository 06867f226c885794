"""prolora: PRoLoRA (Wang et al., "Partial Rotation Empowers More Parameter-Efficient LoRA", ACL 2024).

``import prolora`` registers PRoLoRA (and the Tied-LoRA baseline) with PEFT (see
:mod:`prolora.tuner.registration`), so ``peft.get_peft_model(model, PRoLoRAConfig(...))`` and
``PeftModel.from_pretrained`` work as for LoRA. ``docs/architecture.md`` maps the package.

Importing the package is cheap (the ``prolora`` command answers ``--help`` without loading torch): the
public names below are loaded on first use (PEP 562), and registration happens as soon as PEFT is
loaded — at once when ``peft`` is already imported, else right after the first ``import peft`` (a
post-import hook on that one module name). A PRoLoRA adapter can only be loaded through PEFT, so it is
always registered by then. ``import prolora.tuner`` (or ``prolora.baselines``) registers too.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import logging
import sys

# bitsandbytes (imported by peft) warns on every CPU import that it cannot fetch an optional kernel from
# the Hugging Face hub; its fallback kernel is used and nothing is wrong, so keep the warning out of sight.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__version__ = "0.1.0"

# public name -> module that defines it (loaded on first access)
_EXPORTS = {
    "PROLORA": "prolora.tuner",
    "PRoLoRAConfig": "prolora.tuner",
    "PRoLoRALayer": "prolora.tuner",
    "PRoLoRALinear": "prolora.tuner",
    "PRoLoRAModel": "prolora.tuner",
    "get_prolora_model": "prolora.tuner",
    "export_lora": "prolora.format",
}
__all__ = [
    "PROLORA",
    "PRoLoRAConfig",
    "PRoLoRALayer",
    "PRoLoRALinear",
    "PRoLoRAModel",
    "export_lora",
    "get_prolora_model",
]
_REGISTERING = ("prolora.tuner", "prolora.baselines")  # each registers its method with PEFT when imported


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prolora' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


def _register_with_peft() -> None:
    """Import the modules that register PRoLoRA and Tied-LoRA with PEFT. One already being imported (it
    imported peft, which called this) is skipped: it registers when its own import finishes."""
    for name in _REGISTERING:
        if name not in sys.modules:
            importlib.import_module(name)


class _RegisterAfterPeft(importlib.abc.MetaPathFinder):
    """Finds nothing itself; for ``peft`` it hands back the spec the other finders give, with a loader that
    runs :func:`_register_with_peft` once ``peft/__init__`` has executed. ``find_spec`` alone (as
    ``importlib.util.find_spec("peft")`` in transformers' availability checks) changes nothing."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "peft":
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _ThenRegister(spec.loader, self)
                return spec
        return None


class _ThenRegister(importlib.abc.Loader):
    def __init__(self, loader, finder: _RegisterAfterPeft):
        self.loader, self.finder = loader, finder

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.loader  # peft keeps its own loader
        self.loader.exec_module(module)
        if self.finder in sys.meta_path:
            sys.meta_path.remove(self.finder)
        _register_with_peft()


if "peft" in sys.modules:
    _register_with_peft()
elif not any(isinstance(finder, _RegisterAfterPeft) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterPeft())
