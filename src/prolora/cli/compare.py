"""``prolora compare``: train and evaluate methods at equal parameter budgets (paper Table 2/4, Figure 2).

Runs the cells of a preset into ``--output-dir`` (finished cells are skipped, so rerunning the same
command resumes; the ``best`` group, every row at its best rate of the learning-rate sweep for every seed,
runs after the sweep and takes only rows whose whole grid has finished), then writes ``results.md``,
``results.json`` and the PNG plots into ``--report-dir`` (:func:`prolora.compare.experiment.run_comparison`).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from prolora.compare.grid import GROUPS


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


def _list(text: str | None) -> list[str]:
    return [word.strip() for word in (text or "").split(",") if word.strip()]


def run(args) -> int:
    from prolora.compare.experiment import check_groups, configure, run_comparison

    groups = check_groups(_list(args.groups), args.groups)
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        raise ValueError(f"--seeds {args.seeds!r}: give comma-separated integers, e.g. 1,2,3") from None
    preset = configure(
        args.preset,
        model=args.model,
        data=args.data,
        heldout_data=args.heldout_data,
        max_steps=args.max_steps,
        learning_rate=args.lr,
        lr_shared_scale=args.lr_shared_scale,
        methods=[label.strip() for label in args.methods.split(",")] if args.methods else None,
        seeds=seeds,
        eval_limit=args.limit,
    )
    command = "prolora " + shlex.join(sys.argv[1:]) if Path(sys.argv[0]).name in ("prolora", "cli.py") else ""
    md, cells, results = run_comparison(
        preset,
        groups,
        args.output_dir or f"runs/compare-{preset.name}",
        args.report_dir,
        data_dir=args.data_dir,
        report_only=args.report_only,
        command=command,
    )
    total = len({c.key for c in cells})
    print(f"report: {md} ({len(results)} of {total} cells finished)")
    return 0 if len(results) == total else 1
