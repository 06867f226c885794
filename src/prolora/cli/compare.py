"""``prolora compare``: train and evaluate methods at equal parameter budgets (paper Table 2/4, Figure 2).

Runs the cells of a preset into ``--output-dir`` (finished cells are skipped, so rerunning the same
command resumes; the ``best`` group, every row at its best rate of the learning-rate sweep for every seed,
runs after the sweep and takes only rows whose whole grid has finished), then writes ``results.md``,
``results.json`` and the PNG plots into ``--report-dir``.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path

from prolora.compare.grid import GROUPS

REPORT_MD = "results.md"
REPORT_JSON = "results.json"


def add_arguments(parser) -> None:
    from prolora.compare.presets import PRESETS

    parser.add_argument(
        "--preset",
        default="small",
        choices=sorted(PRESETS),
        help="the experiment: 'small' (embedded SmolLM2-135M, CPU, about an hour) or 'paper' "
        "(LLaMA2-7B, 10k steps, five benchmarks; GPU) (default: small)",
    )
    parser.add_argument(
        "--output-dir",
        help="comparison directory: cells/ results and runs/ (default: "
        "runs/compare-<preset>); rerun with the same one to resume",
    )
    parser.add_argument(
        "--report-dir", help="where results.md, results.json and the PNGs go (default: --output-dir)"
    )
    parser.add_argument(
        "--groups",
        default=",".join(GROUPS),
        help=f"comma-separated parts to run: {', '.join(GROUPS)} (default: all)",
    )
    parser.add_argument(
        "--methods",
        help="comma-separated row labels of the main table to run, e.g. "
        "'LoRA r=2,PRoLoRA' (default: all the preset's rows)",
    )
    parser.add_argument("--seeds", help="comma-separated seeds of the main table (default: the preset's)")
    parser.add_argument("--model", help="base model (default: the preset's)")
    parser.add_argument("--data", help="training data, as for prolora train (default: the preset's)")
    parser.add_argument("--heldout-data", help="held-out data for the loss (default: the preset's)")
    parser.add_argument("--max-steps", type=int, help="optimizer steps per cell (default: the preset's)")
    parser.add_argument(
        "--lr", type=float, help="learning rate of the LoRA/PRoLoRA rows (default: the preset's)"
    )
    parser.add_argument(
        "--lr-shared-scale",
        type=float,
        help="learning-rate multiple of the shared chunks in the 'shared lr' row (default: the preset's)",
    )
    parser.add_argument(
        "--data-dir", help="benchmark data (prolora eval layout); needed by presets with benchmarks"
    )
    parser.add_argument("--limit", type=int, help="benchmark examples per sub-task (default: the preset's)")
    parser.add_argument(
        "--report-only", action="store_true", help="write the report from finished cells, train nothing"
    )


def configure(args):
    """The preset with the command line's overrides applied."""
    from prolora.compare.presets import PRESETS

    preset = PRESETS[args.preset]
    train = dict(preset.train)
    for flag, name in (
        ("model", "model"),
        ("data", "data"),
        ("heldout_data", "heldout_data"),
        ("max_steps", "max_steps"),
        ("lr", "learning_rate"),
    ):
        if getattr(args, flag) is not None:
            train[name] = getattr(args, flag)
    methods = preset.methods
    if args.lr_shared_scale is not None:
        scale = args.lr_shared_scale
        methods = tuple(
            m if m.lr_shared_scale == 1 else dataclasses.replace(m, lr_shared_scale=scale) for m in methods
        )
    if args.methods:
        wanted = [label.strip() for label in args.methods.split(",")]
        if unknown := set(wanted) - {m.label for m in methods}:
            rows = ", ".join(m.label for m in methods)
            raise ValueError(f"--methods: unknown {sorted(unknown)}; the rows are: {rows}")
        methods = tuple(m for m in methods if m.label in wanted)
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else preset.seeds
    except ValueError:
        raise ValueError(f"--seeds {args.seeds!r}: give comma-separated integers, e.g. 1,2,3") from None
    limit = args.limit if args.limit is not None else preset.eval_limit
    return dataclasses.replace(preset, train=train, methods=methods, seeds=seeds, eval_limit=limit)


def write_report(preset, cells, results, report_dir: Path, command: str) -> Path:
    """Write results.md, results.json and the plots; returns the markdown's path."""
    from prolora.compare.plots import write_plots
    from prolora.compare.report import markdown, summarize
    from prolora.files import write_json, write_text

    summary = summarize(preset, cells, results, command)
    report_dir.mkdir(parents=True, exist_ok=True)
    summary["plots"] = [p.name for p in write_plots(summary, report_dir)]
    write_json(str(report_dir / REPORT_JSON), summary)
    md = report_dir / REPORT_MD
    images = "".join(f"\n![{p}]({p})\n" for p in summary["plots"])
    write_text(md, markdown(summary) + images)
    return md


def run(args) -> int:
    from prolora.compare.cells import (
        CellsFailed,
        TrainRunner,
        benchmark_evaluator,
        load_results,
        run_cells,
        train_config,
    )
    from prolora.compare.grid import best_lr_cells, build_cells, lr_sweep_cells
    from prolora.compare.report import score

    groups = tuple(g.strip() for g in args.groups.split(",") if g.strip())
    if unknown := set(groups) - set(GROUPS):
        raise ValueError(f"--groups: unknown {sorted(unknown)}; choose from {', '.join(GROUPS)}")
    if not groups:
        raise ValueError(f"--groups {args.groups!r} names no group; choose from {', '.join(GROUPS)}")
    preset = configure(args)
    if preset.benchmarks and not args.data_dir and not args.report_only:
        benchmarks = ", ".join(preset.benchmarks)
        raise ValueError(
            f"preset {preset.name} evaluates {benchmarks}: pass --data-dir DIR (layout: docs/eval.md)"
        )
    out = Path(args.output_dir or f"runs/compare-{preset.name}")
    report_dir = Path(args.report_dir) if args.report_dir else out
    cells = build_cells(preset, groups)
    for cell in cells:  # every cell's training settings are valid before the first one trains
        train_config(cell.train, out / "runs" / cell.name)
    command = "prolora " + shlex.join(sys.argv[1:]) if Path(sys.argv[0]).name in ("prolora", "cli.py") else ""
    if args.report_only:
        results = load_results(out, cells)
        if "best" in groups:  # the best group follows from the sweep's results
            cells += best_lr_cells(preset, load_results(out, lr_sweep_cells(preset)), score)
            results = load_results(out, cells)
    else:
        evaluate = None
        if preset.benchmarks:
            evaluate = benchmark_evaluator(
                preset.train.get("model"), preset.benchmarks, args.data_dir, preset.eval_limit
            )
        runner, failed = TrainRunner(evaluate), None

        def refresh(done):
            write_report(preset, cells, done, report_dir, command)

        try:
            results = run_cells(cells, out, runner, after_each=refresh)
        except CellsFailed as error:
            failed, results = error, error.results
        if "best" in groups:  # then every row at its best rate of the (finished) sweep, for every seed
            cells += best_lr_cells(preset, load_results(out, lr_sweep_cells(preset)), score)
            try:
                results = run_cells(cells, out, runner, after_each=refresh)
            except CellsFailed as error:
                failed, results = error, error.results
        if failed is not None:
            print(f"error: {failed}", file=sys.stderr)
    md = write_report(preset, cells, results, report_dir, command)
    total = len({c.key for c in cells})
    print(f"report: {md} ({len(results)} of {total} cells finished)")
    return 0 if len(results) == total else 1
