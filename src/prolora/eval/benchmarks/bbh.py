"""BIG-Bench Hard (Suzgun et al. 2022), 3-shot direct answering, exact match; per task and average.

Protocol: open-instruct ``eval/bbh/run_eval.py --no_cot``. Each task's prompt is its official
``cot-prompts/<task>.txt`` (task description + three exemplars) with every chain of thought replaced by
its final answer (``A: <answer>``), then ``\\n\\nQ: <input>``; the answer prefix is ``A:``. The average is
the mean over the 27 task files (open-instruct's ``average_exact_match``).
"""

from __future__ import annotations

from ..metrics import bbh_exact_match, bbh_extract_answer
from ..prompts import Prompt, render
from ..settings import EvalSettings
from ..sources import DataError
from .common import by_key, first, percent, response, task_config

NAME = "bbh"
TITLE = "BBH"


def direct_answer_exemplars(task: str, cot_prompt: str) -> str:
    """The 3-shot direct-answer prompt of a task from its CoT prompt file (canary and ``-----`` lines
    dropped; each ``Q: ...\\nA: Let's think step by step. ... So the answer is X.`` becomes ``Q: ...\\nA: X.``)."""
    fields = []
    for field in "".join(cot_prompt.splitlines(keepends=True)[2:]).split("\n\n"):
        if field.startswith("Q:"):
            if "So the answer is" not in field or "\nA:" not in field:
                raise DataError(
                    f"BBH prompt of task {task}: an exemplar lacks 'A:' or 'So the answer is'; "
                    f"is cot-prompts/{task}.txt the official file?"
                )
            field = field.split("\nA:")[0].strip() + "\nA: " + field.split("So the answer is")[-1].strip()
        fields.append(field)
    return "\n\n".join(fields)


def prompt(exemplars: str, example: dict) -> Prompt:
    body = exemplars.strip() + "\n\nQ: " + example["input"]
    return Prompt(user=body, assistant_prefix="A:", plain=body + "\nA:")


def size(tasks: dict[str, dict]) -> int:
    return sum(len(t["examples"]) for t in tasks.values())


def build_docs(tasks: dict[str, dict], settings: EvalSettings, tokenizer) -> list[dict]:
    docs = []
    for name, data in tasks.items():
        exemplars = direct_answer_exemplars(name, data["cot_prompt"])
        for i, example in enumerate(first(data["examples"], settings.limit)):
            docs.append(
                {
                    "id": f"{name}/{i}",
                    "task": name,
                    "target": example["target"],
                    "prompt": render(prompt(exemplars, example), settings.chat_format, tokenizer),
                }
            )
    return docs


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    return {"exact_match": bbh_exact_match(bbh_extract_answer(results[0]), doc["target"])}


def task(docs: list[dict], settings: EvalSettings) -> dict:
    return task_config("bbh", docs, settings, process_results=process_results)


def summarize(samples: list[dict]) -> dict:
    """Exact match in percent per task, and their mean."""
    per_task = {
        name: {"exact_match": percent(s["exact_match"] for s in group), "n": len(group)}
        for name, group in by_key(samples, "task").items()
    }
    average = sum(t["exact_match"] for t in per_task.values()) / len(per_task) if per_task else 0.0
    return {"exact_match": average, "n": len(samples), "per_task": per_task}


def prediction(sample: dict) -> dict:
    doc, output = sample["doc"], response(sample)
    return {
        "id": doc["id"],
        "task": doc["task"],
        "prompt": doc["prompt"],
        "response": output,
        "prediction": bbh_extract_answer(output),
        "target": doc["target"],
        "correct": bool(sample["exact_match"]),
    }
