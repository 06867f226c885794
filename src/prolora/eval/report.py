"""Output files of ``prolora eval``: ``results.json``, ``results.md``, ``predictions/<run>/<benchmark>.jsonl``.

Every file is written to a temporary name and moved into place with :func:`os.replace`, so a reader
(or an interrupted run) never sees a partial file.
"""

from __future__ import annotations

import json
from pathlib import Path

from prolora.files import write_text

# the paper's Table 2 columns: (header, benchmark, metric)
COLUMNS = (
    ("MMLU EM (0-shot)", "mmlu", "exact_match"),
    ("BBH EM (3-shot, direct)", "bbh", "exact_match"),
    ("GSM EM (8-shot, CoT)", "gsm8k", "exact_match"),
    ("TyDi QA F1 (1-shot, GP)", "tydiqa", "f1"),
    ("TyDi QA EM (1-shot, GP)", "tydiqa", "exact_match"),
    ("HumanEval P@1 (0-shot)", "humaneval", "pass@1"),
)


def paper_average(scores: dict) -> float | None:
    """The paper's "Avg.": the mean of the six table columns; ``None`` unless all five benchmarks ran."""
    values = [scores.get(bench, {}).get(metric) for _, bench, metric in COLUMNS]
    return None if any(v is None for v in values) else sum(values) / len(values)


def _cell(value, fmt=".2f") -> str:
    return "—" if value is None else format(value, fmt)


def markdown(results: dict) -> str:
    """The results as markdown: the paper-style table (columns of the benchmarks that ran; Avg. when all
    did), the breakdowns, and the timings."""
    runs = results["runs"]
    columns = [c for c in COLUMNS if c[1] in results["benchmarks"]]
    has_average = len(columns) == len(COLUMNS)
    has_loss = results["config"]["loss_data"] is not None
    headers = (
        ["Run"]
        + [h for h, _, _ in columns]
        + (["Avg."] if has_average else [])
        + (["Held-out loss"] if has_loss else [])
    )
    config = results["config"]
    intro = (
        f"Chat format `{config['chat_format']}`, limit {config['limit'] or 'none'} per sub-task, "
        f"seed {config['seed']}. Scores in percent."
        + ("" if results["complete"] else " **Incomplete: the run is in progress or stopped early.**")
    )
    lines = [
        f"# prolora eval: {results['model']}",
        "",
        intro,
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
    ]
    for run in runs:
        scores = run["scores"]
        row = [run["label"]] + [_cell(scores.get(bench, {}).get(metric)) for _, bench, metric in columns]
        if has_average:
            row.append(_cell(run["average"]))
        if has_loss:
            row.append(_cell(scores.get("loss", {}).get("loss"), ".4f"))
        lines.append("| " + " | ".join(row) + " |")
    lines += _breakdowns(runs) + _timings(results)
    return "\n".join(lines) + "\n"


def _breakdowns(runs: list[dict]) -> list[str]:
    sections = [
        ("MMLU by category (EM)", "mmlu", "per_category", ("exact_match",)),
        ("BBH by task (EM)", "bbh", "per_task", ("exact_match",)),
        ("TyDi QA by language (F1 / EM)", "tydiqa", "per_language", ("f1", "exact_match")),
    ]
    lines = []
    for title, bench, key, metrics in sections:
        tables = [(run["label"], run["scores"][bench][key]) for run in runs if bench in run["scores"]]
        if not tables:
            continue
        labels = [label for label, _ in tables]
        lines += [
            "",
            f"## {title}",
            "",
            "| | " + " | ".join(labels) + " | n |",
            "|" + "---|" * (len(labels) + 2),
        ]
        for name, first in tables[0][1].items():
            cells = [" / ".join(_cell(table[name][m]) for m in metrics) for _, table in tables]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {first['n']} |")
    return lines


def _timings(results: dict) -> list[str]:
    lines = [
        "",
        "## Time",
        "",
        "| Run | Benchmark | Examples | Seconds | s/example | Full benchmark | Estimated full time |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        for bench, timing in run["timings"].items():
            estimate = timing.get("estimated_full_s")
            lines.append(
                f"| {run['label']} | {bench} | {timing['examples']} | {timing['seconds']:.1f} | "
                f"{timing['seconds_per_example']:.2f} | {timing.get('full_size', '—')} | "
                f"{'—' if estimate is None else _duration(estimate)} |"
            )
    t = results["timings"]
    total = "still running" if t["total_s"] is None else _duration(t["total_s"])
    lines += [
        "",
        (
            f"Reading data {t['read_s']:.1f} s, model loading {t['load_s']:.1f} s, prompt building "
            f"{t['prepare_s']:.1f} s, total {total}."
        ),
    ]
    return lines


def _duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def write_predictions(output_dir: str | Path, label: str, benchmark: str, rows: list[dict]) -> None:
    """Write ``predictions/<label>/<benchmark>.jsonl``."""
    write_text(
        Path(output_dir) / "predictions" / label / f"{benchmark}.jsonl",
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
    )


def write_results(output_dir: str | Path, results: dict) -> None:
    """Write ``results.json`` and ``results.md``."""
    out = Path(output_dir)
    write_text(out / "results.json", json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    write_text(out / "results.md", markdown(results))
