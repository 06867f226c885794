"""GSM8K test (Cobbe et al. 2021), 8-shot chain of thought, exact match on the last number.

Protocol: open-instruct ``eval/gsm/run_eval.py``: ``Answer the following questions.\\n\\n`` + the eight
exemplars of Wei et al. 2022 as ``Question: ...\\nAnswer: <chain of thought>`` + ``Question: <q>``; the
answer prefix is ``Answer:``. The score compares the last number of the response with the gold number by
value (see :func:`prolora.eval.metrics.numbers_equal`).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from ..metrics import gsm8k_reference, last_number, numbers_equal
from ..prompts import Prompt, render
from ..settings import EvalSettings
from .common import first, percent, response, task_config

NAME = "gsm8k"
TITLE = "GSM8K"


@cache
def exemplar_prefix() -> str:
    """The 8-shot prefix, from the shipped exemplars (``data/gsm8k_cot_exemplars_8shot.jsonl``)."""
    text = resources.files("prolora.eval").joinpath("data/gsm8k_cot_exemplars_8shot.jsonl").read_text()
    shots = [json.loads(line) for line in text.splitlines() if line.strip()]
    demos = [f"Question: {s['question']}\nAnswer: {s['cot_answer']}" for s in shots]
    return "Answer the following questions.\n\n" + "\n\n".join(demos) + "\n\n"


def prompt(question: str) -> Prompt:
    body = exemplar_prefix() + "Question: " + question.strip()
    return Prompt(user=body, assistant_prefix="Answer:", plain=body + "\nAnswer:")


def size(rows: list[dict]) -> int:
    return len(rows)


def build_docs(rows: list[dict], settings: EvalSettings, tokenizer) -> list[dict]:
    return [
        {
            "id": str(i),
            "question": row["question"],
            "reference": gsm8k_reference(row["answer"]),
            "prompt": render(prompt(row["question"]), settings.chat_format, tokenizer),
        }
        for i, row in enumerate(first(rows, settings.limit))
    ]


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    return {"exact_match": float(numbers_equal(last_number(results[0]), doc["reference"]))}


def task(docs: list[dict], settings: EvalSettings) -> dict:
    until = ["\n"] if settings.chat_format == "none" else []
    return task_config(
        "gsm8k", docs, settings, process_results=process_results, generation_kwargs={"until": until}
    )


def summarize(samples: list[dict]) -> dict:
    return {"exact_match": percent(s["exact_match"] for s in samples), "n": len(samples)}


def prediction(sample: dict) -> dict:
    doc, output = sample["doc"], response(sample)
    return {
        "id": doc["id"],
        "question": doc["question"],
        "prompt": doc["prompt"],
        "response": output,
        "prediction": last_number(output),
        "reference": doc["reference"],
        "correct": bool(sample["exact_match"]),
    }
