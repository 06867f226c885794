"""Held-out loss and perplexity on instruction data, in the training pipeline's chat format.

Records are read and tokenized by :mod:`prolora.data` exactly as ``prolora train`` does (Tulu format or
the tokenizer's template, labels on assistant tokens only, truncation to ``max_length``), so the number
is comparable with the training run's held-out loss. The loss is the mean negative log-likelihood per
trained token over the whole file (token-weighted, independent of the batch size); perplexity is its
exponential.
"""

from __future__ import annotations

import math


def read_loss_data(source: str) -> tuple[list, list]:
    """The records and issues of ``source`` (see :func:`heldout_loss`), read before any model loads.

    Raises:
        ValueError: an unreadable file, or no record of ``source`` in either format.
        FileNotFoundError: a missing file.
    """
    from prolora.data import read_source

    records, issues = read_source(source, "heldout")
    if not records:
        raise ValueError(f"no usable held-out record in {source!r}: {'; '.join(map(str, issues[:3]))}")
    return records, issues


def heldout_loss(
    model,
    tokenizer,
    source: str,
    chat_format: str = "tulu",
    max_length: int = 512,
    batch_size: int = 8,
    read: tuple[list, list] | None = None,
) -> dict:
    """Loss of ``model`` on ``source`` (a ``.jsonl``/``.json`` file, a Hub dataset name, or ``embedded``
    for the shipped held-out split); returns ``{"loss", "perplexity", "tokens", "examples", "skipped"}``.
    ``read``: what :func:`read_loss_data` returned for ``source`` (read here when ``None``).

    Raises:
        ValueError: no record of ``source`` has an assistant token within ``max_length``.
    """
    from prolora.data import token_loss, tokenize_records

    records, issues = read or read_loss_data(source)
    issues = list(issues)
    dataset, token_issues = tokenize_records(records, tokenizer, max_length, chat_format)
    issues += token_issues
    if len(dataset) == 0:
        raise ValueError(f"no usable held-out record in {source!r}: {'; '.join(map(str, issues[:3]))}")
    loss, tokens = token_loss(model, dataset, tokenizer, batch_size, f"[prolora eval] loss on {source}")
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "tokens": tokens,
        "examples": len(dataset),
        "skipped": sum(1 for issue in issues if issue.action == "skipped"),
    }
