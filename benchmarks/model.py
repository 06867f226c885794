"""Section 2 — the embedded SmolLM2-135M: training throughput, peak RSS, generation speed.

Training: LoRA r=8 (same rank), PRoLoRA r=8/u=1/m=n=7 (the library default, and with
``set_lean_backward(False)``: plain autograd over the same gathers) and LoRA r=2 (same budget) on all block
linears, each on its own copy of the base model, one AdamW step per block, interleaved rounds, at several
step sizes: short steps (1 × 32 and 1 × 128 tokens), where the fixed per-module Python cost weighs most,
and the training defaults' size (micro-batch 4 × 128 = 512 tokens; the trainer's defaults are micro-batch
4 × up to 512 tokens). Batches are fixed random token ids (throughput does not depend on the text).
Dropout 0.1 as in the paper.

Peak RSS: one fresh subprocess per variant and repeat (interleaved), because a process's peak RSS cannot
be shared between variants. Each child loads the base model (saved once by the parent), resets its peak
RSS counter (``/proc/self/clear_refs``), wraps the adapter and runs training steps at the largest step
size; reported are the peak RSS and its increase over the loaded base model.

Generation: greedy decoding of a fixed number of new tokens (batch 1, KV cache on) with no adapter, and
with the LoRA r=8 and PRoLoRA r=8 adapters just trained (so ΔW ≠ 0) unmerged (PRoLoRA with its
expanded-factor cache, the default, and computing from the chunks) and merged into the base weights
(``merge_adapter``), interleaved rounds of one ``generate`` call each.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from . import smollm
from .memory import format_bytes, peak_tensor_bytes, reset_peak_rss, rss_bytes
from .report import Check, Options, Section, table
from .timing import Stat, interleaved, ratio

TRAIN_TARGET = 1.05
PLAIN = "PRoLoRA r=8 (plain autograd)"  # set_lean_backward(False): informative, not the default
MEMORY_TARGET = 1.0
DROPOUT = 0.1


@dataclass(frozen=True)
class Settings:
    steps: tuple[tuple[int, int], ...]  # training (batch, sequence length): one interleaved run each
    train_rounds: int
    rss_steps: int
    rss_repeats: int
    new_tokens: int
    gen_rounds: int

    @classmethod
    def for_options(cls, opts: Options) -> Settings:
        if opts.quick:
            return cls(
                steps=((1, 32), (4, 128)),
                train_rounds=2,
                rss_steps=1,
                rss_repeats=0,
                new_tokens=4,
                gen_rounds=2,
            )
        return cls(
            steps=((1, 32), (1, 128), (4, 128)),
            train_rounds=3,
            rss_steps=1,
            rss_repeats=3,
            new_tokens=8,
            gen_rounds=3,
        )

    @property
    def rss_step(self) -> tuple[int, int]:
        """The (batch, sequence length) of the peak-RSS children: the largest step."""
        return max(self.steps, key=lambda bs: bs[0] * bs[1])


def _batch(batch: int, seq: int, vocab: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=gen)


def _train_step(model, batch: torch.Tensor):
    """A closure doing one forward, backward and AdamW step on ``batch`` (labels = inputs)."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _models(base) -> dict:
    """The training variants, each on its own copy of ``base`` (frozen weights shared)."""
    models = {v: smollm.wrap(base, v, DROPOUT) for v in smollm.VARIANTS}
    models[PLAIN] = smollm.wrap(base, "PRoLoRA r=8", DROPOUT)
    models[PLAIN].load_state_dict(models["PRoLoRA r=8"].state_dict())
    models[PLAIN].base_model.set_lean_backward(False)
    return models


def _training(models: dict, settings: Settings, batch_size: int, seq: int, seed: int) -> dict:
    """Interleaved training steps of every variant at one step size (batch × sequence length)."""
    batch = _batch(batch_size, seq, models["LoRA r=8"].config.vocab_size, seed)
    steps = {v: _train_step(m, batch) for v, m in models.items()}
    times = interleaved(steps, rounds=settings.train_rounds, iters=1, warmup=1)
    return {"times": times, "tokens": batch.numel(), "batch": batch_size, "seq": seq}


# ------------------------------------------------------------------------------------------ peak RSS
def _child(variant: str, state_dir: str, batch: int, seq: int, steps: int, seed: int) -> dict:
    """Runs in a fresh process: peak RSS of ``steps`` training steps of ``variant``."""
    torch.set_num_threads(1)
    base = smollm.load_saved_base(Path(state_dir))
    loaded = rss_bytes("VmRSS")
    resettable = reset_peak_rss()
    model = smollm.wrap(base, variant, DROPOUT, copy_base=False)
    step = _train_step(model, _batch(batch, seq, base.config.vocab_size, seed))
    for _ in range(steps):
        step()
    peak = rss_bytes("VmHWM")
    return {"variant": variant, "loaded": loaded, "peak": peak, "resettable": resettable}


def _peak_rss(base, settings: Settings, seed: int) -> dict[str, list[dict]]:
    """Peak RSS of each variant from fresh subprocesses, variants interleaved across repeats."""
    root = Path(__file__).resolve().parent.parent
    results: dict[str, list[dict]] = {v: [] for v in smollm.VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        smollm.save_base(base, Path(tmp))
        for k in range(settings.rss_repeats):
            order = list(smollm.VARIANTS[k % 3 :] + smollm.VARIANTS[: k % 3])
            for variant in order:
                args = json.dumps([variant, tmp, *settings.rss_step, settings.rss_steps, seed])
                proc = subprocess.run(
                    [sys.executable, "-m", "benchmarks.model", "--child", args],
                    cwd=root,
                    capture_output=True,
                    text=True,
                    check=False,
                    env={**os.environ, "PYTHONPATH": str(root)},
                )
                if proc.returncode != 0:
                    raise RuntimeError(f"peak-RSS child for {variant} failed:\n{proc.stderr[-2000:]}")
                results[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


# ------------------------------------------------------------------------------------ tensor memory
def _tensor_memory(models: dict, params: dict, settings: Settings, seed: int) -> dict[str, dict]:
    """Deterministic training memory of each variant (profiler): the peak of tensor bytes allocated during
    one training step after a warm-up step (activations, temporaries, gradients), plus the adapter state
    that outlives a step: parameters and AdamW's two moments, 3 × trainable × 4 bytes."""
    out = {}
    for name, model in models.items():
        step = _train_step(model, _batch(*settings.rss_step, model.config.vocab_size, seed))
        step()  # the optimizer's moments now exist
        peak = peak_tensor_bytes(step)
        out[name] = {"step_peak": peak, "state": 3 * 4 * params[name], "total": peak + 3 * 4 * params[name]}
    return out


def _tensor_report(tensors: dict, settings: Settings) -> tuple[str, Check]:
    rows = [
        [
            name,
            format_bytes(t["state"]),
            format_bytes(t["step_peak"]),
            format_bytes(t["total"]),
            f"{t['total'] / tensors['LoRA r=8']['total']:.4f}×",
        ]
        for name, t in tensors.items()
    ]
    batch, seq = settings.rss_step
    text = "\n\n".join(
        [
            (
                f"Training memory by tensors (deterministic, `torch.profiler`): one {batch} × {seq}-token step after a "
                "warm-up step; *state* = trainable parameters and AdamW's two moments (3 × params × 4 B), *step "
                "peak* = the most bytes the step held at once beyond what existed before it (activations, "
                "temporaries, gradients). The frozen base weights are common to all and not counted."
            ),
            table(["adapter", "state", "step peak", "state + step peak", "/ LoRA r=8"], rows),
        ]
    )
    value = tensors["PRoLoRA r=8"]["total"] / tensors["LoRA r=8"]["total"]
    check = Check(
        f"Peak memory PRoLoRA / LoRA ≤ {MEMORY_TARGET}× (SmolLM2-135M, tensors: state + step peak)",
        f"{value:.4f}×",
        value <= MEMORY_TARGET,
        f"PRoLoRA r=8 vs LoRA r=8, {batch} × {seq} tokens",
    )
    return text, check


# ---------------------------------------------------------------------------------------- generation
def _generation(base, trained: dict, settings: Settings) -> dict:
    """Interleaved ``generate`` calls: no adapter, the trained LoRA r=8 / PRoLoRA r=8 unmerged and merged."""
    tok = smollm.tokenizer()
    prompt = tok("Explain in one paragraph why the sky is blue.", return_tensors="pt")
    variants = {"no adapter": base}
    for name in ("LoRA r=8", "PRoLoRA r=8"):
        model = trained[name]
        variants[f"{name} unmerged"] = model
        merged = copy.deepcopy(model)  # a full copy: merging writes the base weights
        merged.merge_adapter()
        variants[f"{name} merged"] = merged
    chunks = smollm.frozen_sharing_copy(trained["PRoLoRA r=8"])
    chunks.base_model.set_expanded_cache(False)
    variants["PRoLoRA r=8 unmerged, chunks"] = chunks
    for model in variants.values():
        model.eval()

    def generate(model):
        def call():
            with torch.no_grad():
                model.generate(
                    **prompt,
                    max_new_tokens=settings.new_tokens,
                    min_new_tokens=settings.new_tokens,
                    do_sample=False,
                    pad_token_id=tok.eos_token_id,
                )

        return call

    times = interleaved({n: generate(m) for n, m in variants.items()}, rounds=settings.gen_rounds, iters=1)
    return {"times": times, "new_tokens": settings.new_tokens, "prompt": prompt["input_ids"].shape[1]}


# ------------------------------------------------------------------------------------------- report
def _rss_report(rss: dict | None, settings: Settings) -> tuple[str, Check | None]:
    """Markdown for the peak-RSS part and its target check (none when skipped with ``--quick``)."""
    if rss is None:
        return "Peak RSS: skipped with `--quick` (one fresh process per variant takes too long).", None
    peak = {v: Stat.of([r["peak"] for r in rss[v]]) for v in smollm.VARIANTS}
    growth = {v: Stat.of([r["peak"] - r["loaded"] for r in rss[v]]) for v in smollm.VARIANTS}
    rows = [
        [
            v,
            format_bytes(peak[v].median),
            format_bytes(growth[v].median),
            f"{peak[v].median / peak['LoRA r=8'].median:.3f}×",
            f"{growth[v].median / growth['LoRA r=8'].median:.3f}×",
        ]
        for v in smollm.VARIANTS
    ]
    resettable = all(r["resettable"] for runs in rss.values() for r in runs)
    text = "\n\n".join(
        [
            (
                f"Peak RSS: {settings.rss_repeats} fresh process(es) per variant (interleaved), {settings.rss_steps} "
                f"training step(s) each on the same {settings.rss_step[0]} × {settings.rss_step[1]}-token batch; "
                "medians. "
                + (
                    "Peak reset after loading the base model (`/proc/self/clear_refs`)."
                    if resettable
                    else "The peak could not be reset: lifetime peak."
                )
            ),
            table(
                ["adapter", "peak RSS", "peak − loaded model", "peak / LoRA r=8", "increase / LoRA r=8"], rows
            ),
        ]
    )
    value = peak["PRoLoRA r=8"].median / peak["LoRA r=8"].median
    batch, seq = settings.rss_step
    # informative: one step's peak RSS moves by hundreds of MiB between fresh processes of the same variant
    # (allocator caching; LoRA r=2 has come out above LoRA r=8), so the deterministic tensor count above is
    # the memory target's measure
    check = Check(
        f"Peak RSS PRoLoRA / LoRA, same rank ≤ {MEMORY_TARGET}× (SmolLM2-135M)",
        f"{value:.3f}×",
        value <= MEMORY_TARGET,
        f"PRoLoRA r=8 vs LoRA r=8, {batch} × {seq} tokens per step",
        informative=True,
    )
    return text, check


def _train_report(runs: list[dict], params: dict) -> tuple[str, list[Check]]:
    rows, checks = [], []
    for run_ in runs:
        t, tokens = run_["times"], run_["tokens"]
        size = f"{run_['batch']} × {run_['seq']} = {tokens}"
        for v in t:
            stat = Stat.of([tokens / s for s in t[v]])
            rows.append(
                [
                    size,
                    v,
                    f"{params[v]:,}",
                    f"{stat.median:.0f} [{stat.q1:.0f}–{stat.q3:.0f}]",
                    ratio(t, v, "LoRA r=8").ratio_text(),
                    ratio(t, v, "LoRA r=2").ratio_text(),
                ]
            )
        for v, label, informative in (
            ("PRoLoRA r=8", "", False),
            (PLAIN, "; plain autograd, `lean_backward=False`", True),
        ):
            same_rank = ratio(t, v, "LoRA r=8")
            checks.append(
                Check(
                    f"Training step PRoLoRA / LoRA, same rank ≤ {TRAIN_TARGET}× (SmolLM2-135M{label})",
                    same_rank.ratio_text(),
                    same_rank.median <= TRAIN_TARGET,
                    f"{size} tokens per step",
                    informative,
                )
            )
    text = table(
        [
            "tokens per step (batch × sequence)",
            "adapter",
            "trainable params",
            "tokens/s (median [IQR])",
            "step time / LoRA r=8 (same rank)",
            "step time / LoRA r=2 (same budget)",
        ],
        rows,
    )
    return text, checks


def run(opts: Options) -> Section:
    settings = Settings.for_options(opts)
    base = smollm.base_model()
    models = _models(base)
    params = {v: smollm.trainable_params(m) for v, m in models.items()}
    runs = [_training(models, settings, batch, seq, opts.seed) for batch, seq in settings.steps]
    tensors = _tensor_memory(models, params, settings, opts.seed)
    models.pop("LoRA r=2")
    models.pop(PLAIN)  # decodes exactly like the default (lean_backward only matters while autograd records)
    rss = _peak_rss(base, settings, opts.seed) if settings.rss_repeats else None
    gen = _generation(base, models, settings)
    del models
    train_text, checks = _train_report(runs, params)

    rss_text, rss_check = _rss_report(rss, settings)
    tensor_text, tensor_check = _tensor_report(tensors, settings)
    checks.append(tensor_check)
    g = gen["times"]
    gen_rows = []
    for name in g:
        stat = Stat.of([gen["new_tokens"] / s for s in g[name]])
        gen_rows.append(
            [
                name,
                f"{stat.median:.1f} [{stat.q1:.1f}–{stat.q3:.1f}]",
                ratio(g, name, "no adapter").ratio_text(),
                ratio(g, name, "LoRA r=8 unmerged").ratio_text(),
            ]
        )
    gen_table = table(
        ["model", "new tokens/s (median [IQR])", "time / no adapter", "time / LoRA unmerged"], gen_rows
    )

    if rss_check:
        checks.append(rss_check)
    body = "\n\n".join(
        [
            (
                f"Training: AdamW, dropout {DROPOUT}, {settings.train_rounds} interleaved rounds of one step per "
                f"variant after one warm-up step, {torch.get_num_threads()} thread(s), at each step size (batch × "
                "sequence length; the short steps show the fixed per-module cost, 4 × 128 is the size of the "
                "trainer's default micro-batch). *PRoLoRA r=8*: the library default (lean backward: A and B "
                "gathered in forward and again in backward, not kept); *plain autograd*: "
                "`set_lean_backward(False)`, the same gathers recorded by autograd."
            ),
            train_text,
            tensor_text,
            rss_text,
            (
                f"Generation: greedy, {gen['new_tokens']} new tokens after a {gen['prompt']}-token prompt, batch 1, "
                f"{settings.gen_rounds} interleaved rounds. *merged*: `merge_adapter()` (wrappers stay, ΔW added to "
                "the base weights); *unmerged*: PRoLoRA with its expanded-factor cache (the default; a cache hit is "
                "two `F.linear` calls per module); *chunks*: `set_expanded_cache(False)`."
            ),
            gen_table,
        ]
    )
    return Section("2. Model level (SmolLM2-135M-Instruct)", body, checks)


def main(argv: list[str]) -> int:
    """Child entry point: ``python -m benchmarks.model --child '[variant, dir, batch, seq, steps, seed]'``."""
    if len(argv) == 2 and argv[0] == "--child":
        print(json.dumps(_child(*json.loads(argv[1]))))
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
