"""Instruction data: readers, the Tulu chat format with assistant-only loss masks, and the embedded set.

- :mod:`.readers` — JSONL ``messages`` / Alpaca files, Hugging Face dataset names, the embedded set.
- :mod:`.chat` — rendering a conversation and tokenizing it with labels on assistant tokens only.
- :mod:`.dataset` — tokenized train / held-out ``datasets.Dataset`` splits for the Trainer.
- :mod:`.loss` — the token-weighted loss of a model on such a split (held-out loss, ``prolora eval``).
- ``embedded/`` — a small FLAN v2 CoT instruction set (see ``embedded/SOURCE.md``), built by
  :mod:`.build_embedded`.
"""

from .chat import CHAT_FORMATS, IGNORE_INDEX, encode, render
from .dataset import SourceRecords, Splits, load_splits, read_sources, tokenize_records
from .loss import token_loss
from .readers import Issue, Record, read_source, to_messages

__all__ = [
    "CHAT_FORMATS",
    "IGNORE_INDEX",
    "Issue",
    "Record",
    "SourceRecords",
    "Splits",
    "encode",
    "load_splits",
    "read_source",
    "read_sources",
    "render",
    "to_messages",
    "token_loss",
    "tokenize_records",
]
