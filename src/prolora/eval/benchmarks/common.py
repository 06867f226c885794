"""Pieces shared by the benchmark modules: task configs from ``tasks/*.yaml``, limits, aggregation."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..settings import EvalSettings

TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"


def first(items: list, limit: int | None) -> list:
    """The first ``limit`` items (all when ``limit`` is ``None``)."""
    return items if limit is None else items[:limit]


def task_config(yaml_name: str, docs: list[dict], settings: EvalSettings, **overrides) -> dict:
    """The lm-eval task config of ``tasks/<yaml_name>.yaml`` over ``docs``.

    Adds what only the run knows: the documents (as ``custom_dataset``), the cap ``max_new_tokens`` on
    ``max_gen_toks``, and ``overrides`` (e.g. ``process_results``; a ``generation_kwargs`` override is
    merged into the YAML's).
    """
    import yaml

    config = yaml.safe_load((TASKS_DIR / f"{yaml_name}.yaml").read_text(encoding="utf-8"))
    generation = {**config.get("generation_kwargs", {}), **overrides.pop("generation_kwargs", {})}
    if generation:
        generation["max_gen_toks"] = min(
            generation.get("max_gen_toks", settings.max_new_tokens), settings.max_new_tokens
        )
        config["generation_kwargs"] = generation
    config["custom_dataset"] = _DocsDataset(docs)
    config.update(overrides)
    return config


class _DocsDataset:
    """lm-eval's ``custom_dataset`` hook: called with the task metadata, returns ``{"test": Dataset}``."""

    def __init__(self, docs: list[dict]):
        self.docs = docs

    def __call__(self, **_metadata):
        import datasets

        return datasets.DatasetDict({"test": datasets.Dataset.from_list(self.docs)})


def percent(values) -> float:
    """Mean of 0/1 (or fractional) scores, in percent; 0.0 for no values."""
    values = list(values)
    return 100.0 * sum(values) / len(values) if values else 0.0


def by_key(samples: list[dict], key: str) -> dict[str, list[dict]]:
    """Group lm-eval samples by ``doc[key]``, keys in first-seen order."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for sample in samples:
        groups[sample["doc"][key]].append(sample)
    return dict(groups)


def response(sample: dict) -> str:
    """The generation of a generative sample with one response."""
    return sample["filtered_resps"][0]
