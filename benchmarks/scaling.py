"""Section 4 — how the per-layer cost grows with the sharing rates m, n and the rank r (with a plot).

One adapted layer h = o = 1024, adapter only (stub base, as in section 1). Training: forward + backward
over 1024 tokens, sweeping m (n = 1), n (m = 1) and r (m = n = 8), u = 1 throughout. Decode: forward of one
token without autograd, sweeping m = n. Every point is the per-round median ratio to PEFT's LoRA at the
same rank, measured in the same interleaved rounds, with its interquartile range as error bar.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from . import adapters as ad
from .report import Options, Section, table
from .timing import Stat, interleaved, ratio

H = 1024
TOKENS = 1024


def _point(r: int, m: int, n: int, decode: bool, rounds: int, seed: int) -> dict[str, Stat]:
    """Ratios to LoRA of PRoLoRA (and its chunk mode at decode) and the naive reference at one setting."""
    base = ad.make_base(H, H, seed)
    prolora = ad.prolora_layer(base, ad.PRoLoRAShape(r, 1, m, n))
    variants = {"LoRA": ad.lora_layer(base, r), "PRoLoRA": prolora, "naive": ad.naive_layer(prolora)}
    tokens = 1 if decode else TOKENS
    x = torch.randn(tokens, H, generator=torch.Generator().manual_seed(seed))
    if decode:
        chunks = ad.prolora_layer(base, ad.PRoLoRAShape(r, 1, m, n))
        chunks.load_state_dict(prolora.state_dict())
        chunks.cache_expanded = False
        variants["PRoLoRA (chunks)"] = chunks
    else:
        x.requires_grad_(True)
        grad = torch.randn(tokens, H)
    with contextlib.ExitStack() as stack:
        out = torch.zeros(tokens, H)
        for layer in variants.values():
            layer.train(not decode)
            stack.enter_context(ad.stub_base(layer, out))
        steps = {
            name: ad.decode_step(layer, x) if decode else ad.train_step(layer, x, grad)
            for name, layer in variants.items()
        }
        times = interleaved(steps, rounds=rounds, block_s=0.02 if decode else 0.05)
    return {name: ratio(times, name, "LoRA") for name in variants if name != "LoRA"}


def _sweeps(opts: Options) -> dict[str, tuple[str, list[int], list[dict[str, Stat]]]]:
    rates = [1, 64] if opts.quick else [1, 4, 16, 64]
    ranks = [8, 64] if opts.quick else [8, 32, 128]
    train_rounds, decode_rounds = (3, 5) if opts.quick else (4, 9)
    seed = opts.seed
    return {
        "training vs m (n = 1, r = 8)": (
            "m",
            rates,
            [_point(8, m, 1, False, train_rounds, seed) for m in rates],
        ),
        "training vs n (m = 1, r = 8)": (
            "n",
            rates,
            [_point(8, 1, n, False, train_rounds, seed) for n in rates],
        ),
        "training vs r (m = n = 8)": (
            "r",
            ranks,
            [_point(r, 8, 8, False, train_rounds, seed) for r in ranks],
        ),
        "decode (1 token) vs m = n (r = 8)": (
            "m = n",
            rates,
            [_point(8, k, k, True, decode_rounds, seed) for k in rates],
        ),
    }


def plot(sweeps, path: Path) -> None:
    """One panel per sweep: median ratio to LoRA with interquartile error bars, log-2 x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    for ax, (title, (xlabel, xs, points)) in zip(axes.flat, sweeps.items(), strict=False):
        for name in points[0]:
            med = [p[name].median for p in points]
            err = [
                [p[name].median - p[name].q1 for p in points],
                [p[name].q3 - p[name].median for p in points],
            ]
            ax.errorbar(xs, med, yerr=err, marker="o", capsize=3, label=name)
        ax.axhline(1.0, color="grey", lw=1, ls="--", label="LoRA (same rank)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("time / LoRA time")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"Adapter cost per layer relative to PEFT LoRA (h = o = {H}, CPU, 1 thread)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(opts: Options) -> Section:
    sweeps = _sweeps(opts)
    path = Path(opts.out_dir).resolve() / "scaling.png"
    plot(sweeps, path)
    tables = []
    for title, (xlabel, xs, points) in sweeps.items():
        names = list(points[0])
        rows = [[x] + [p[name].ratio_text() for name in names] for x, p in zip(xs, points, strict=False)]
        tables += [f"**{title}** (time / LoRA time)", table([xlabel] + names, rows)]
    body = "\n\n".join(
        [
            f"h = o = {H}; training over {TOKENS} tokens (forward + backward), decode over 1 token; adapter only.",
            f"![scaling]({os.path.relpath(path, Path(opts.report).resolve().parent)})",
            *tables,
        ]
    )
    return Section("4. Scaling with m, n and r", body)
