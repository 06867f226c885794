"""Probe: does ``torch.compile`` make chunk compute (``cache_expanded=False``) cheaper at decode shapes?

Standalone, not part of ``run.py`` (compiling takes ~30 s per shape on 2 cores)::

    python benchmarks/compile_probe.py [--hidden 576] [--rank 8] [--tokens 1]

Times, interleaved (thread CPU time, one torch thread), the adapter math of one layer without autograd: the cached expanded factors (two
``F.linear``), :func:`prolora.equations.chunked_adapter_forward` plus the unshared ranks (eager), and
the same function compiled with ``torch.compile(dynamic=False)``. Prints ratios to the cached path.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import torch
import torch.nn.functional as F

from prolora import equations as eq

from .timing import Stat, interleaved, ratio, use_thread_cpu_time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    use_thread_cpu_time(True)  # one thread: its CPU time, not the other jobs' time
    h, r, u, m = args.hidden, args.rank, 1, 7
    shared, stride = r - u, eq.default_stride(r, u, m)
    gen = torch.Generator().manual_seed(0)
    a0, b0 = (
        torch.randn(shared, math.ceil(h / m), generator=gen),
        torch.randn(math.ceil(h / m), shared, generator=gen),
    )
    a_u, b_u = torch.randn(u, h, generator=gen), torch.randn(h, u, generator=gen)
    idx_a = eq.roll_indices(shared, m, stride, True, +1)
    idx_b = eq.roll_indices(shared, m, stride, True, -1)
    a = eq.expand_a(a0, a_u, h, r, m, stride)
    b = eq.expand_b(b0, b_u, h, r, m, stride)
    x = torch.randn(args.tokens, h, generator=gen)

    def chunks(x):
        out = eq.chunked_adapter_forward(x, a0, b0, h, h, m, m, idx_a, idx_b)
        return (out + F.linear(F.linear(x, a_u), b_u)) * 2.0

    def cached(x):
        return F.linear(F.linear(x, a) * 2.0, b)

    start = time.time()
    compiled = torch.compile(chunks, dynamic=False)
    with torch.no_grad():
        compiled(x)
        compile_s = time.time() - start
        assert torch.allclose(compiled(x), cached(x), rtol=1e-4, atol=1e-3)
        times = interleaved(
            {
                "cached": lambda: cached(x),
                "chunks (eager)": lambda: chunks(x),
                "chunks (compiled)": lambda: compiled(x),
            },
            rounds=21,
            block_s=0.02,
        )
    print(f"h={h} r={r} tokens={args.tokens}; compile + first call {compile_s:.1f} s")
    for name in times:
        print(
            f"  {name:18s} {Stat.of(times[name]).time_text():>10s}  / cached {ratio(times, name, 'cached').ratio_text()}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
