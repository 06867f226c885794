"""Markdown building blocks shared by the sections: tables, target checks, the environment header."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Check:
    """One target of the issue, judged on one measurement."""

    target: str  # e.g. "Training step PRoLoRA / LoRA (same rank) ≤ 1.05×"
    measured: str  # the number it was judged on, with its spread
    met: bool
    where: str = ""  # which configuration the number comes from (the worst one)
    informative: bool = False  # a non-default variant judged against the same target: shown, not counted


@dataclass
class Section:
    """What a benchmark section returns: its markdown and the targets it checked."""

    title: str
    body: str
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class Options:
    """Run-wide settings (see ``run.py --help``)."""

    quick: bool
    threads: int
    out_dir: str  # where plots go (docs/benchmarks)
    report: str  # the markdown report's path (plots are linked relative to it)
    seed: int = 0


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(met: bool, informative: bool = False) -> str:
    if informative:
        return "met (informative)" if met else "not met (informative)"
    return "met" if met else "**missed**"


def environment(threads: int) -> str:
    """Versions and machine facts that the numbers depend on."""
    import peft
    import torch
    import transformers

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return table(
        ["item", "value"],
        [
            [
                "machine",
                f"{platform.machine()}, {os.cpu_count()} logical CPUs ({cpu}); load average at start {load}",
            ],
            ["torch threads", f"{threads} (`torch.set_num_threads`)"],
            [
                "versions",
                (
                    f"python {platform.python_version()}, torch {torch.__version__}, "
                    f"transformers {transformers.__version__}, peft {peft.__version__}"
                ),
            ],
            ["accelerator", "none: CPU only. No GPU machine was lent to this task, so no GPU numbers exist."],
        ],
    )
