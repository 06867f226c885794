"""Training on the Hugging Face Trainer (paper Appendix A.2); the command is :mod:`prolora.cli.train`.

- :mod:`.config` — :class:`TrainConfig`: the run's settings (paper Appendix A.2 defaults), flags and files.
- :mod:`.run` — :func:`train`: data, model, adapter, Trainer, outputs and summary.
- :mod:`.trainer` — atomic checkpoints, the JSONL log, stopping on SIGINT/SIGTERM.

Importing this package is light: torch and transformers are imported when a function runs.
"""

from .config import TrainConfig
from .run import train

__all__ = ["TrainConfig", "train"]
