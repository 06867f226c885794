"""Training on the Hugging Face Trainer, and the ``train`` / ``generate`` / ``chat`` commands.

- :mod:`.config` — :class:`TrainConfig`: the run's settings (paper Appendix A.2 defaults), flags and files.
- :mod:`.run` — :func:`train`: data, model, adapter, Trainer, outputs and summary.
- :mod:`.trainer` — atomic checkpoints, the JSONL log, stopping on SIGINT/SIGTERM.
- :mod:`.generation` — loading a base model with saved adapters and generating replies.
- :mod:`.files` — atomic writes.
- ``train_cmd``, ``generate_cmd``, ``chat_cmd`` — the command-line entry points.

Importing this package is light: torch and transformers are imported when a function runs.
"""

from .config import TrainConfig
from .run import train

__all__ = ["TrainConfig", "train"]
