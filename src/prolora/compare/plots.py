"""PNG plots of a comparison summary (:func:`prolora.compare.report.summarize`), matplotlib's Agg backend.

* ``score_vs_params.png``: the primary metric (mean ± std over seeds) against trainable parameters;
* ``best_rate_vs_params.png``: the same with every method at its own best rate (the ``best`` group);
* ``lr_sweep.png``: the primary metric of every method against the learning rate (one grid for all);
* ``heatmap_unshared_rank_lr.png``: Figure 2's grid, unshared rank × learning rate at a fixed budget;
* ``table4_share_rotate.png``: Table 4's 2 × 2, sharing × rotation dimensions.
"""

from __future__ import annotations

import math
from pathlib import Path

SCORE_VS_PARAMS = "score_vs_params.png"
BEST_VS_PARAMS = "best_rate_vs_params.png"
LR_SWEEP = "lr_sweep.png"
HEATMAP = "heatmap_unshared_rank_lr.png"
TABLE4 = "table4_share_rotate.png"
MARKERS = "osD^vP*X<>ph"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _metric_label(summary: dict) -> str:
    return f"{summary['primary_metric']} ({'lower' if summary['lower_is_better'] else 'higher'} is better)"


def score_vs_params(summary: dict, path: Path, rows_key: str = "rows") -> Path | None:
    """One point per method with its seed spread as an error bar; ``None`` when no row has a result.
    ``rows_key``: ``"rows"`` (the main table, the shared rate) or ``"best_rows"`` (each at its best rate)."""
    metric = summary["primary_metric"]
    rows = [r for r in summary.get(rows_key) or [] if r["metrics"].get(metric, {}).get("mean") is not None]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5))
    at_budget: dict[float, int] = {}
    for i, row in enumerate(rows):
        stat = row["metrics"][metric]
        # rows at one budget (within ~2%) share an x: dodge each by 2% so that their error bars stay visible
        budget = round(math.log10(row["params"]), 2)
        at_budget[budget] = at_budget.get(budget, -1) + 1
        rate = f", lr {row['lr']:g}" if rows_key == "best_rows" else ""
        ax.errorbar(
            row["params"] * 1.02 ** at_budget[budget],
            stat["mean"],
            yerr=stat["std"],
            fmt=MARKERS[i % len(MARKERS)],
            capsize=4,
            color=f"C{i % 10}",
            markersize=7,
            alpha=0.85,
            label=f"{row['label']} (n={stat['n']}{rate})",
        )
    where = "each method at its own best rate" if rows_key == "best_rows" else "mean ± std over seeds"
    return _finish(
        plt,
        fig,
        ax,
        summary,
        path,
        "trainable parameters (log scale; rows at one budget dodged by 2% each)",
        f"{summary['preset']}: {metric} vs trainable parameters ({where})",
        base_line=rows_key == "rows",
    )  # tuned rows sit far below the base: keep their scale


def lr_sweep(summary: dict, path: Path) -> Path | None:
    """One line per method: the primary metric at each learning rate of the grid; ``None`` when empty."""
    sweep = summary.get("lr_sweep")
    rows = [r for r in (sweep or {}).get("rows", []) if any(v is not None for v in r["values"])]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5))
    for i, row in enumerate(rows):
        points = [(lr, v) for lr, v in zip(sweep["lrs"], row["values"], strict=False) if v is not None]
        ax.plot(
            *zip(*points, strict=False),
            marker=MARKERS[i % len(MARKERS)],
            color=f"C{i % 10}",
            label=row["label"],
        )
    return _finish(
        plt,
        fig,
        ax,
        summary,
        path,
        "learning rate (log scale)",
        f"{summary['preset']}: every method over one learning-rate grid (seed {sweep['seed']})",
    )


def _finish(plt, fig, ax, summary: dict, path: Path, xlabel: str, title: str, base_line: bool = True) -> Path:
    """Base-model line (for a loss, unless ``base_line`` is false), log x axis, labels, legend outside; save
    and close."""
    if (
        base_line
        and summary.get("base_heldout_loss") is not None
        and summary["primary_metric"].endswith("loss")
    ):
        ax.axhline(summary["base_heldout_loss"], color="grey", ls="--", lw=1, label="base model")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(_metric_label(summary))
    ax.set_title(title)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def grid_heatmap(
    grid: dict, path: Path, title: str, xlabel: str, ylabel: str, lower_is_better: bool, fmt_col=str
) -> Path | None:
    """A heatmap of a report grid with every value written in its square; ``None`` when nothing finished."""
    import numpy as np

    values = np.array([[np.nan if v is None else v for v in row] for row in grid["values"]], dtype=float)
    if np.isnan(values).all():
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(grid["cols"]), 1.4 + 0.8 * len(grid["rows"])))
    image = ax.imshow(values, cmap="viridis_r" if lower_is_better else "viridis", aspect="auto")
    finite = values[~np.isnan(values)]
    middle = (finite.min() + finite.max()) / 2
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            text = "not run" if np.isnan(values[i, j]) else f"{values[i, j]:.4f}"
            dark = not np.isnan(values[i, j]) and (values[i, j] > middle) == lower_is_better
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black")
    ax.set_xticks(range(len(grid["cols"])), [fmt_col(c) for c in grid["cols"]])
    ax.set_yticks(range(len(grid["rows"])), grid["row_names"])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label=grid["metric"])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_plots(summary: dict, out_dir: str | Path) -> list[Path]:
    """Write every plot the summary has data for into ``out_dir``; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    low = summary["lower_is_better"]
    written = [
        score_vs_params(summary, out / SCORE_VS_PARAMS),
        lr_sweep(summary, out / LR_SWEEP),
        score_vs_params(summary, out / BEST_VS_PARAMS, "best_rows"),
    ]
    metric = summary["primary_metric"]
    if summary.get("heatmap"):
        seed = summary["heatmap"]["seed"]
        written.append(
            grid_heatmap(
                summary["heatmap"],
                out / HEATMAP,
                f"Figure 2 style: {metric}, fixed budget, seed {seed}",
                "learning rate",
                "unshared rank",
                low,
                fmt_col=lambda c: f"{c:g}",
            )
        )
    if summary.get("table4"):
        written.append(
            grid_heatmap(
                summary["table4"],
                out / TABLE4,
                f"Table 4 style: {metric} (PRoLoRA: hidden / rank)",
                "rotation dimension",
                "sharing dimension",
                low,
            )
        )
    return [p for p in written if p is not None]
