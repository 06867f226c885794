"""The compact adapter format: read, check and expand a saved PRoLoRA adapter without a base model.

A PRoLoRA adapter directory (written by ``PeftModel.save_pretrained``) holds:

* ``adapter_config.json`` — :class:`~prolora.tuner.config.PRoLoRAConfig` with ``"peft_type": "PROLORA"``, plus
  ``module_shapes`` (module name → ``[o, h]``) so that the tensors can be expanded without the base model.
* ``adapter_model.safetensors`` (metadata ``{"format": "pt"}``) — per adapted module ``M`` exactly four
  tensors, and nothing dense: ``base_model.model.M.prolora_A0`` (r−u, ceil(h/m)),
  ``…prolora_B0`` (ceil(o/n), r−u), ``…prolora_A_u`` (u, h), ``…prolora_B_u`` (o, u).

``docs/format.md`` describes the same with an example.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from prolora import equations as eq
from prolora.tuner import PRoLoRAConfig
from prolora.tuner.saved import TENSOR_NAMES, check_delta_w_record, check_finite, check_tensors

__all__ = [
    "ADAPTER_DIR",
    "CONFIG_NAME",
    "TENSOR_NAMES",
    "WEIGHTS_NAME",
    "adapter_dir",
    "check_finite",
    "check_output_dir",
    "check_tensors",
    "expand_adapter",
    "read_adapter",
]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_DIR = "adapter"  # a ``prolora train`` run directory keeps its adapter here


def adapter_dir(path: str | os.PathLike) -> Path:
    """``path``, or its ``adapter/`` when ``path`` is a ``prolora train`` run directory."""
    path = Path(path)
    if not (path / CONFIG_NAME).exists() and (path / ADAPTER_DIR / CONFIG_NAME).exists():
        return path / ADAPTER_DIR
    return path


def read_adapter(
    path: str | os.PathLike, others: bool = False
) -> tuple[PRoLoRAConfig, dict[str, torch.Tensor]]:
    """Read a PRoLoRA adapter directory without a base model (safetensors only: nothing is unpickled).

    ``path`` is an adapter directory (``save_pretrained``) or a ``prolora train`` run directory (its
    ``adapter/`` is read). ``others`` allows tensors that are not PRoLoRA's (PEFT's ``modules_to_save`` and
    saved embedding layers; see :func:`check_tensors`).

    Raises:
        FileNotFoundError: if the directory or one of its two files is missing.
        ValueError: if the config is not a PRoLoRA config, the weights file is corrupt, its tensors do not
            match ``module_shapes``, one holds NaN/inf, or the config disagrees with the ΔW fields recorded
            at save time (:mod:`prolora.tuner.saved`).
    """
    from safetensors import SafetensorError, safe_open

    path = adapter_dir(path)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"{path / name} not found: is {path} a PRoLoRA adapter directory "
                "(written by save_pretrained)?"
            )
    try:
        raw = json.loads((path / CONFIG_NAME).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path / CONFIG_NAME} is not valid JSON ({exc}).") from None
    if raw.get("peft_type") != "PROLORA":
        raise ValueError(f"{path / CONFIG_NAME} has peft_type={raw.get('peft_type')!r}, not 'PROLORA'.")
    try:
        config = PRoLoRAConfig.from_pretrained(str(path), verify_weights=False)  # checked below
    except (TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"{path / CONFIG_NAME} is not a valid PRoLoRA config: {exc}") from None
    try:
        with safe_open(str(path / WEIGHTS_NAME), "pt") as f:
            metadata = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path / WEIGHTS_NAME} is not a readable safetensors file ({exc}).") from None
    check_tensors(config, tensors, source=str(path), others=others)
    check_delta_w_record(config, metadata, source=str(path))
    check_finite(tensors, source=str(path))
    return config, tensors


def expand_adapter(config: PRoLoRAConfig, tensors: dict[str, torch.Tensor]) -> dict[str, tuple]:
    """Module name → full ``(A, B, scaling)`` (A: (r, h), B: (o, r)) from compact tensors (Eq. 4); scaling is
    ``lora_alpha / r`` (``lora_alpha / √r`` with ``use_rslora``)."""
    out = {}
    for module, (o, h) in config.module_shapes.items():
        key = f"base_model.model.{module}."
        try:
            a0, b0, a_u, b_u = (tensors[key + name] for name in TENSOR_NAMES)
        except KeyError as exc:
            raise ValueError(f"the weights file lacks {exc.args[0]} listed in module_shapes.") from None
        v = config.module_values(module)
        r, u = v["r"], v["unshared_r"]
        m, n = v["sharing_rate_a"], v["sharing_rate_b"]
        s_a = eq.default_stride(r, u, m) if v["stride_a"] is None else v["stride_a"]
        s_b = eq.default_stride(r, u, n) if v["stride_b"] is None else v["stride_b"]
        rotate = config.rotate_dim if config.rotation else None
        a = eq.expand_a(a0, a_u, h, r, m, s_a, rotate, config.share)
        b = eq.expand_b(b0, b_u, o, r, n, s_b, rotate, config.share)
        out[module] = (a, b, eq.lora_scaling(v["lora_alpha"], r, getattr(config, "use_rslora", False)))
    return out


def check_output_dir(
    out_dir: str | os.PathLike, source: str | os.PathLike | None = None, overwrite: bool = False
) -> Path:
    """``out_dir`` as a Path, refusing to write over a file, the ``source`` adapter, or (unless
    ``overwrite``) a directory that already holds an adapter or model.

    Raises:
        ValueError: naming the directory and the fix.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} is an existing file; choose a directory path.")
    if (
        source is not None
        and Path(source).exists()
        and out.exists()
        and out.resolve() == Path(source).resolve()
    ):
        raise ValueError(
            f"output {out} is the source adapter itself; writing there would destroy it. "
            "Choose another directory."
        )
    held = [
        name
        for name in (WEIGHTS_NAME, CONFIG_NAME, "model.safetensors", "config.json")
        if (out / name).exists()
    ]
    if held and not overwrite:
        raise ValueError(
            f"output {out} already holds {', '.join(held)}; choose another directory, or replace "
            "it with overwrite=True (prolora export --overwrite)."
        )
    return out
