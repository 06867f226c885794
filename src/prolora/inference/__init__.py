"""Inference: a base model with saved adapters answering prompts and conversations.

* :mod:`.generation` — :class:`Generator`: load a base model and several adapters, greedy replies (used by
  ``prolora generate``, ``prolora chat`` and the evaluation).
"""

from .generation import AdapterSpec, Generator, Reply, load_generator

__all__ = ["AdapterSpec", "Generator", "Reply", "load_generator"]
