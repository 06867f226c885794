"""Memory measurements: peak tensor bytes of a callable (profiler) and peak RSS of a process (Linux).

CPU PyTorch keeps no allocator statistics, so :func:`peak_tensor_bytes` runs the callable once under
``torch.profiler`` with ``profile_memory=True``: every CPU allocation and free made by PyTorch inside the
region is recorded with its size and address, and the peak of the running sum of the blocks allocated in
the region is the largest number of bytes that the region held at once (activations saved for backward,
temporaries, gradients). Tensors that existed before the region (inputs, frozen weights, the adapter
parameters themselves) are not counted. The result is deterministic: memory is measured once, not repeated.
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from pathlib import Path

from torch.profiler import ProfilerActivity, profile


def peak_tensor_bytes(fn: Callable[[], object]) -> int:
    """Peak of bytes allocated inside ``fn()`` and not yet freed, over the run of ``fn()`` (CPU).

    Frees of blocks allocated before the call (e.g. last step's gradients, released when ``fn`` resets
    them) are ignored: only blocks whose allocation was recorded inside the region count.
    """
    from torch._C._profiler import _EventType

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocations = sorted(
        (
            (node.start_time_ns, node.typed[1].ptr, node.typed[1].alloc_size)
            for node in _walk(prof.profiler.kineto_results.experimental_event_tree())
            if node.typed[0] == _EventType.Allocation
        ),
        key=lambda item: item[0],
    )
    live: dict[int, int] = {}
    current = peak = 0
    for _, ptr, size in allocations:
        if size > 0:
            live[ptr] = size
            current += size
            peak = max(peak, current)
        elif ptr in live:
            current -= live.pop(ptr)
    return peak


def _walk(nodes):
    for node in nodes:
        yield node
        yield from _walk(node.children)


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS; False where Linux does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_bytes(field: str = "VmRSS") -> int:
    """``VmRSS`` (current) or ``VmHWM`` (peak since start or since :func:`reset_peak_rss`) in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    # not Linux: only the lifetime peak is available
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"
