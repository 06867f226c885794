"""Build the embedded instruction set (``embedded/*.jsonl``) from FLAN v2 Chain-of-Thought TSV files.

A development script, not used at run time; the product reads only the JSONL it writes::

    python -m prolora.data.build_embedded /path/to/flan_cot [--out src/prolora/data/embedded]

Input: ``strategyqa_train.tsv`` and ``gsm8k_train.tsv`` from google-research/FLAN
(``flan/v2/cot_data/``): no header, columns ``question \\t answer \\t chain_of_thought``, newlines inside
fields written as the two characters ``\\n``. Both tasks' questions are MIT-licensed (StrategyQA, GSM8K);
the FLAN repository is Apache-2.0.

Output: one conversation per line, ``{"messages": [user, assistant], "source": "<file>:<line>"}``. Each
example is rendered with one of the FLAN-style templates below (written for this project, chosen per
example by a seeded generator): the user turn asks the question, the assistant turn gives the chain of
thought and then the answer, as FLAN's CoT templates do. The held-out split takes ``--heldout-per-task``
examples of each task before anything else, so train and held-out never share a question. GSM8K train is
capped at ``--max-gsm8k`` examples to keep the package small.
"""

from __future__ import annotations

import argparse
import json
import os
import random

# (user template, assistant template) per task; fields: question, answer, cot.
TEMPLATES: dict[str, list[tuple[str, str]]] = {
    "strategyqa": [
        (
            "{question}\nThink it through step by step, then answer yes or no.",
            "{cot}\nSo the answer is {answer}.",
        ),
        (
            "Answer the following yes/no question after reasoning about it.\nQuestion: {question}",
            "Reasoning: {cot}\nAnswer: {answer}.",
        ),
        (
            "Question: {question}\nGive your reasoning first, then the answer (yes or no).",
            "{cot} Therefore, the answer is {answer}.",
        ),
        (
            "Use common knowledge to decide: {question}",
            "Let's reason step by step. {cot}\nThe answer is {answer}.",
        ),
    ],
    "gsm8k": [
        ("{question}\nSolve the problem step by step.", "{cot}\nSo the answer is {answer}."),
        (
            "Solve this math word problem. Show your work, then give the final number.\n{question}",
            "{cot}\nFinal answer: {answer}.",
        ),
        (
            "Question: {question}\nExplain your calculation before answering.",
            "Let's work it out. {cot} Therefore, the answer is {answer}.",
        ),
        ("{question} Let's think step by step.", "{cot}\nThe answer is {answer}."),
    ],
}
FILES = {"strategyqa": "strategyqa_train.tsv", "gsm8k": "gsm8k_train.tsv"}


def read_tsv(path: str) -> list[tuple[int, dict]]:
    """``(line number, {question, answer, cot})`` for each line of a FLAN CoT TSV file."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 3 or not all(x.strip() for x in fields):
                raise ValueError(f"{path}:{lineno}: expected 3 non-empty tab-separated fields")
            question, answer, cot = (x.replace("\\n", "\n").strip() for x in fields)
            rows.append((lineno, {"question": question, "answer": answer, "cot": cot}))
    return rows


def render(task: str, row: dict, rng: random.Random) -> list[dict]:
    """The two-turn conversation of one row in a randomly chosen template of ``task``."""
    user, assistant = rng.choice(TEMPLATES[task])
    return [
        {"role": "user", "content": user.format(**row)},
        {"role": "assistant", "content": assistant.format(**row)},
    ]


def build(source_dir: str, heldout_per_task: int, max_gsm8k: int, seed: int) -> tuple[list, list]:
    """Return ``(train, heldout)`` lists of records; both shuffled, deterministic for a seed."""
    rng = random.Random(seed)
    train, heldout = [], []
    for task, name in FILES.items():
        rows = read_tsv(os.path.join(source_dir, name))
        rng.shuffle(rows)
        records = [{"messages": render(task, row, rng), "source": f"{name}:{lineno}"} for lineno, row in rows]
        heldout += records[:heldout_per_task]
        rest = records[heldout_per_task:]
        train += rest[:max_gsm8k] if task == "gsm8k" else rest
    rng.shuffle(train)
    rng.shuffle(heldout)
    return train, heldout


def write_jsonl(path: str, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source_dir", help="folder with strategyqa_train.tsv and gsm8k_train.tsv")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "embedded"))
    parser.add_argument("--heldout-per-task", type=int, default=64)
    parser.add_argument("--max-gsm8k", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    train, heldout = build(args.source_dir, args.heldout_per_task, args.max_gsm8k, args.seed)
    os.makedirs(args.out, exist_ok=True)
    write_jsonl(os.path.join(args.out, "flan_cot_train.jsonl"), train)
    write_jsonl(os.path.join(args.out, "flan_cot_heldout.jsonl"), heldout)
    print(f"wrote {len(train)} train and {len(heldout)} held-out conversations to {args.out}")


if __name__ == "__main__":
    main()
