"""``prolora export``: a saved PRoLoRA adapter → a dense PEFT LoRA adapter, or a merged full model."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", help="PRoLoRA adapter directory (save_pretrained), or a prolora train run "
                                        "directory (its adapter/)")
    parser.add_argument("out_dir", help="where to write the result")
    parser.add_argument("--merged", action="store_true",
                        help="write the base model with ΔW merged in (the base: --model) instead of a LoRA adapter")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an adapter or model already in out_dir (never the source adapter)")
    parser.add_argument("--model", default=None,
                        help="base model for --merged: path, hub id or .gguf (default: the embedded SmolLM2-135M)")


def run(args: argparse.Namespace) -> int:
    import os

    import prolora

    from .io import adapter_dir, check_output_dir, read_adapter

    if not args.merged:
        out = prolora.export_lora(args.adapter, args.out_dir, overwrite=args.overwrite)
        size = os.path.getsize(out / "adapter_model.safetensors")
        print(f"wrote dense LoRA adapter to {out} ({size:,} bytes); load it with stock peft: "
              f"PeftModel.from_pretrained(base, {str(out)!r})")
        return 0
    from peft import PeftModel

    from .models import load_model, load_tokenizer

    check_output_dir(args.out_dir, args.adapter, args.overwrite)
    adapter = adapter_dir(args.adapter)
    read_adapter(adapter)  # a clear error for a broken adapter before the base model loads
    model = PeftModel.from_pretrained(load_model(args.model), str(adapter))
    merged = model.merge_and_unload()
    merged.save_pretrained(args.out_dir)  # safetensors
    load_tokenizer(args.model).save_pretrained(args.out_dir)
    print(f"wrote merged model to {args.out_dir}")
    return 0
