"""From data sources to tokenized ``datasets.Dataset`` splits with loss masks, ready for the Trainer.

Columns: ``input_ids``, ``attention_mask`` and ``labels`` (−100 outside assistant turns; see
:mod:`prolora.data.chat`).
Over-long records are truncated to ``max_length`` tokens (Appendix A.2: "truncates samples if
necessary") and reported; a record with no assistant token left after truncation is skipped and reported.
"""

from __future__ import annotations

from dataclasses import dataclass

from .chat import IGNORE_INDEX, encode
from .readers import EMBEDDED, Issue, Record, read_source, summarize_issues

DEFAULT_HELDOUT = 64  # held-out examples when there are enough (the first 64 of the embedded 128)
HELDOUT_FRACTION = 10  # out of --data alone, at most one example in this many is held out


@dataclass
class SourceRecords:
    """The records of a run's data sources, read and checked before any tokenizer or model loads:
    ``train`` (of ``data``), ``heldout`` (of ``heldout_data`` or the embedded held-out split, ``None`` when
    the held-out examples are drawn out of ``data`` or disabled) and the readers' issues."""

    train: list[Record]
    heldout: list[Record] | None
    issues: list[Issue]


def read_sources(
    data: str | None = None, heldout_data: str | None = None, heldout_size: int | None = None
) -> SourceRecords:
    """Read the training and held-out sources of :func:`load_splits` (see there); fast, no tokenizer.

    Raises:
        ValueError: an unreadable file (see :mod:`.readers`), or no record of ``data`` in either format,
            naming the first issues found.
        FileNotFoundError: a missing file or unknown dataset name.
    """
    records, issues = read_source(data, "train")
    if not records:
        raise ValueError(
            f"no usable training example in {data or EMBEDDED!r}: {len(issues)} record(s) skipped; "
            f"{'; '.join(summarize_issues(issues))}"
        )
    heldout = None
    if heldout_size != 0 and (heldout_data or data in (None, "", EMBEDDED)):
        heldout, heldout_issues = read_source(heldout_data, "heldout")
        issues = issues + heldout_issues
    return SourceRecords(records, heldout, issues)


@dataclass
class Splits:
    """Tokenized ``train`` and ``heldout`` datasets (``heldout`` is ``None`` when disabled), all issues, and
    ``heldout_note``: where the held-out examples come from and how many were chosen, in words."""

    train: object
    heldout: object | None
    issues: list[Issue]
    heldout_note: str = ""


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
            issues.append(
                Issue(record.origin, f"no assistant token within the first {max_length} tokens", "skipped")
            )
            continue
        if enc["truncated"]:
            issues.append(Issue(record.origin, f"longer than max_length={max_length} tokens", "truncated"))
        for key, column in rows.items():
            column.append(enc[key])
    return Dataset.from_dict(rows), issues


def load_splits(
    tokenizer,
    data: str | None = None,
    heldout_data: str | None = None,
    heldout_size: int | None = None,
    max_length: int = 512,
    chat_format: str = "tulu",
    seed: int = 1,
    sources: SourceRecords | None = None,
) -> Splits:
    """Read, tokenize and split the training and held-out data.

    ``sources``: what :func:`read_sources` returned for the same ``data``, ``heldout_data`` and
    ``heldout_size`` (read before the tokenizer loads, so that bad data is reported at once); read here
    when ``None``.

    Held-out examples come from ``heldout_data`` when given, else from the embedded held-out file when
    ``data`` is the embedded set, else they are drawn (with ``seed``) out of ``data``. ``heldout_size`` is
    how many are kept; ``0`` disables the held-out split; ``None`` (the default) is
    :data:`DEFAULT_HELDOUT`, except out of ``data`` itself, where it is at most one usable example in
    :data:`HELDOUT_FRACTION` (none below that many examples), so small files still train.

    Raises:
        ValueError: when no usable training example is left, naming the first issues found; when an explicit
            ``heldout_size`` leaves no training example.
    """
    sources = sources or read_sources(data, heldout_data, heldout_size)
    train, train_issues = tokenize_records(sources.train, tokenizer, max_length, chat_format)
    issues = sources.issues + train_issues
    heldout, note = None, "no held-out loss (--heldout-size 0)"
    if len(train) == 0:
        raise ValueError(
            f"no usable training example in {data or EMBEDDED!r}: {len(issues)} record(s) skipped; "
            f"{'; '.join(summarize_issues(issues))}"
        )
    if heldout_size != 0 and (heldout_data or data in (None, "", EMBEDDED)):
        size = DEFAULT_HELDOUT if heldout_size is None else heldout_size
        heldout, tokenize_issues = tokenize_records(
            sources.heldout[:size], tokenizer, max_length, chat_format
        )
        issues += tokenize_issues
        note = f"the first {len(heldout)} of {heldout_data or 'the embedded held-out split'}"
    elif heldout_size != 0:
        if heldout_size is None:
            size = min(DEFAULT_HELDOUT, len(train) // HELDOUT_FRACTION)
            if size == 0:
                note = (
                    f"no held-out loss: {len(train)} usable examples are too few to hold {HELDOUT_FRACTION}% "
                    "out (pass --heldout-data or --heldout-size N)"
                )
            else:
                note = (
                    f"{size} drawn out of the data (at most {DEFAULT_HELDOUT}, at most 1 in {HELDOUT_FRACTION}; "
                    "--heldout-size N to change)"
                )
        else:
            size = heldout_size
            if size >= len(train):
                raise ValueError(
                    f"--heldout-size {size} needs more usable examples than that in {data!r} (it has "
                    f"{len(train)}); lower --heldout-size, or pass --heldout-data"
                )
            note = f"{size} drawn out of the data (--heldout-size)"
        if size:
            parts = train.train_test_split(test_size=size, seed=seed)
            train, heldout = parts["train"], parts["test"]
    if heldout is not None and not len(heldout):
        heldout, note = None, f"no held-out loss: no usable example in {heldout_data or 'the held-out split'}"
    return Splits(train, heldout, issues, note)
