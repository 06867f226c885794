"""From data sources to tokenized ``datasets.Dataset`` splits with loss masks, ready for the Trainer.

Columns: ``input_ids``, ``attention_mask`` and ``labels`` (−100 outside assistant turns; see
:mod:`prolora.data.chat`).
Over-long records are truncated to ``max_length`` tokens (Appendix A.2: "truncates samples if
necessary") and reported; a record with no assistant token left after truncation is skipped and reported.
"""

from __future__ import annotations

from dataclasses import dataclass

from .chat import IGNORE_INDEX, encode
from .readers import EMBEDDED, Issue, Record, read_source


@dataclass
class Splits:
    """Tokenized ``train`` and ``heldout`` datasets (``heldout`` is ``None`` when disabled) and all issues."""

    train: object
    heldout: object | None
    issues: list[Issue]


def tokenize_records(records: list[Record], tokenizer, max_length: int, chat_format: str = "tulu"):
    """Tokenize and mask ``records``; returns ``(datasets.Dataset, issues)``."""
    from datasets import Dataset

    rows: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    issues: list[Issue] = []
    for record in records:
        try:
            enc = encode(tokenizer, record.messages, max_length, chat_format)
        except ValueError as exc:
            issues.append(Issue(record.origin, str(exc), "skipped"))
            continue
        if all(label == IGNORE_INDEX for label in enc["labels"]):
            issues.append(Issue(record.origin, f"no assistant token within the first {max_length} tokens",
                                "skipped"))
            continue
        if enc["truncated"]:
            issues.append(Issue(record.origin, f"longer than max_length={max_length} tokens", "truncated"))
        for key, column in rows.items():
            column.append(enc[key])
    return Dataset.from_dict(rows), issues


def load_splits(tokenizer, data: str | None = None, heldout_data: str | None = None, heldout_size: int = 64,
                max_length: int = 512, chat_format: str = "tulu", seed: int = 1) -> Splits:
    """Read, tokenize and split the training and held-out data.

    Held-out examples come from ``heldout_data`` when given, else from the embedded held-out file when
    ``data`` is the embedded set, else ``heldout_size`` usable examples are drawn (with ``seed``) out of
    ``data``; at most ``heldout_size`` are kept, and ``heldout_size=0`` disables the held-out split.

    Raises:
        ValueError: when no usable training example is left, naming the first issues found.
    """
    records, issues = read_source(data, "train")
    train, train_issues = tokenize_records(records, tokenizer, max_length, chat_format)
    issues += train_issues
    heldout = None
    if heldout_size and (heldout_data or data in (None, "", EMBEDDED)):
        records, heldout_issues = read_source(heldout_data, "heldout")
        heldout, tokenize_issues = tokenize_records(records[:heldout_size], tokenizer, max_length, chat_format)
        issues += heldout_issues + tokenize_issues
    elif heldout_size and len(train) > heldout_size:
        parts = train.train_test_split(test_size=heldout_size, seed=seed)
        train, heldout = parts["train"], parts["test"]
    if len(train) == 0:
        first = "; ".join(str(i) for i in issues[:3])
        raise ValueError(f"no usable training example in {data or EMBEDDED!r} ({len(issues)} issues; first: {first})")
    if heldout_size and heldout is None:
        raise ValueError(f"--heldout-size {heldout_size} needs more usable examples than that in {data!r} (it has "
                         f"{len(train)}); lower --heldout-size, or pass --heldout-data")
    return Splits(train, heldout if heldout is not None and len(heldout) else None, issues)
