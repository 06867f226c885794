"""The PRoLoRA equations as pure tensor functions (no modules, no I/O). See ``equations.py``."""

from .equations import trainable_params

__all__ = ["trainable_params"]
