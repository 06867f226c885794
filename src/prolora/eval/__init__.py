"""``prolora.eval``: the PRoLoRA paper's benchmarks (Appendix A.1) on any base model, with or without adapters.

MMLU (0-shot), BBH (3-shot direct), GSM8K (8-shot CoT), TyDi QA GoldP (1-shot, F1/EM), HumanEval
(pass@1, sandboxed) and held-out loss, following open-instruct's protocols (Wang et al. 2023) on top of
lm-evaluation-harness. The command line is ``prolora eval`` (:mod:`prolora.cli.eval`); in Python::

    from prolora.eval import DataSources, EvalSettings, run_eval
    results = run_eval(None, ["runs/my-run"], ["gsm8k"], DataSources.from_dir("data"), EvalSettings(limit=5),
                       output_dir="eval-out")  # results.json, results.md, predictions/

Lower-level pieces: :func:`.runner.read_all`, :func:`.runner.prepare` and :func:`.runner.evaluate` on
your own lm-eval ``HFLM`` (:func:`.harness.wrap_model`), :func:`.loss.heldout_loss`,
:class:`.sandbox.Sandbox`, :mod:`.metrics`.
"""

from .runner import evaluate, prepare, read_all, run_eval
from .settings import EvalSettings
from .sources import DataError, DataSources

__all__ = ["DataError", "DataSources", "EvalSettings", "evaluate", "prepare", "read_all", "run_eval"]
