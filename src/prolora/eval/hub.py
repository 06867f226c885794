"""Benchmarks from the Hugging Face Hub (``--gsm8k hf:openai/gsm8k`` etc.; needs network access).

Each converter maps the Hub dataset's rows to the records of the matching local reader in
:mod:`.sources`, so the rest of the pipeline cannot tell the two apart. BBH is local-only: its 3-shot
exemplars live in the ``cot-prompts/*.txt`` files of the BBH repository, which no Hub dataset carries.
"""

from __future__ import annotations

from .sources import DataError

# benchmark -> (default config, splits read)
_HUB_LAYOUT = {
    "gsm8k": ("main", ("test",)),
    "mmlu": ("all", ("test",)),
    "humaneval": (None, ("test",)),
    "tydiqa": ("secondary_task", ("validation", "train")),
}


def gsm8k_from_hub(rows) -> list[dict]:
    """``openai/gsm8k`` rows (``question``, ``answer``) -> GSM8K records."""
    return [{"question": r["question"], "answer": r["answer"]} for r in rows]


def mmlu_from_hub(rows) -> dict[str, list[dict]]:
    """``cais/mmlu`` rows (``subject``, ``question``, ``choices``, ``answer`` index) -> MMLU subjects."""
    subjects: dict[str, list[dict]] = {}
    for r in rows:
        subjects.setdefault(r["subject"], []).append(
            {"question": r["question"], "choices": list(r["choices"]), "answer": "ABCD"[r["answer"]]}
        )
    return dict(sorted(subjects.items()))


def humaneval_from_hub(rows) -> list[dict]:
    """``openai/openai_humaneval`` rows -> HumanEval problems (same fields)."""
    keys = ("task_id", "prompt", "entry_point", "canonical_solution", "test")
    return [{k: r[k] for k in keys} for r in rows]


def tydiqa_from_hub(validation, train) -> dict[str, dict[str, list[dict]]]:
    """``google-research-datasets/tydiqa`` ``secondary_task`` rows (GoldP; ``answers`` as
    ``{"text": [...], "answer_start": [...]}``) -> TyDi QA records per language."""

    def records(rows):
        by_language: dict[str, list[dict]] = {}
        for r in rows:
            language = r["id"].split("-")[0]
            by_language.setdefault(language, []).append(
                {
                    "id": r["id"],
                    "language": language,
                    "context": r["context"],
                    "question": r["question"],
                    "answers": list(r["answers"]["text"]),
                }
            )
        return by_language

    dev, train_by_language = records(validation), records(train)
    return {lang: {"dev": dev[lang], "train": train_by_language.get(lang, [])} for lang in sorted(dev)}


def read_hub(benchmark: str, spec: str):
    """Load ``NAME[:CONFIG]`` from the Hub with :func:`datasets.load_dataset` and convert it."""
    if benchmark not in _HUB_LAYOUT:
        raise DataError(
            f"{benchmark} cannot be read from the Hugging Face Hub: its few-shot prompts are only "
            f"in the original files. Pass a local folder with --{benchmark} or --data-dir."
        )
    import datasets

    name, _, config = spec.partition(":")
    default_config, splits = _HUB_LAYOUT[benchmark]
    try:
        loaded = [datasets.load_dataset(name, config or default_config, split=s) for s in splits]
    except Exception as e:  # offline, unknown name, missing split: all surface the same way
        raise DataError(
            f"could not load {benchmark} from the Hugging Face Hub as {spec!r} ({e}). Check the "
            f"name and network access, or pass a local path with --{benchmark}."
        ) from e
    converters = {
        "gsm8k": gsm8k_from_hub,
        "mmlu": mmlu_from_hub,
        "humaneval": humaneval_from_hub,
        "tydiqa": tydiqa_from_hub,
    }
    return converters[benchmark](*loaded)
