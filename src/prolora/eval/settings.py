"""The knobs of one evaluation run, with the paper's protocol as defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .prompts import CHAT_FORMATS, DEFAULT_CHAT_FORMAT
from .sandbox import SANDBOX_MODES

MMLU_SCORINGS = ("logprob", "generate")


@dataclass(frozen=True)
class EvalSettings:
    """Settings shared by all benchmarks.

    Attributes:
        chat_format: ``tulu`` (open-instruct's ``<|user|>``/``<|assistant|>`` format, the format of the
            paper and of ``prolora train``), ``template`` (the tokenizer's chat template) or ``none``;
            ``None`` lets :func:`~prolora.eval.runner.run_eval` take the adapters' training format.
        limit: at most this many examples per sub-task (each MMLU subject, BBH task, TyDi QA language;
            GSM8K and HumanEval as a whole), the first ones in file order; ``None`` for all.
        batch_size: sequences per forward pass / generation batch.
        max_new_tokens: upper bound on generated tokens; protocols use 512 (TyDi QA: 50), lower
            values only shorten runs and are recorded.
        seed: seed of Python, NumPy and torch (HumanEval sampling), set by lm-eval before each benchmark.
        mmlu_scoring: ``logprob`` (paper/open-instruct: the most probable of the four answer letters) or
            ``generate`` (greedy answer, letter extracted from the text).
        humaneval_samples: completions per problem (open-instruct: 20) for the unbiased pass@1.
        humaneval_temperature, humaneval_top_p: sampling (paper: temperature 0.1; open-instruct: top-p 0.95).
        sandbox: ``namespaces`` or ``rlimits`` (see :mod:`.sandbox`).
        sandbox_timeout_s, sandbox_memory_mb: per-program limits.
        sandbox_workers: programs run at once (default: number of CPUs).
    """

    chat_format: str | None = DEFAULT_CHAT_FORMAT
    limit: int | None = None
    batch_size: int = 8
    max_new_tokens: int = 512
    seed: int = 1234
    mmlu_scoring: str = "logprob"
    humaneval_samples: int = 20
    humaneval_temperature: float = 0.1
    humaneval_top_p: float = 0.95
    sandbox: str = "namespaces"
    sandbox_timeout_s: float = 10.0
    sandbox_memory_mb: int = 1024
    sandbox_workers: int | None = None

    def __post_init__(self):
        choices = {"chat_format": CHAT_FORMATS, "mmlu_scoring": MMLU_SCORINGS, "sandbox": SANDBOX_MODES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed and not (
                name == "chat_format" and self.chat_format is None
            ):
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        positive = {
            "batch_size": self.batch_size,
            "max_new_tokens": self.max_new_tokens,
            "humaneval_samples": self.humaneval_samples,
            "limit": 1 if self.limit is None else self.limit,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")

    def as_dict(self) -> dict:
        return asdict(self)
