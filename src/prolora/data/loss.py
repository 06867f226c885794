"""The loss of a causal language model on tokenized instruction data (the rows of :func:`.tokenize_records`).

Token-weighted: the summed negative log-likelihood of every trained (assistant) token divided by their
count, over the whole dataset in its own order. Unlike the Hugging Face Trainer's ``evaluate`` loss (a
mean of per-batch means), the number does not depend on how examples fall into batches, so it is the same
for every training seed and every batch size, and two runs evaluated on one dataset are compared on the
same weighting of the same tokens.
"""

from __future__ import annotations

from .chat import IGNORE_INDEX


def token_loss(
    model, dataset, tokenizer, batch_size: int = 8, progress: str | None = None
) -> tuple[float, int]:
    """``(loss, tokens)``: mean negative log-likelihood per label token (nats) of ``model`` on ``dataset``,
    and the number of label tokens it averages over.

    ``dataset``: rows with ``input_ids``, ``attention_mask`` and ``labels`` (``IGNORE_INDEX`` where no loss
    is taken), any lengths; they are right-padded per batch of ``batch_size`` with ``tokenizer``'s pad token
    (its EOS when it has none; padding is masked, so the choice does not change the loss). The label of position ``t``
    is predicted from positions ``< t`` (the causal-LM shift). Runs without gradients in eval mode and
    leaves the model's training mode as it found it. ``progress``: a description for a progress bar on
    stderr (examples done, rate and ETA; tqdm); none when ``None``.

    Raises:
        ValueError: ``dataset`` has no label token.
    """
    import torch
    from tqdm import tqdm

    device = next(model.parameters()).device
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def padded(rows: dict, column: str, value: int):
        width = max(map(len, rows["input_ids"]))
        return torch.tensor([seq + [value] * (width - len(seq)) for seq in rows[column]], device=device)

    total, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(dataset), desc=progress, unit="example", disable=progress is None)
    try:
        with torch.no_grad():
            for start in range(0, len(dataset), batch_size):
                rows = dataset[start : start + batch_size]
                logits = model(
                    input_ids=padded(rows, "input_ids", pad_token_id),
                    attention_mask=padded(rows, "attention_mask", 0),
                ).logits
                labels = padded(rows, "labels", IGNORE_INDEX)[:, 1:]
                total += torch.nn.functional.cross_entropy(
                    logits[:, :-1].flatten(0, 1).float(),
                    labels.flatten(),
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                ).item()
                tokens += int((labels != IGNORE_INDEX).sum())
                bar.update(len(rows["input_ids"]))
    finally:
        bar.close()
        model.train(was_training)
    if tokens == 0:
        raise ValueError(f"no label token in the {len(dataset)} example(s) to take a loss on")
    return total / tokens, tokens
