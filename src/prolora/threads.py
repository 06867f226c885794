"""How many CPU threads torch uses: ``--threads N`` of ``prolora train``, ``eval``, ``generate`` and ``chat``.

torch's own default is one thread per core. On a CPU that other processes also use, that is the slowest
choice: torch's threads wait for each other at every operation, and a thread that lost its core stalls
the others. Measured on this project's 2-core machine with one busy-loop process beside the run
(``python benchmarks/threads.py``, SmolLM2-135M training micro-steps; docs/train.md has the table): two
threads took several times as long as one; on an idle machine two threads were faster.

So the default is: torch's default (one per core this process may run on) minus the cores that other
work keeps busy, read from the 1-minute load average (rounded, never below 1 thread). An explicit
``--threads N`` wins, then ``OMP_NUM_THREADS`` when it is set (torchrun sets it to 1 for each process),
then this rule.
"""

from __future__ import annotations

import functools
import os


def usable_cpus() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def busy_cpus() -> float:
    """Cores busy with other work: the 1-minute load average (runnable processes), 0 when unknown."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def default_threads(cpus: int | None = None, load: float | None = None, cap: int | None = None) -> int:
    """``min(cap, cpus - round(load))``, at least 1: one thread per core no other process keeps busy.

    ``cpus`` defaults to :func:`usable_cpus`, ``load`` to :func:`busy_cpus`, ``cap`` (the most threads
    worth using) to ``cpus``.
    """
    cpus = usable_cpus() if cpus is None else cpus
    load = busy_cpus() if load is None else load
    cap = cpus if cap is None else cap
    return max(1, min(cap, cpus - int(load + 0.5)))


def set_threads(threads: int | None = None) -> tuple[int, str]:
    """Set torch's intra-op thread count; returns ``(threads, why)``, ``why`` a short phrase for the output.

    Raises:
        ValueError: ``threads`` < 1.
    """
    import torch

    _torch_default()  # remember torch's choice before the first change
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads {threads}: use 1 or more threads")
        why = "--threads"
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        threads, why = int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    else:
        cpus, load = usable_cpus(), busy_cpus()
        threads = default_threads(cpus, load, cap=_torch_default())
        why = f"{cpus} cores, load {load:.1f}: one thread per free core; change with --threads"
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads, why


@functools.lru_cache(maxsize=1)
def _torch_default() -> int:
    """torch's own thread count (one per physical core), read before :func:`set_threads` changes it."""
    import torch

    return torch.get_num_threads()


def add_threads_argument(parser) -> None:
    """The ``--threads N`` flag (default: :func:`set_threads`'s rule)."""
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch CPU threads (default: one per core not busy with other processes, from the "
        "load average; OMP_NUM_THREADS when set). On a shared CPU, more threads than free "
        "cores is several times slower",
    )
