"""Start-up costs of the ``prolora`` command (not a test): help, an argument error, and loading the model.

    python benchmarks/startup.py

Prints the wall time of ``python -m prolora.cli --help`` and of ``prolora train --no-such-flag`` (fresh
interpreters), then of loading the embedded model's tokenizer and weights after the imports: with a fresh
cache folder (the de-quantized copy is built) and again with that folder (the copy is loaded). The cache
folder is a temporary one; the user's cache is not touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

LOAD = """
import sys, time
import torch, transformers, peft  # the imports are not the load
from prolora.base_models import load_model, load_tokenizer
start = time.perf_counter(); load_tokenizer(); tokenizer = time.perf_counter() - start
start = time.perf_counter(); load_model(); model = time.perf_counter() - start
print(f"{tokenizer:.1f} {model:.1f}")
"""


def wall(argv: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    return time.perf_counter() - start, done


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="prolora-cache-") as cache:
        env = {
            **os.environ,
            "PROLORA_CACHE": cache,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        }
        for label, args in (
            ("prolora --help", ["--help"]),
            ("prolora train --no-such-flag", ["train", "--no-such-flag"]),
        ):
            seconds, _ = wall([sys.executable, "-m", "prolora.cli", *args], env)
            print(f"{label}: {seconds:.2f} s")
        for label in ("load, first run (builds the cached copy)", "load, later run (cached copy)"):
            _, done = wall([sys.executable, "-c", LOAD], env)
            tokenizer, model = map(float, done.stdout.split()[-2:])
            print(f"{label}: tokenizer {tokenizer:.1f} s + model {model:.1f} s = {tokenizer + model:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
