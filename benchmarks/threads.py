"""Training speed against torch's thread count, with and without a competing busy process (not a test).

    python benchmarks/threads.py                      # 1 and 2 threads, with one busy-loop competitor
    python benchmarks/threads.py --threads 1,2,4 --competitors 0 --rounds 5

Loads the embedded SmolLM2-135M with the default PRoLoRA adapter, then times training micro-steps (forward
and backward of one embedded-set example of the default run, micro-batch 1) at each thread count in
interleaved rounds (order rotating), in one process, while ``--competitors`` busy-loop processes (started
and stopped here) occupy cores. Prints the wall time per micro-step per thread count (median of the
rounds), each count's ratio to the best, and the count :func:`prolora.threads.default_threads` picks
under the load measured at the end (the 1-minute load average lags: the competitors run ``--settle``
seconds before timing starts).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--competitors", type=int, default=1, help="busy-loop processes beside the run (1)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--steps", type=int, default=2, help="micro-steps timed per round and count (2)")
    parser.add_argument("--tokens", type=int, default=256, help="example length in tokens (256)")
    parser.add_argument(
        "--settle",
        type=float,
        default=60.0,
        help="seconds the competitors run before timing, so the load average sees them (60)",
    )
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.threads.split(",")]

    import torch
    from peft import get_peft_model

    import prolora  # noqa: F401  (registers PRoLoRA)
    from prolora.base_models import load_model, load_tokenizer
    from prolora.data import load_splits
    from prolora.method_presets import make_adapter_config
    from prolora.threads import busy_cpus, default_threads, usable_cpus

    tokenizer = load_tokenizer()
    train = load_splits(tokenizer, heldout_size=0).train
    row = next(r for r in train if len(r["input_ids"]) >= args.tokens)
    batch = {k: torch.tensor([row[k][: args.tokens]]) for k in ("input_ids", "attention_mask", "labels")}
    model = get_peft_model(
        load_model(),
        make_adapter_config(
            "prolora", r=8, u=1, m=7, n=7, lora_alpha=16, lora_dropout=0.1, target_modules="all-linear"
        ),
    )
    model.train()

    def micro_step() -> None:
        model(**batch).loss.backward()

    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.competitors)]
    try:
        if busy:
            time.sleep(args.settle)
        times: dict[int, list[float]] = {c: [] for c in counts}
        torch.set_num_threads(counts[0])
        micro_step()  # warm-up
        for round_ in range(args.rounds):
            order = counts[round_ % len(counts) :] + counts[: round_ % len(counts)]
            for c in order:
                torch.set_num_threads(c)
                start = time.perf_counter()
                for _ in range(args.steps):
                    micro_step()
                times[c].append((time.perf_counter() - start) / args.steps)
                print(f"round {round_ + 1}: {c} thread(s) {times[c][-1]:.2f} s per micro-step", flush=True)
        load = busy_cpus()
    finally:
        for p in busy:
            p.kill()
            p.wait()
    medians = {c: statistics.median(t) for c, t in times.items()}
    best = min(medians.values())
    chosen = default_threads(usable_cpus(), load)
    print(
        f"\n{usable_cpus()} usable cores, {args.competitors} busy-loop competitor(s), load average {load:.2f}, "
        f"1 × {args.tokens} tokens per micro-step, {args.rounds} rounds × {args.steps} micro-steps"
    )
    print("| threads | s per micro-step (median) | / best |\n|---|---|---|")
    for c in counts:
        print(f"| {c}{' (default)' if c == chosen else ''} | {medians[c]:.2f} | {medians[c] / best:.2f}× |")
    print(f"default rule picks {chosen} thread(s): {medians.get(chosen, float('nan')) / best:.2f}× the best")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    sys.exit(main())
