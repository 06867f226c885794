"""``prolora export``: a saved PRoLoRA adapter → a dense PEFT LoRA adapter, or a merged full model."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "adapter",
        help="PRoLoRA adapter directory (save_pretrained), or a prolora train run directory (its adapter/)",
    )
    parser.add_argument("out_dir", help="where to write the result")
    parser.add_argument(
        "--merged",
        action="store_true",
        help="write the base model with ΔW merged in (the base: --model) instead of a LoRA adapter",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an adapter or model already in out_dir (never the source adapter)",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="base model for --merged: path, hub id or .gguf (default: the embedded SmolLM2-135M)",
    )


def run(args: argparse.Namespace) -> int:
    import os

    from prolora.format import WEIGHTS_NAME, export_lora, export_merged

    if args.merged:
        out = export_merged(
            args.adapter, args.out_dir, model=args.model, overwrite=args.overwrite, progress=True
        )
        print(f"wrote merged model to {out}")
        return 0
    out = export_lora(args.adapter, args.out_dir, overwrite=args.overwrite, progress=True)
    size = os.path.getsize(out / WEIGHTS_NAME)
    print(
        f"wrote dense LoRA adapter to {out} ({size:,} bytes); load it with stock peft: "
        f"PeftModel.from_pretrained(base, {str(out)!r})"
    )
    return 0
