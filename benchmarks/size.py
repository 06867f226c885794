"""Section 3 — adapter files: bytes on disk against trainable parameters × bytes per parameter.

For each adapter on SmolLM2-135M (see :mod:`benchmarks.smollm`) and for the dense LoRA export of the
PRoLoRA adapter (``prolora.export_lora``), the ``adapter_model.safetensors`` written by ``save_pretrained``
is compared with theory: parameters × 4 bytes (float32) plus the safetensors header (8 bytes of length +
the JSON header, read from the file itself). Parameters of the dense export are Σ r·(h + o) over modules.
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

from . import smollm
from .memory import format_bytes
from .report import Check, Options, Section, table

TARGET = 1.01
WEIGHTS = "adapter_model.safetensors"


def header_bytes(path: Path) -> int:
    """Size of a safetensors header: the 8-byte length prefix plus the JSON it announces."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
    return 8 + length


def tensor_elements(path: Path) -> int:
    """Number of elements stored in a safetensors file (from its header)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118  (safe_open is not iterable)
            shape = f.get_slice(key).get_shape()
            n = 1
            for d in shape:
                n *= d
            total += n
    return total


def _dense_params(model) -> int:
    """Σ r·(h + o) over the PRoLoRA modules of ``model``: what a dense LoRA of the same rank stores."""
    from prolora.tuner.model import prolora_modules

    total = 0
    for _, layer in prolora_modules(model.get_base_model()):
        spec = layer.prolora_spec["default"]
        total += spec.r * (spec.h + spec.o)
    return total


def run(opts: Options) -> Section:
    import prolora

    base = smollm.base_model()
    rows, checks = [], []
    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in smollm.VARIANTS:
            model = smollm.wrap(base, variant)
            out = Path(tmp) / variant.replace(" ", "_").replace("=", "")
            model.save_pretrained(out)
            params = smollm.trainable_params(model)
            files[variant] = (out / WEIGHTS, params)
            if variant == "PRoLoRA r=8":
                dense = prolora.export_lora(out, Path(tmp) / "dense_export")
                files["PRoLoRA r=8 → dense LoRA export"] = (dense / WEIGHTS, _dense_params(model))
            del model
        for name, (path, params) in files.items():
            size, header = path.stat().st_size, header_bytes(path)
            theory = params * 4
            stored = tensor_elements(path)
            r = size / (theory + header)
            rows.append(
                [
                    name,
                    f"{params:,}",
                    f"{stored:,}",
                    f"{size:,}",
                    f"{header:,}",
                    f"{theory:,}",
                    f"{r:.4f}×",
                    f"{size / files['LoRA r=8'][0].stat().st_size:.3f}×",
                ]
            )
            checks.append(
                Check(
                    f"Adapter file ≤ {TARGET}× (theory + header): {name}",
                    f"{r:.4f}×",
                    r <= TARGET and stored == params,
                    format_bytes(size),
                )
            )
    body = "\n\n".join(
        [
            (
                "Float32 adapters on all block linears of SmolLM2-135M. *theory*: parameters × 4 bytes; *header*: "
                "the safetensors header as stored (tensor names, shapes, offsets, metadata). The config "
                "(`adapter_config.json`, a few KiB) is not included."
            ),
            table(
                [
                    "adapter",
                    "trainable params",
                    "elements stored",
                    "file bytes",
                    "header bytes",
                    "theory bytes",
                    "file / (theory + header)",
                    "file / LoRA r=8 file",
                ],
                rows,
            ),
        ]
    )
    return Section("3. Adapter size", body, checks)
