"""The comparison's tables: Table 2-style rows (mean ± std over seeds), every row over its learning-rate
grid and again at its best rate over all seeds, the Figure 2 grid and Table 4.

:func:`summarize` turns cells and their results into one JSON-ready dict; :func:`markdown` renders it.
The primary metric is the paper's average over benchmarks when benchmarks ran, else the held-out loss
(lower is better); claims of the paper (``Preset.claims``) are checked on it, paired by seed.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from .cells import LOSS
from .grid import Cell
from .presets import Preset

AVERAGE = "Avg."


def mean_std(values: Iterable[float]) -> dict:
    """``{"mean", "std", "n", "values"}``; ``std`` is the sample standard deviation (0 for one value)."""
    values = [float(v) for v in values]
    if not values:
        return {"mean": None, "std": None, "n": 0, "values": []}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values), "values": values}


def lower_is_better(metric: str) -> bool:
    return metric == LOSS


def _metrics_of(result: dict) -> dict:
    """A cell's metrics plus the average of its benchmark scores (when it has any)."""
    metrics = dict(result["metrics"])
    scores = [v for k, v in metrics.items() if k != LOSS]
    if scores:
        metrics[AVERAGE] = statistics.fmean(scores)
    return metrics


def score(result: dict) -> float:
    """A cell result's primary metric as a number where lower is better: the held-out loss, or minus the
    average benchmark score when the cell has benchmark scores (what :func:`summarize` reports on)."""
    metrics = _metrics_of(result)
    return -metrics[AVERAGE] if AVERAGE in metrics else metrics[LOSS]


def rank_text(cell: Cell) -> str:
    """``"2"`` for LoRA/VeRA/Tied-LoRA; ``"8 (u=1, m=n=7)"`` for the PRoLoRA family."""
    train = cell.train
    if "unshared_r" not in train:  # set only for the PRoLoRA family (grid.resolve)
        return str(train["r"])
    m, n = train["sharing_rate_a"], train["sharing_rate_b"]
    shares = f"m=n={m}" if m == n else f"m={m}, n={n}"
    return f"{train['r']} (u={train['unshared_r']}, {shares})"


def _rows(cells: list[Cell], results: dict[str, dict], group: str = "main") -> list[dict]:
    """One row per label of ``group`` (``main``, or ``best``: each row at its best rate), in preset order,
    aggregated over its seeds."""
    rows: dict[str, dict] = {}
    for cell in (c for c in cells if c.group == group):
        row = rows.setdefault(
            cell.label,
            {
                "label": cell.label,
                "method": cell.train["method"],
                "rank": rank_text(cell),
                "params": cell.params,
                "budget": cell.budget,
                "lr": cell.train["learning_rate"],
                "lr_shared_scale": cell.train.get("lr_shared_scale", 1.0),
                "seeds": [],
                "per_seed": {},
                "seconds": [],
            },
        )
        row["seeds"].append(cell.seed)
        if cell.key in results:
            row["per_seed"][cell.seed] = _metrics_of(results[cell.key])
            row["seconds"].append(results[cell.key]["seconds"])
    for row in rows.values():
        names = sorted(
            {k for m in row["per_seed"].values() for k in m}, key=lambda k: (k == AVERAGE, k != LOSS, k)
        )  # loss, benchmarks, average
        row["metrics"] = {k: mean_std(m[k] for m in row["per_seed"].values() if k in m) for k in names}
    return list(rows.values())


def _grid(
    cells: list[Cell], results: dict[str, dict], group: str, row_key: str, col_key: str, metric: str, row_name
) -> dict:
    """``{"rows", "row_names", "cols", "values"[i][j], ...}`` of one metric over a group's two coordinates
    (``None``: not finished); ``row_name(cell)`` names a row after any of its cells."""
    mine = [c for c in cells if c.group == group]
    rows = list(dict.fromkeys(c.coords[row_key] for c in mine))
    cols = list(dict.fromkeys(c.coords[col_key] for c in mine))
    names = {c.coords[row_key]: row_name(c) for c in reversed(mine)}
    values = [[None] * len(cols) for _ in rows]
    for c in mine:
        if c.key in results:
            i, j = rows.index(c.coords[row_key]), cols.index(c.coords[col_key])
            values[i][j] = _metrics_of(results[c.key]).get(metric)
    return {
        "row_key": row_key,
        "col_key": col_key,
        "rows": rows,
        "row_names": [names[r] for r in rows],
        "cols": cols,
        "values": values,
        "metric": metric,
        "seed": mine[0].seed if mine else None,
    }


def _lr_sweep(cells: list[Cell], results: dict[str, dict], metric: str) -> dict | None:
    """The learning-rate sweep: ``{"lrs", "seed", "rows": [{"label", "values", "best_lr", "best"}]}``.

    ``values[j]`` is the row's metric at ``lrs[j]`` (``None``: not finished or not in the row's grid);
    ``best_lr``/``best`` are the best finished rate and value; ``grid`` the row's own rates; ``edge``
    ``"low"``/``"high"`` when the best rate is the lowest/highest of its grid (extend the grid there),
    judged only once every rate of the row's grid has finished. One seed: the best rate is selected and reported on the same held-out
    data, which favours every row alike.
    """
    mine = [c for c in cells if c.group == "lrs"]
    if not mine:
        return None
    lrs = sorted({c.coords["lr"] for c in mine})
    sign = 1.0 if lower_is_better(metric) else -1.0
    rows: dict[str, dict] = {}
    for c in mine:
        row = rows.setdefault(
            c.label,
            {
                "label": c.label,
                "values": [None] * len(lrs),
                "best_lr": None,
                "best": None,
                "per_seed": {},
                "grid": [],
                "edge": None,
            },
        )
        row["grid"] = sorted({*row["grid"], c.coords["lr"]})
        if c.key in results:
            value = _metrics_of(results[c.key]).get(metric)
            row["values"][lrs.index(c.coords["lr"])] = value
            if value is not None and (row["best"] is None or sign * value < sign * row["best"]):
                row["best_lr"], row["best"] = c.coords["lr"], value
                row["per_seed"] = {c.seed: _metrics_of(results[c.key])}
    for row in rows.values():  # a best rate at an end of the row's own grid may not be its optimum
        finished = all(row["values"][lrs.index(lr)] is not None for lr in row["grid"])
        if finished and row["best_lr"] is not None and len(row["grid"]) > 1:  # judged on the whole grid
            row["edge"] = (
                "low"
                if row["best_lr"] == row["grid"][0]
                else "high"
                if row["best_lr"] == row["grid"][-1]
                else None
            )
    return {"lrs": lrs, "seed": mine[0].seed, "rows": list(rows.values())}


def _claims(preset: Preset, rows: list[dict], metric: str) -> list[dict]:
    """Each claim ``(better, worse, what)`` of the preset on ``metric``, paired by seed.

    Two rows trained with one seed see the same examples in the same order, so the per-seed difference
    cancels what the seed does to both. ``gain``: mean over their common seeds of how much ``better``
    beats ``worse`` (positive: the paper's order); ``spread``: the sample standard deviation of those
    differences; ``wins``: seeds where it holds; ``beyond_spread``: ``|gain| > spread``, a screen (for
    three seeds, a paired t of √3 ≈ 1.7), not a significance test.
    """
    by_label = {row["label"]: row for row in rows}
    sign = -1.0 if lower_is_better(metric) else 1.0
    checks = []
    for better, worse, what in preset.claims:
        a, b = by_label.get(better, {}).get("per_seed", {}), by_label.get(worse, {}).get("per_seed", {})
        seeds = [s for s in a if s in b and metric in a[s] and metric in b[s]]
        diffs = [sign * (a[s][metric] - b[s][metric]) for s in seeds]
        if not diffs:
            continue
        stat = mean_std(diffs)
        checks.append(
            {
                "claim": f"{better} > {worse}",
                "what": what,
                "gain": stat["mean"],
                "spread": stat["std"],
                "wins": sum(d > 0 for d in diffs),
                "n": stat["n"],
                "holds": stat["mean"] > 0,
                "beyond_spread": abs(stat["mean"]) > stat["std"],
                "beyond_3_spread": stat["n"] > 1 and abs(stat["mean"]) >= 3 * stat["std"],
            }
        )
    return checks


def summarize(preset: Preset, cells: list[Cell], results: dict[str, dict], command: str = "") -> dict:
    """Everything the report shows, JSON-ready."""
    rows, best_rows = _rows(cells, results), _rows(cells, results, "best")
    metric = AVERAGE if any(AVERAGE in row["metrics"] for row in rows) else LOSS
    base = [
        r["summary"]["heldout_loss_base"]
        for r in results.values()
        if r["summary"].get("heldout_loss_base") is not None
    ]
    first: dict[str, Cell] = {}
    groups: dict[str, list[str]] = {}
    for c in cells:
        first.setdefault(c.key, c)
        groups.setdefault(c.key, []).append(c.group)
    return {
        "preset": preset.name,
        "description": preset.description,
        "command": command,
        "model": preset.train.get("model") or "embedded SmolLM2-135M-Instruct",
        "train": {k: v for k, v in preset.train.items() if k != "model"},
        "seeds": list(preset.seeds),
        "primary_metric": metric,
        "lower_is_better": lower_is_better(metric),
        "base_heldout_loss": statistics.fmean(base) if base else None,
        "rows": rows,
        "lr_sweep": (sweep := _lr_sweep(cells, results, metric)),
        "best_rows": best_rows,
        # at each row's best rate: over all seeds once the best group has run, else the sweep's one seed
        "claims_best_lr": (
            _claims(preset, best_rows, metric)
            if best_rows
            else _claims(preset, sweep["rows"], metric)
            if sweep
            else []
        ),
        "heatmap": (
            _grid(cells, results, "heatmap", "u", "lr", metric, lambda c: c.label) if preset.heatmap else None
        ),
        "table4": (
            _grid(cells, results, "table4", "share", "rotate", metric, lambda c: c.coords["share"])
            if preset.table4
            else None
        ),
        "claims": _claims(preset, rows, metric),
        "cells": [
            {
                "key": k,
                "groups": list(dict.fromkeys(groups[k])),
                "label": c.label,
                "seed": c.seed,
                "lr": c.train["learning_rate"],
                "params": c.params,
                "finished": k in results,
                "seconds": results[k]["seconds"] if k in results else None,
                "metrics": _metrics_of(results[k]) if k in results else None,
            }
            for k, c in first.items()
        ],
        "notes": list(preset.notes),
    }


def _fmt(stat: dict, digits: int) -> str:
    if stat is None or stat["mean"] is None:
        return "—"
    text = f"{stat['mean']:.{digits}f}"
    if stat["n"] > 1:
        text += f" ± {stat['std']:.{digits}f}"
    return f"{text} (n={stat['n']})"


def _digits(metric: str) -> int:
    return 4 if metric == LOSS else 2


def _main_table(summary: dict) -> list[str]:
    metrics = list(dict.fromkeys(k for row in summary["rows"] for k in row["metrics"]))
    arrows = {m: " ↓" if lower_is_better(m) else " ↑" for m in metrics}
    head = [
        "Method",
        "Rank",
        "Trainable params",
        "vs budget",
        "lr",
        *(m + arrows[m] for m in metrics),
        "s / cell",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary["rows"]:
        budget = f"{row['params'] / row['budget'] - 1:+.2%}" if row["budget"] else "—"
        lr = f"{row['lr']:g}"
        if row["lr_shared_scale"] != 1:
            lr += f" (shared ×{row['lr_shared_scale']:g})"
        secs = f"{sum(row['seconds']) / len(row['seconds']):.0f}" if row["seconds"] else "—"
        cells = [row["label"], row["rank"], f"{row['params']:,}", budget, lr]
        cells += [_fmt(row["metrics"].get(m), _digits(m)) for m in metrics] + [secs]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _claims_table(claims: list[dict]) -> list[str]:
    lines = [
        (
            "| Claim | What it tests | Gain | Spread | Wins | Holds on average | \\|gain\\| > spread | "
            "\\|gain\\| ≥ 3×spread |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in claims:
        lines.append(
            f"| {c['claim']} | {c['what']} | {c['gain']:+.4f} | {c['spread']:.4f} | "
            f"{c['wins']}/{c['n']} | {'yes' if c['holds'] else 'no'} | "
            f"{'yes' if c['beyond_spread'] else 'no'} | "
            f"{'yes' if c.get('beyond_3_spread') else 'no'} |"
        )
    return lines


def _grid_table(grid: dict, corner: str, fmt_col) -> list[str]:
    head = [corner] + [fmt_col(c) for c in grid["cols"]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    digits = _digits(grid["metric"])
    for name, row in zip(grid["row_names"], grid["values"], strict=False):
        values = ["—" if v is None else f"{v:.{digits}f}" for v in row]
        lines.append("| " + " | ".join([name] + values) + " |")
    return lines


def markdown(summary: dict) -> str:
    """The report as markdown: main table, claims, Figure 2 grid, Table 4, per-cell times, notes."""
    metric = summary["primary_metric"]
    better = "lower" if summary["lower_is_better"] else "higher"
    lines = [f"# prolora compare — preset `{summary['preset']}`", "", summary["description"] + ".", ""]
    if summary["command"]:
        lines += ["Command:", "", "```", summary["command"], "```", ""]
    train = ", ".join(f"{k}={v}" for k, v in summary["train"].items())
    lines += [f"Model: {summary['model']}. Training: {train}. Seeds: {summary['seeds']}.", ""]
    if summary["base_heldout_loss"] is not None:
        lines += [f"Base model held-out loss (no adapter): {summary['base_heldout_loss']:.4f}.", ""]
    lines += [
        "## Equal trainable-parameter budgets (Table 2 style)",
        "",
        (
            f"Mean ± sample standard deviation over seeds; primary metric **{metric}** ({better} is "
            "better). 'vs budget': the trainable-parameter gap to the budget the row was matched to."
        ),
        "",
    ]
    lines += _main_table(summary)
    if summary["claims"]:
        lines += [
            "",
            "## The paper's ordering, checked here",
            "",
            (
                f"Paired by seed (both rows of a seed see the same data order): gain = mean over seeds of "
                f"how much the first beats the second on {metric} (positive: the paper's order), spread = "
                "standard deviation of those per-seed gains, wins = seeds where the order holds. "
                "'|gain| > spread' is a screen, not a significance test; '|gain| ≥ 3×spread' is the "
                "rank-separation rule of issue 14."
            ),
            "",
        ]
        lines += _claims_table(summary["claims"])
    if summary.get("lr_sweep"):
        sweep = summary["lr_sweep"]
        lines += [
            "",
            f"## Every method over its learning-rate grid (seed {sweep['seed']})",
            "",
            (
                f"{metric} at each rate of the row's grid ('·': not in its grid, '—': not finished); "
                "'best' is the row's best rate, selected on the same held-out data it is reported on (one "
                "seed: no spread); 'edge' flags a best rate at the low or high end of the row's grid, "
                "which may not be its optimum (extend the grid there)."
            ),
            "",
        ]
        head = ["Method", *(f"lr {lr:g}" for lr in sweep["lrs"]), "best lr", "best", "edge"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        digits = _digits(metric)
        for row in sweep["rows"]:
            grid = row.get("grid") or sweep["lrs"]
            values = [
                "·" if lr not in grid else "—" if v is None else f"{v:.{digits}f}"
                for lr, v in zip(sweep["lrs"], row["values"], strict=False)
            ]
            best = ["—", "—"] if row["best"] is None else [f"{row['best_lr']:g}", f"{row['best']:.{digits}f}"]
            edge = {"low": "**low edge**", "high": "**high edge**"}.get(row.get("edge"), "")
            lines.append("| " + " | ".join([row["label"], *values, *best, edge]) + " |")
        if summary.get("best_rows"):
            lines += [
                "",
                "## Every method at its own best rate (all seeds)",
                "",
                (
                    "Each row of the grid above trained at its best rate for every seed (the grid's seed "
                    f"at that rate is the grid's own run); {metric}, mean ± standard deviation over seeds. "
                    f"The rate was chosen on seed {sweep['seed']}'s result, which favours that seed alike "
                    "for every row."
                ),
                "",
            ]
            lines += _main_table({"rows": summary["best_rows"]})
            if summary.get("claims_best_lr"):
                lines += [
                    "",
                    ("The paper's ordering with every row at its own best rate (paired by seed, as above):"),
                    "",
                ]
                lines += _claims_table(summary["claims_best_lr"])
        elif summary.get("claims_best_lr"):
            lines += [
                "",
                (
                    "The paper's ordering with every row at its best rate of the grid (seed "
                    f"{sweep['seed']}; gain as above, one seed):"
                ),
                "",
                "| Claim | Gain | Holds |",
                "|---|---|---|",
            ]
            for c in summary["claims_best_lr"]:
                lines.append(f"| {c['claim']} | {c['gain']:+.4f} | {'yes' if c['holds'] else 'no'} |")
    if summary["heatmap"]:
        h = summary["heatmap"]
        title = f"## Unshared rank × learning rate at one budget (Figure 2 style, seed {h['seed']})"
        lines += ["", title, "", f"{metric}; u = 0 is RoLoRA, the last row is LoRA at the budget's rank.", ""]
        lines += _grid_table(h, "unshared rank \\ lr", lambda c: f"{c:g}")
    if summary["table4"]:
        lines += [
            "",
            f"## Sharing × rotation dimensions (Table 4 style, seed {summary['table4']['seed']})",
            "",
            (
                f"{metric}; rows: the dimension chunks are shared along; columns: the dimension "
                "they are rotated along. PRoLoRA is hidden / rank."
            ),
            "",
        ]
        lines += _grid_table(summary["table4"], "share \\ rotate", str)
    intro = (
        "Every distinct training run once, with the groups that use it and its wall time (training, "
        "held-out evaluation and, for a process's first cell, loading the base model)."
    )
    lines += [
        "",
        "## Cells",
        "",
        intro,
        "",
        f"| Groups | Label | Seed | lr | Params | Seconds | {metric} |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in summary["cells"]:
        value = (c["metrics"] or {}).get(metric)
        value = "—" if value is None else f"{value:.4f}"
        secs = "not run" if c["seconds"] is None else f"{c['seconds']:.0f}"
        groups = ", ".join(c["groups"])
        lines.append(
            f"| {groups} | {c['label']} | {c['seed']} | {c['lr']:g} | {c['params']:,} | {secs} | {value} |"
        )
    if summary["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in summary["notes"]]
    return "\n".join(lines) + "\n"
