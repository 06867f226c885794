"""``prolora vllm``: the folders vLLM loads (docs/vllm.md): the dense base model, a dense LoRA adapter.

``prolora vllm base-model [--model M]`` / ``prolora vllm adapter PATH`` print the folder
(:func:`prolora.inference.vllm_plugin.dense_base_model` / :func:`~prolora.inference.vllm_plugin.dense_lora`,
written once into the plugin's cache).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", required=True)
    base = sub.add_parser("base-model", help="write the embedded (or a .gguf) model as a float32 folder")
    base.add_argument("--model", help="a .gguf file (default: the embedded SmolLM2-135M-Instruct)")
    adapter = sub.add_parser("adapter", help="export a PRoLoRA adapter to dense LoRA into the cache")
    adapter.add_argument("path")


def run(args: argparse.Namespace) -> int:
    from prolora.inference.vllm_plugin import dense_base_model, dense_lora

    print(dense_base_model(args.model) if args.what == "base-model" else dense_lora(args.path))
    return 0
