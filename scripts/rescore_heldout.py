"""Re-score finished comparison cells with the token-weighted held-out loss, from their saved adapters.

Cells finished before the held-out loss became token-weighted (``prolora.data.token_loss``; the summary
then gained ``heldout_tokens``) hold the Trainer's mean of per-batch means over length-grouped batches,
which moved with the seed by about 0.01. This evaluates each such cell's saved adapter on its own
held-out split (same records, same ``max_length``) and rewrites the cell's metric and summary losses,
keeping the old values under ``"rescored"``. Cells that already have ``heldout_tokens`` are left alone.

    python scripts/rescore_heldout.py CELLS_DIR [CELLS_DIR ...] --runs-root DIR [--runs-root DIR ...]

A cell ``cells/<name>.json`` finds its adapter at ``<runs-root>/<name>/adapter`` (the first root that has
it). Each cell file is rewritten atomically, so an interrupted run can simply be started again.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cells_dirs", nargs="+", type=Path)
    parser.add_argument(
        "--runs-root",
        action="append",
        type=Path,
        required=True,
        help="a folder holding <cell name>/adapter (repeatable)",
    )
    args = parser.parse_args(argv)

    import torch
    from peft import PeftModel

    import prolora  # noqa: F401  (registers PRoLoRA with peft)
    from prolora.base_models import load_base_model, load_tokenizer
    from prolora.compare.cells import LOSS
    from prolora.data import load_splits, token_loss
    from prolora.files import write_json
    from prolora.train.run import HELDOUT_BATCH_SIZE

    torch.set_num_threads(1)
    todo = []
    for directory in args.cells_dirs:
        for path in sorted(directory.glob("*.json")):
            result = json.loads(path.read_text(encoding="utf-8"))
            if "heldout_tokens" not in result["summary"]:
                todo.append((path, result))
    print(f"{len(todo)} cell(s) to re-score", flush=True)
    if not todo:
        return 0
    base = tokenizer = None
    splits, base_losses, missing = {}, {}, []
    for i, (path, result) in enumerate(todo, 1):
        train = result["cell"]["train"]
        adapter = next(
            (
                root / path.stem / "adapter"
                for root in args.runs_root
                if (root / path.stem / "adapter").is_dir()
            ),
            None,
        )
        if adapter is None:
            missing.append(path.name)
            print(f"[{i}/{len(todo)}] {path.name}: no saved adapter under any --runs-root; left as it is")
            continue
        if base is None:
            tokenizer = load_tokenizer(train.get("model"))
            base = load_base_model(train.get("model"), "none")
        split = (train.get("heldout_size"), train["max_length"])
        if split not in splits:
            splits[split] = load_splits(tokenizer, None, None, split[0], split[1]).heldout
            base_losses[split] = token_loss(base, splits[split], tokenizer, HELDOUT_BATCH_SIZE)
        started = time.perf_counter()
        model = PeftModel.from_pretrained(copy.deepcopy(base), str(adapter))
        loss, tokens = token_loss(model, splits[split], tokenizer, HELDOUT_BATCH_SIZE)
        summary = result["summary"]
        old = {
            "metric": result["metrics"][LOSS],
            "heldout_loss_adapter": summary["heldout_loss_adapter"],
            "heldout_loss_base": summary["heldout_loss_base"],
        }
        result["metrics"][LOSS] = loss
        summary.update(
            heldout_loss_adapter=loss, heldout_loss_base=base_losses[split][0], heldout_tokens=tokens
        )
        result["rescored"] = {
            "by": "scripts/rescore_heldout.py",
            "adapter": str(adapter),
            "old": old,
            "on": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(path, result, sort_keys=True)
        print(
            f"[{i}/{len(todo)}] {path.name}: {old['metric']:.4f} -> {loss:.4f} ({tokens} tokens, "
            f"{time.perf_counter() - started:.1f} s)",
            flush=True,
        )
    if missing:
        print(f"{len(missing)} cell(s) without an adapter: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
