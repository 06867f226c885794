"""Instruction data: readers, the Tulu chat format with assistant-only loss masks, and the embedded set.

- :mod:`.readers` — JSONL ``messages`` / Alpaca files, Hugging Face dataset names, the embedded set.
- :mod:`.chat` — rendering a conversation and tokenizing it with labels on assistant tokens only.
- :mod:`.dataset` — tokenized train / held-out ``datasets.Dataset`` splits for the Trainer.
- ``embedded/`` — a small FLAN v2 CoT instruction set (see ``embedded/SOURCE.md``), built by
  :mod:`.build_embedded`.
"""

from .chat import CHAT_FORMATS, IGNORE_INDEX, encode, render
from .dataset import Splits, load_splits, tokenize_records
from .readers import Issue, Record, read_source, to_messages

__all__ = ["CHAT_FORMATS", "IGNORE_INDEX", "Issue", "Record", "Splits", "encode", "load_splits", "read_source",
           "render", "to_messages", "tokenize_records"]
