"""Section 1 — one adapted linear layer: PRoLoRA vs PEFT's LoRA at the same rank, and vs the naive reference.

Training shapes: forward + backward over 4096 tokens, hidden h = o ∈ {576, 4096}, r ∈ {8, 64} (PRoLoRA
with the paper's u = 1, m = n = 7; section 4 sweeps r). Variants: PEFT's LoRA, PRoLoRA as the library
trains by default (``lean_backward = True``: A and B gathered in forward and again in backward, not saved),
PRoLoRA with ``lean_backward = False`` (the same gathers under plain autograd) and the naive reference.
Decode shapes: forward without autograd over 1 and 8 tokens: LoRA, PRoLoRA with its expanded-factor cache
(the library default, two ``F.linear`` calls on a cache hit), PRoLoRA from the chunks
(``cache_expanded = False``) and the naive reference.

What is timed is the adapter: each layer's frozen base is swapped for a stub that returns a precomputed
output (:func:`adapters.stub_base`), so the numbers are what the adapter adds to the layer, residual add
and Python dispatch included. The base matmul is the same for every variant and, at h = 4096, 10–100×
larger than the adapter; with it, every ratio is ≈ 1 (shown at h = 576 in the "full layer" table).

Memory (training) = adapter parameter bytes + the peak of bytes allocated during forward + backward
(activations saved for backward, temporaries, gradients; :func:`memory.peak_tensor_bytes`). The input, the
frozen weight and the base output are common to all variants and not counted. Memory (decode) = the
resident adapter bytes (parameters plus, for the cache, the expanded A and B) and the per-call peak.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from . import adapters as ad
from .memory import format_bytes, peak_tensor_bytes
from .report import Check, Options, Section, table
from .timing import Stat, format_seconds, interleaved, ratio

TRAIN_TOKENS = 4096
TRAIN_TARGET = 1.05
MEMORY_TARGET = 1.0
DECODE_TARGET = 1.1


@dataclass
class Grid:
    """Shapes and repeat counts of one run (fewer with ``--quick``)."""

    train: list[tuple[int, int]]  # (h, r), adapter only
    full: list[tuple[int, int]]  # (h, r), real base included
    decode: list[tuple[int, int]]  # (h, r)
    decode_tokens: tuple[int, ...]
    train_rounds: int
    decode_rounds: int

    @classmethod
    def for_options(cls, opts: Options) -> Grid:
        if opts.quick:
            return cls([(576, 8)], [(576, 8)], [(576, 8)], (1,), 3, 11)
        shapes = [(h, r) for h in (576, 4096) for r in (8, 64)]  # section 4 sweeps r more finely
        return cls(shapes, [(576, 64)], shapes, (1, 8), 4, 11)


def _param_bytes(layer) -> int:
    return sum(p.numel() * p.element_size() for p in ad.trainable(layer))


def _layers(h: int, r: int, seed: int) -> dict:
    """LoRA, PRoLoRA and the naive reference on one shared frozen base ``nn.Linear(h, h)``."""
    base = ad.make_base(h, h, seed)
    prolora = ad.prolora_layer(base, ad.PRoLoRAShape(r))
    return {"LoRA": ad.lora_layer(base, r), "PRoLoRA": prolora, "naive": ad.naive_layer(prolora)}


def _train_inputs(h: int, tokens: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, h, generator=gen).requires_grad_(True)
    return x, torch.randn(tokens, h, generator=gen)


PLAIN = "PRoLoRA (plain autograd)"  # lean_backward = False


def _check_same_function(layers: dict, x: torch.Tensor, g: torch.Tensor) -> None:
    """Every PRoLoRA variant must compute the naive reference's output and gradients (else the comparison
    is void): forward without autograd, and forward + backward (input and the four compact tensors)."""
    naive = ad.naive_layer(layers["PRoLoRA"])
    with torch.no_grad():
        if not torch.allclose(layers["PRoLoRA"](x), naive(x), rtol=1e-4, atol=1e-5):
            raise AssertionError("PRoLoRA and the naive reference disagree without autograd.")
    grads = {}
    for name, layer in (("naive", naive), ("PRoLoRA", layers["PRoLoRA"]), (PLAIN, layers[PLAIN])):
        xi = x.detach().clone().requires_grad_(True)
        params = (
            [naive.a0, naive.a_u, naive.b0, naive.b_u]
            if layer is naive
            else [getattr(layer, f"prolora_{k}")["default"] for k in ("A0", "A_u", "B0", "B_u")]
        )
        for p in params:
            p.grad = None
        out = layer(xi)
        out.backward(g)
        grads[name] = [out.detach(), xi.grad] + [p.grad for p in params]
        for p in params:
            p.grad = None
    for name in ("PRoLoRA", PLAIN):
        for what, a, b in zip(
            ("output", "grad x", "grad A_0", "grad A_u", "grad B_0", "grad B_u"),
            grads[name],
            grads["naive"],
            strict=False,
        ):
            if not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
                raise AssertionError(
                    f"{name}: {what} disagrees with the naive reference in training "
                    f"(max abs diff {(a - b).abs().max().item():.3g})."
                )


def _twin(layer, h: int, r: int, seed: int):
    """A second PRoLoRA layer holding copies of ``layer``'s tensors, on the same frozen base."""
    twin = ad.prolora_layer(ad.make_base(h, h, seed), ad.PRoLoRAShape(r))
    twin.load_state_dict(layer.state_dict())
    twin.base_layer = layer.base_layer
    return twin


def _training(grid: Grid, opts: Options, stub: bool) -> list[dict]:
    """Forward + backward timings and memory of each variant, adapter only (``stub``) or full layer."""
    rows = []
    for h, r in grid.train if stub else grid.full:
        layers = _layers(h, r, opts.seed)
        layers[PLAIN] = _twin(layers["PRoLoRA"], h, r, opts.seed)
        layers[PLAIN].lean_backward = False
        x, g = _train_inputs(h, TRAIN_TOKENS, opts.seed)
        for layer in layers.values():
            layer.train()
        _check_same_function(layers, x[:8].detach(), g[:8])
        with contextlib.ExitStack() as stack:
            if stub:
                out = torch.zeros(TRAIN_TOKENS, h)
                for layer in layers.values():
                    stack.enter_context(ad.stub_base(layer, out))
            steps = {name: ad.train_step(layer, x, g) for name, layer in layers.items()}
            times = interleaved(steps, rounds=grid.train_rounds, block_s=0.2)
            memory = {
                name: _param_bytes(layers[name]) + peak_tensor_bytes(step) for name, step in steps.items()
            }
        rows.append({"h": h, "r": r, "times": times, "memory": memory})
    return rows


def _decode(grid: Grid, opts: Options) -> list[dict]:
    """No-autograd forward timings at decode shapes: LoRA, PRoLoRA (cache / chunks), naive."""
    rows = []
    for h, r in grid.decode:
        layers = _layers(h, r, opts.seed)
        chunks = _twin(layers["PRoLoRA"], h, r, opts.seed)
        chunks.cache_expanded = False
        variants = {
            "LoRA": layers["LoRA"],
            "PRoLoRA (cache)": layers["PRoLoRA"],
            "PRoLoRA (chunks)": chunks,
            "naive": layers["naive"],
        }
        for layer in variants.values():
            layer.eval()
        for tokens in grid.decode_tokens:
            x = torch.randn(tokens, h, generator=torch.Generator().manual_seed(opts.seed))
            with contextlib.ExitStack() as stack:
                out = torch.zeros(tokens, h)
                for layer in variants.values():
                    stack.enter_context(ad.stub_base(layer, out))
                steps = {name: ad.decode_step(layer, x) for name, layer in variants.items()}
                reference = steps["naive"]()
                for name, step in steps.items():
                    # twice: the first call of the cache variant fills the cache, the second is a hit
                    if name != "LoRA" and not all(
                        torch.allclose(step(), reference, rtol=1e-4, atol=1e-5) for _ in range(2)
                    ):
                        raise AssertionError(f"{name} disagrees with the naive reference at decode.")
                times = interleaved(steps, rounds=grid.decode_rounds, block_s=0.02)
                peak = {name: peak_tensor_bytes(step) for name, step in steps.items()}
            resident = {name: _param_bytes(layer) for name, layer in variants.items()}
            resident["PRoLoRA (cache)"] += 4 * r * 2 * h  # the cached expanded A (r, h) and B (h, r), fp32
            rows.append(
                {"h": h, "r": r, "tokens": tokens, "times": times, "peak": peak, "resident": resident}
            )
    return rows


def _train_table(rows: list[dict]) -> str:
    names = ["PRoLoRA", PLAIN, "naive"]
    headers = (
        ["h", "r", "LoRA time"]
        + [f"{n} / LoRA time" for n in names]
        + ["LoRA memory"]
        + [f"{n} / LoRA memory" for n in names[:2]]
    )
    out = []
    for row in rows:
        t, mem = row["times"], row["memory"]
        out.append(
            [row["h"], row["r"], format_seconds(Stat.of(t["LoRA"]).median)]
            + [ratio(t, n, "LoRA").ratio_text() for n in names]
            + [format_bytes(mem["LoRA"])]
            + [f"{mem[n] / mem['LoRA']:.4f}×" for n in names[:2]]
        )
    return table(headers, out)


def _decode_table(rows: list[dict]) -> str:
    names = ["PRoLoRA (cache)", "PRoLoRA (chunks)", "naive"]
    headers = (
        ["h", "r", "tokens", "LoRA"] + [f"{n} / LoRA" for n in names] + ["cache / naive", "chunks / naive"]
    )
    out = []
    for row in rows:
        t = row["times"]
        out.append(
            [row["h"], row["r"], row["tokens"], format_seconds(Stat.of(t["LoRA"]).median)]
            + [ratio(t, n, "LoRA").ratio_text() for n in names]
            + [
                ratio(t, "PRoLoRA (cache)", "naive").ratio_text(),
                ratio(t, "PRoLoRA (chunks)", "naive").ratio_text(),
            ]
        )
    return table(headers, out)


def _decode_memory_table(rows: list[dict]) -> str:
    names = ["LoRA", "PRoLoRA (cache)", "PRoLoRA (chunks)", "naive"]
    out = []
    for row in rows:
        if row["tokens"] != max(r["tokens"] for r in rows):
            continue
        out.append(
            [row["h"], row["r"], row["tokens"]]
            + [f"{format_bytes(row['resident'][n])} / {format_bytes(row['peak'][n])}" for n in names]
        )
    return table(["h", "r", "tokens"] + [f"{n}: resident / per-call peak" for n in names], out)


def _worst(rows: list[dict], num: str, den: str) -> tuple[Stat, dict]:
    """The configuration with the largest median ratio ``num / den``."""
    return max(((ratio(r["times"], num, den), r) for r in rows), key=lambda item: item[0].median)


def run(opts: Options) -> Section:
    grid = Grid.for_options(opts)
    train = _training(grid, opts, stub=True)
    full = _training(grid, opts, stub=False)
    decode = _decode(grid, opts)

    checks = []
    variants = (("PRoLoRA", "", False), (PLAIN, "; plain autograd, `lean_backward=False`", True))
    for name, label, informative in variants:
        stat, row = _worst(train, name, "LoRA")
        checks.append(
            Check(
                f"Training step PRoLoRA / LoRA, same rank ≤ {TRAIN_TARGET}× (layer, adapter only{label})",
                stat.ratio_text(),
                stat.median <= TRAIN_TARGET,
                f"worst: h={row['h']}, r={row['r']}",
                informative,
            )
        )
    for name, label, informative in variants:
        both = [(r, "adapter only") for r in train] + [(r, "full layer") for r in full]
        mem_row, where = max(both, key=lambda item: item[0]["memory"][name] / item[0]["memory"]["LoRA"])
        mem = mem_row["memory"][name] / mem_row["memory"]["LoRA"]
        checks.append(
            Check(
                f"Peak memory PRoLoRA / LoRA ≤ {MEMORY_TARGET}× (layer, params + step peak{label})",
                f"{mem:.4f}×",
                mem <= MEMORY_TARGET,
                f"worst: {where}, h={mem_row['h']}, r={mem_row['r']}",
                informative,
            )
        )
    stat, row = _worst(decode, "PRoLoRA (cache)", "LoRA")
    checks.append(
        Check(
            f"Decode adapter overhead / LoRA's ≤ {DECODE_TARGET}× (expanded-factor cache)",
            stat.ratio_text(),
            stat.median <= DECODE_TARGET,
            f"worst: h={row['h']}, r={row['r']}, tokens={row['tokens']}",
        )
    )
    stat, row = _worst(decode, "PRoLoRA (cache)", "naive")
    checks.append(
        Check(
            "PRoLoRA faster than the materialise-every-forward reference at decode",
            stat.ratio_text(),
            stat.median < 1.0,
            f"worst: h={row['h']}, r={row['r']}, tokens={row['tokens']}",
        )
    )

    body = "\n\n".join(
        [
            (
                f"Training shapes: {TRAIN_TOKENS} tokens, forward + backward, adapter only (stub base), "
                f"{grid.train_rounds} interleaved rounds of ≈0.2 s blocks. Ratios: per-round median [interquartile "
                "range]. Memory: adapter parameters + step peak (see `benchmarks/layer.py`), measured once "
                "(deterministic). *PRoLoRA*: the library default (`lean_backward = True`: A and B gathered from the "
                "chunks in forward and again in backward, never saved for it); *plain autograd*: "
                "`lean_backward = False`, the same gathers recorded by autograd (A and B kept for backward). Before "
                "timing, both are checked against the naive reference: output and gradients of the input and of the "
                "four compact tensors."
            ),
            _train_table(train),
            "Full layer (real frozen base included, same protocol; the base matmul dilutes every difference):",
            _train_table(full),
            (
                f"Decode shapes: forward without autograd, adapter only (stub base), {grid.decode_rounds} interleaved "
                "rounds of ≈0.02 s blocks. *cache*: the library default (expanded A, B cached, rebuilt when a chunk "
                "changes; a cache hit is two `F.linear` calls); *chunks*: `cache_expanded=False` (compute from the "
                "chunks, no dense copy); *naive*: A, B rebuilt by roll+cat on every call (the authors' approach)."
            ),
            _decode_table(decode),
            "Decode memory (adapter bytes that stay resident / peak bytes allocated during one call):",
            _decode_memory_table(decode),
        ]
    )
    return Section("1. Layer level", body, checks)
