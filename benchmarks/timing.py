"""Interleaved, repeated timing and the statistics every section reports.

The machine the benchmarks run on is shared and noisy, so no absolute time is compared across variants
measured at different moments. Instead :func:`interleaved` runs the variants in rounds: each round times
one block of every variant, back to back, in an order that rotates from round to round (so no variant
always runs first or last). Ratios are then formed per round, between blocks measured seconds apart, and
summarised by their median and spread (:class:`Stat`). With one torch thread the clock is the thread's CPU
time (:func:`use_thread_cpu_time`), which other jobs on the machine do not inflate.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Stat:
    """Median and spread of repeated measurements: interquartile range and full range."""

    median: float
    q1: float
    q3: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        vals = sorted(values)
        if len(vals) >= 4:
            q1, _, q3 = statistics.quantiles(vals, n=4, method="inclusive")
        else:
            q1, q3 = vals[0], vals[-1]
        return cls(statistics.median(vals), q1, q3, vals[0], vals[-1], len(vals))

    def ratio_text(self) -> str:
        """``1.02× [1.00–1.04]``: median and interquartile range."""
        return f"{self.median:.3f}× [{self.q1:.3f}–{self.q3:.3f}]"

    def time_text(self) -> str:
        """Median time with a readable unit."""
        return format_seconds(self.median)


def format_seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


_clock: Callable[[], float] = time.perf_counter


def use_thread_cpu_time(enabled: bool) -> None:
    """Time blocks by this thread's CPU time (``time.thread_time``) instead of wall-clock time.

    With torch on one thread every kernel runs on the calling thread, so its CPU time is the work done,
    without the time the OS gave to other jobs on a shared machine (which wall-clock time would include).
    """
    global _clock
    _clock = time.thread_time if enabled else time.perf_counter


def clock_name() -> str:
    return "CPU time of the benchmarking thread" if _clock is time.thread_time else "wall-clock time"


def _time_block(fn: Callable[[], object], iters: int) -> float:
    """Seconds per call of ``fn`` over one block of ``iters`` calls (garbage collector paused)."""
    gc.collect()
    gc.disable()
    try:
        start = _clock()
        for _ in range(iters):
            fn()
        return (_clock() - start) / iters
    finally:
        gc.enable()


def calibrate(fn: Callable[[], object], block_s: float, max_iters: int = 10_000) -> int:
    """Calls per block so that one block lasts about ``block_s`` seconds (at least one call)."""
    fn()  # warm-up: caches, lazy initialisation, allocator
    one = _time_block(fn, 1)
    iters = 1
    while one * iters < block_s / 4 and iters < max_iters:  # grow on a short probe, then extrapolate
        iters *= 4
        one = _time_block(fn, iters)
    return max(1, min(max_iters, round(block_s / max(one, 1e-9))))


def interleaved(
    fns: dict[str, Callable[[], object]],
    rounds: int,
    block_s: float = 0.1,
    warmup: int = 1,
    iters: int | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each function, one value per round; rounds interleave all functions.

    Each function is warmed up ``warmup`` times and calibrated to blocks of about ``block_s`` seconds
    (or runs exactly ``iters`` calls per block when given: for calls that take seconds). Round ``k`` runs
    the functions in the order rotated by ``k``. Returns name → ``rounds`` timings.
    """
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    if iters is None:
        per_block = {name: calibrate(fns[name], block_s) for name in names}
    else:
        per_block = dict.fromkeys(names, iters)
    times: dict[str, list[float]] = {name: [] for name in names}
    for k in range(rounds):
        shift = k % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(_time_block(fns[name], per_block[name]))
    return times


def ratio(times: dict[str, list[float]], num: str, den: str) -> Stat:
    """Per-round ratio ``times[num] / times[den]`` summarised (paired: same round, same moment)."""
    return Stat.of([a / b for a, b in zip(times[num], times[den], strict=False)])


def diff_ratio(times: dict[str, list[float]], num: str, den: str, base: str) -> Stat:
    """Per-round ratio of overheads ``(num − base) / (den − base)`` (what each adds over ``base``)."""
    out = []
    for a, b, c in zip(times[num], times[den], times[base], strict=False):
        out.append((a - c) / (b - c) if b > c else float("nan"))
    return Stat.of(out)
