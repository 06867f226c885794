"""Inference: a base model with saved adapters answering prompts and conversations, and serving many.

* :mod:`.generation` — :class:`Generator`: load a base model and several adapters, greedy replies (used by
  ``prolora generate``, ``prolora chat`` and the evaluation).
* :mod:`.adapter_bank` — :class:`AdapterBank`: many PRoLoRA / LoRA adapters resident in compact form,
  applied per row of a batch in one batched operation per layer.
* :mod:`.registry` — :class:`AdapterRegistry`: known adapters, LRU residency under a cap, pins.
* :mod:`.engine` — :class:`Engine`: continuous batching, sampling, streaming, cancellation.
* :mod:`.server` — the OpenAI-compatible FastAPI app of ``prolora serve`` (imported on demand).
"""

from .adapter_bank import AdapterBank
from .engine import Engine, SamplingParams
from .generation import AdapterSpec, Generator, Reply, load_generator
from .registry import AdapterRegistry

__all__ = [
    "AdapterBank",
    "AdapterRegistry",
    "AdapterSpec",
    "Engine",
    "Generator",
    "Reply",
    "SamplingParams",
    "load_generator",
]
