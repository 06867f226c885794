"""The five benchmarks of the PRoLoRA paper (Appendix A.1), one module each, all with the same surface:

- ``NAME``, ``TITLE``
- ``size(raw) -> int``: examples a full run scores (for time estimates)
- ``build_docs(raw, settings, tokenizer) -> list[dict]``: the documents, each with its formatted
  ``prompt`` and references, limited to ``settings.limit`` per sub-task
- ``task(docs, settings) -> dict``: the lm-eval task config (``tasks/<name>.yaml`` plus run-time fields)
- ``summarize(samples) -> dict``: scores in percent with per-sub-task breakdowns
- ``prediction(sample) -> dict``: one line of the predictions file

A benchmark whose metric lm-eval must not compute sets ``PREDICT_ONLY = True`` and provides
``score(samples, settings)``, which adds its metrics to the samples (HumanEval: sandboxed tests).
``raw`` is what :func:`prolora.eval.runner.read` returns for the benchmark.
"""

from . import bbh, gsm8k, humaneval, mmlu, tydiqa

BENCHMARKS = {module.NAME: module for module in (mmlu, bbh, gsm8k, tydiqa, humaneval)}
