"""One comparison end to end: a preset with overrides, its cells run (or read back), the report written.

:func:`configure` applies overrides to a preset; :func:`run_comparison` runs the cells of the chosen groups
into a directory (finished cells are skipped, so a rerun resumes; the ``best`` group, every row at its best
rate of the learning-rate sweep for every seed, runs after the sweep and takes only rows whose whole grid
has finished) and writes ``results.md``, ``results.json`` and the PNG plots (:func:`write_report`).
The command line is :mod:`prolora.cli.compare`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from .grid import GROUPS
from .presets import PRESETS, Preset

REPORT_MD = "results.md"
REPORT_JSON = "results.json"


def configure(
    preset: str | Preset,
    *,
    model: str | None = None,
    data: str | None = None,
    heldout_data: str | None = None,
    max_steps: int | None = None,
    learning_rate: float | None = None,
    lr_shared_scale: float | None = None,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    eval_limit: int | None = None,
) -> Preset:
    """``preset`` (a name of :data:`~.presets.PRESETS` or a preset) with the given overrides (None: the
    preset's). ``lr_shared_scale`` replaces the rows' own shared-chunk multiple where it is not 1;
    ``methods`` keeps those rows (labels of the main table), in the preset's order.

    Raises:
        ValueError: a label of ``methods`` that is not a row of the preset (the message lists the rows).
    """
    preset = PRESETS[preset] if isinstance(preset, str) else preset
    overrides = {
        "model": model,
        "data": data,
        "heldout_data": heldout_data,
        "max_steps": max_steps,
        "learning_rate": learning_rate,
    }
    train = {**preset.train, **{k: v for k, v in overrides.items() if v is not None}}
    rows = preset.methods
    if lr_shared_scale is not None:
        rows = tuple(
            m if m.lr_shared_scale == 1 else dataclasses.replace(m, lr_shared_scale=lr_shared_scale)
            for m in rows
        )
    if methods:
        if unknown := set(methods) - {m.label for m in rows}:
            labels = ", ".join(m.label for m in rows)
            raise ValueError(f"--methods: unknown {sorted(unknown)}; the rows are: {labels}")
        rows = tuple(m for m in rows if m.label in methods)
    return dataclasses.replace(
        preset,
        train=train,
        methods=rows,
        seeds=tuple(seeds) if seeds else preset.seeds,
        eval_limit=eval_limit if eval_limit is not None else preset.eval_limit,
    )


def check_groups(groups: Sequence[str], given: str | None = None) -> tuple[str, ...]:
    """``groups`` as a tuple, each one of :data:`~.grid.GROUPS` (``given``: the text they came from)."""
    if unknown := set(groups) - set(GROUPS):
        raise ValueError(f"--groups: unknown {sorted(unknown)}; choose from {', '.join(GROUPS)}")
    if not groups:
        raise ValueError(f"--groups {given!r} names no group; choose from {', '.join(GROUPS)}")
    return tuple(groups)


def write_report(preset: Preset, cells, results, report_dir: Path, command: str) -> Path:
    """Write results.md, results.json and the plots; returns the markdown's path."""
    from prolora.files import write_json, write_text

    from .plots import write_plots
    from .report import markdown, summarize

    summary = summarize(preset, cells, results, command)
    report_dir.mkdir(parents=True, exist_ok=True)
    summary["plots"] = [p.name for p in write_plots(summary, report_dir)]
    write_json(str(report_dir / REPORT_JSON), summary)
    md = report_dir / REPORT_MD
    images = "".join(f"\n![{p}]({p})\n" for p in summary["plots"])
    write_text(md, markdown(summary) + images)
    return md


def run_comparison(
    preset: Preset,
    groups: Sequence[str],
    output_dir: str | Path,
    report_dir: str | Path | None = None,
    *,
    data_dir: str | None = None,
    report_only: bool = False,
    command: str = "",
    runner=None,
) -> tuple[Path, list, dict[str, dict]]:
    """Run (or, with ``report_only``, read back) the cells of ``groups`` and write the report.

    Args:
        output_dir: the comparison directory (cells' results and runs); rerun with it to resume.
        report_dir: where the report goes (default: ``output_dir``).
        data_dir: benchmark data (``prolora eval`` layout), needed by presets with benchmarks.
        command: the command line recorded in the report.
        runner: trains and evaluates one cell (default: :class:`~.cells.TrainRunner`).

    Returns:
        ``(report markdown path, cells, results by cell key)``; a cell that failed is missing from the
        results (its error is printed; rerun to retry it).

    Raises:
        ValueError: a bad group, a cell's invalid training settings (before anything trains), benchmarks
            without ``data_dir``.
    """
    from .cells import CellsFailed, TrainRunner, benchmark_evaluator, load_results, run_cells, train_config
    from .grid import best_lr_cells, build_cells, lr_sweep_cells
    from .report import score

    groups = check_groups(groups)
    if preset.benchmarks and not data_dir and not report_only:
        benchmarks = ", ".join(preset.benchmarks)
        raise ValueError(
            f"preset {preset.name} evaluates {benchmarks}: pass --data-dir DIR (layout: docs/eval.md)"
        )
    out = Path(output_dir)
    report_dir = Path(report_dir) if report_dir else out
    cells = build_cells(preset, groups)
    for cell in cells:  # every cell's training settings are valid before the first one trains
        train_config(cell.train, out / "runs" / cell.name)

    def best_cells():  # every row at its best rate of the (finished) sweep, for every seed
        return best_lr_cells(preset, load_results(out, lr_sweep_cells(preset)), score)

    if report_only:
        results = load_results(out, cells)
        if "best" in groups:
            cells += best_cells()
            results = load_results(out, cells)
        return write_report(preset, cells, results, report_dir, command), cells, results
    if runner is None:
        evaluate = None
        if preset.benchmarks:
            evaluate = benchmark_evaluator(
                preset.train.get("model"), preset.benchmarks, data_dir, preset.eval_limit
            )
        runner = TrainRunner(evaluate)
    failed = None

    def refresh(done):
        write_report(preset, cells, done, report_dir, command)

    try:
        results = run_cells(cells, out, runner, after_each=refresh)
    except CellsFailed as error:
        failed, results = error, error.results
    if "best" in groups:
        cells += best_cells()
        try:
            results = run_cells(cells, out, runner, after_each=refresh)
        except CellsFailed as error:
            failed, results = error, error.results
    if failed is not None:
        print(f"error: {failed}", file=sys.stderr)
    return write_report(preset, cells, results, report_dir, command), cells, results
