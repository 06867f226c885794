"""Run the benchmarks and write the markdown report (one command; not part of the test suite).

    python benchmarks/run.py                 # everything → docs/benchmarks.md (+ docs/benchmarks/*.png)
    python benchmarks/run.py --quick         # fewer shapes and repeats
    python benchmarks/run.py --sections layer,size --out /tmp/report.md

Sections: ``layer`` (one adapted linear layer), ``model`` (SmolLM2-135M training and generation),
``size`` (adapter files), ``scaling`` (cost against m, n and r, with a plot). See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable as a package
    sys.path.insert(0, str(ROOT))
    __package__ = "benchmarks"

SECTIONS = ("layer", "model", "size", "scaling")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: steadier on a shared machine)"
    )
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"), help="report path")
    parser.add_argument("--plots", default=str(ROOT / "docs" / "benchmarks"), help="folder for plots")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")
    return args


@contextlib.contextmanager
def quiet_stderr():
    """Silence the C++ profiler's start/stop lines (written to file descriptor 2) inside the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def summary(sections) -> str:
    from .report import table, verdict

    rows = [
        [c.target, c.measured, c.where, verdict(c.met, c.informative)] for s in sections for c in s.checks
    ]
    return table(["target", "measured (median [IQR])", "configuration", "verdict"], rows)


def closing_note(sections) -> str:
    checks = [c for s in sections for c in s.checks if not c.informative]
    met = [c.target for c in checks if c.met]
    missed = [f"{c.target} ({c.where})" if c.where else c.target for c in checks if not c.met]
    lines = [f"{len(met)} of {len(checks)} target checks of the library defaults met in this run."]
    if missed:
        lines.append("Missed: " + "; ".join(missed) + ". The sections above say why.")
    extra = [c for s in sections for c in s.checks if c.informative]
    if extra:
        lines.append(
            f"Informative rows (plain-autograd training, `lean_backward=False`, not the default): "
            f"{sum(c.met for c in extra)} of {len(extra)} within the same targets."
        )
    return " ".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    import importlib

    import torch

    from .report import Options, Section, environment
    from .timing import clock_name, use_thread_cpu_time

    torch.set_num_threads(args.threads)
    use_thread_cpu_time(args.threads == 1)
    opts = Options(
        quick=args.quick, threads=args.threads, out_dir=args.plots, report=args.out, seed=args.seed
    )
    command = "python benchmarks/run.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    started = time.time()
    env = environment(args.threads) + f"\n| clock | {clock_name()} |"
    results = []
    failed = 0
    for name in args.sections.split(","):
        module = importlib.import_module(f".{name}", __package__)
        print(f"[benchmarks] {name} ...", flush=True)
        t0 = time.time()
        try:
            with quiet_stderr():
                section = module.run(opts)
        except Exception:  # noqa: BLE001  (report the failure, run the other sections)
            failed += 1
            trace = traceback.format_exc()
            print(trace, file=sys.stderr)
            section = Section(f"{name} (failed)", f"```\n{trace}\n```")
        section.seconds = time.time() - t0
        print(f"[benchmarks] {name} done in {section.seconds:.0f} s", flush=True)
        results.append(section)
        write_report(Path(args.out), command, started, env, results, final=False)  # progress so far
    total = write_report(Path(args.out), command, started, env, results, final=True)
    print(f"[benchmarks] report written to {args.out} ({total / 60:.1f} min)")
    return 1 if failed else 0


def write_report(out: Path, command: str, started: float, env: str, results: list, final: bool) -> float:
    """Write the markdown report (also after each section, marked as partial); returns elapsed seconds."""
    total = time.time() - started
    cpu = time.process_time()
    state = "" if final else " — **partial: the run is still going or was interrupted**"
    parts = [
        "# Benchmarks",
        (
            f"Produced by `{command.strip()}` in {total / 60:.1f} min wall-clock, {cpu / 60:.1f} min CPU of the "
            "main process "
            f"({time.strftime('%Y-%m-%d %H:%M %Z')}){state}. Method and code: `benchmarks/README.md`."
        ),
        (
            "Every comparison is a ratio formed inside one run: the variants are timed in interleaved rounds "
            "(order rotating each round), a ratio is taken per round, and the median is reported with the "
            "interquartile range in brackets. The machine is shared with other jobs (load average in the "
            "environment table), so blocks are timed by the CPU time of the benchmarking thread (torch on one "
            "thread); absolute times still move from run to run, the ratios are what to read."
        ),
        environment_block(env),
        "## Targets",
        summary(results),
    ]
    findings = Path(__file__).with_name("findings.md")
    if findings.is_file():  # the design rationale of the measured code (profiles, what was tried)
        parts.append(findings.read_text().strip())
    for section in results:
        parts += [f"## {section.title}", section.body, f"*Section time: {section.seconds:.0f} s.*"]
    parts += ["## Closing note", closing_note(results)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n\n".join(parts) + "\n")
    return total


def environment_block(env: str) -> str:
    return "### Environment\n\n" + env


if __name__ == "__main__":
    raise SystemExit(main())
