"""The adapter file format (:mod:`.compact`) and its exports (:mod:`.export`).

A PRoLoRA adapter on disk is PEFT's directory — ``adapter_config.json`` + ``adapter_model.safetensors`` —
holding only the compact tensors; ``docs/format.md`` describes it.
"""

from .compact import (
    ADAPTER_DIR,
    CONFIG_NAME,
    TENSOR_NAMES,
    WEIGHTS_NAME,
    SavedAdapter,
    adapter_dir,
    check_output_dir,
    check_tensors,
    expand_adapter,
    holds_adapter,
    read_adapter,
)
from .export import export_lora, export_merged

__all__ = [
    "ADAPTER_DIR",
    "CONFIG_NAME",
    "SavedAdapter",
    "TENSOR_NAMES",
    "WEIGHTS_NAME",
    "adapter_dir",
    "check_output_dir",
    "check_tensors",
    "expand_adapter",
    "export_lora",
    "export_merged",
    "holds_adapter",
    "read_adapter",
]
