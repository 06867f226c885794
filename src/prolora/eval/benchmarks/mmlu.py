"""MMLU (Hendrycks et al. 2021), 0-shot, exact match of the answer letter; per subject, category, average.

Protocol: open-instruct ``eval/mmlu/run_eval.py`` with ``--ntrain 0``. The prompt is
``The following are multiple choice questions (with answers) about <subject>.\\n\\n<question>\\nA. ..
\\nD. ..\\nAnswer:``; chat formats add ``The answer is:`` after the assistant tag. The answer is the most
probable of the tokens `` A``..`` D`` (lm-eval ``multiple_choice``); averages are over questions (micro),
as open-instruct reports them.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from ..metrics import MMLU_LETTERS, extract_choice_letter
from ..prompts import Prompt, render
from ..settings import EvalSettings
from .common import by_key, first, percent, task_config

NAME = "mmlu"
TITLE = "MMLU"


@cache
def categories() -> dict[str, tuple[str, str]]:
    """subject -> (subcategory, category), from the shipped hendrycks ``categories.py`` table."""
    table = json.loads(resources.files("prolora.eval").joinpath("data/mmlu_categories.json").read_text())
    category_of = {sub: cat for cat, subs in table["categories"].items() for sub in subs}
    return {subject: (subs[0], category_of[subs[0]]) for subject, subs in table["subcategories"].items()}


def prompt(subject: str, row: dict) -> Prompt:
    """open-instruct's 0-shot MMLU prompt (``gen_prompt`` + ``format_example``; note its double space
    before the subject, kept for fidelity)."""
    about = "".join(" " + word for word in subject.split("_"))
    body = (
        f"The following are multiple choice questions (with answers) about {about}.\n\n{row['question']}"
        + "".join(
            f"\n{letter}. {choice}" for letter, choice in zip(MMLU_LETTERS, row["choices"], strict=False)
        )
        + "\nAnswer:"
    )
    return Prompt(user=body, assistant_prefix="The answer is:", plain=body)


def size(subjects: dict[str, list[dict]]) -> int:
    return sum(len(rows) for rows in subjects.values())


def build_docs(subjects: dict[str, list[dict]], settings: EvalSettings, tokenizer) -> list[dict]:
    docs = []
    for subject, rows in subjects.items():
        subcategory, category = categories().get(subject, ("other", "other (business, health, misc.)"))
        for i, row in enumerate(first(rows, settings.limit)):
            docs.append(
                {
                    "id": f"{subject}/{i}",
                    "subject": subject,
                    "subcategory": subcategory,
                    "category": category,
                    "prompt": render(prompt(subject, row), settings.chat_format, tokenizer),
                    "answer": row["answer"],
                    "answer_index": MMLU_LETTERS.index(row["answer"]),
                }
            )
    return docs


def process_generated(doc: dict, results: list[str]) -> dict[str, float]:
    """lm-eval ``process_results`` of ``--mmlu-scoring generate``."""
    return {"acc": float(extract_choice_letter(results[0]) == doc["answer"])}


def task(docs: list[dict], settings: EvalSettings) -> dict:
    if settings.mmlu_scoring == "generate":
        return task_config("mmlu_generate", docs, settings, process_results=process_generated)
    return task_config("mmlu", docs, settings)


def summarize(samples: list[dict]) -> dict:
    """Accuracy in percent: overall, per category, per subcategory, per subject (all micro averages)."""

    def accuracy(group):
        return {"exact_match": percent(s["acc"] for s in group), "n": len(group)}

    return {
        "exact_match": percent(s["acc"] for s in samples),
        "n": len(samples),
        "per_category": {k: accuracy(v) for k, v in sorted(by_key(samples, "category").items())},
        "per_subcategory": {k: accuracy(v) for k, v in sorted(by_key(samples, "subcategory").items())},
        "per_subject": {k: accuracy(v) for k, v in by_key(samples, "subject").items()},
    }


def prediction(sample: dict) -> dict:
    doc = sample["doc"]
    record = {"id": doc["id"], "subject": doc["subject"], "prompt": doc["prompt"], "answer": doc["answer"]}
    if isinstance(
        sample["filtered_resps"][0], (list, tuple)
    ):  # logprob scoring: (loglik, is_greedy) per letter
        logprobs = [float(r[0]) for r in sample["filtered_resps"]]
        record["logprobs"] = dict(zip(MMLU_LETTERS, logprobs, strict=False))
        record["prediction"] = MMLU_LETTERS[logprobs.index(max(logprobs))]
    else:
        record["response"] = sample["filtered_resps"][0]
        record["prediction"] = extract_choice_letter(record["response"])
    record["correct"] = bool(sample["acc"])
    return record
