"""The lm-evaluation-harness glue: wrap an in-memory model, run one task config, return its samples.

lm-eval does the model work: batched, length-sorted generation with stop sequences (``generate_until``),
repeated sampling (``repeats``), answer-letter log-likelihoods with a shared-context cache
(``multiple_choice``), per-document metrics (``process_results``), seeding, and the per-sample log.
Our task configs (``tasks/*.yaml``) are loaded by :mod:`.benchmarks.common`; ``TaskManager`` is built
with ``include_defaults=False`` so the hundreds of built-in tasks are never indexed.
"""

from __future__ import annotations

import logging


def wrap_model(model, tokenizer, batch_size: int):
    """An lm-eval ``HFLM`` around an in-memory transformers model or ``PeftModel``."""
    from lm_eval.models.huggingface import HFLM

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def run_task(lm, config: dict, seed: int, predict_only: bool = False) -> list[dict]:
    """Evaluate one task config; returns lm-eval's logged samples (one per document, in document order).

    ``predict_only`` generates without computing metrics (the caller scores). ``seed`` seeds Python,
    NumPy and torch right before the run, so a benchmark's sampling does not depend on what ran before.
    This is ``lm_eval.simple_evaluate`` without its per-call environment report (about 0.7 s of
    subprocesses each time; ``results.json`` records the environment once).
    """
    import random

    import numpy as np
    import torch
    from lm_eval import evaluate
    from lm_eval.tasks import TaskManager

    lm_eval_logger = logging.getLogger("lm_eval")
    level = lm_eval_logger.level
    lm_eval_logger.setLevel(max(level, logging.ERROR))  # its per-task notes are noise for our fixed configs
    try:
        loaded = TaskManager(include_defaults=False).load([config])
        for task in loaded["tasks"].values():
            task.set_config(key="num_fewshot", value=0)  # exemplars are part of our prompts
            if predict_only:
                task.override_metric(metric_name="bypass")  # as simple_evaluate(predict_only=True) does
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        results = evaluate(lm=lm, task_dict=loaded, bootstrap_iters=0, log_samples=True)
    finally:
        lm_eval_logger.setLevel(level)
    return sorted(results["samples"][config["task"]], key=lambda s: s["doc_id"])
