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
from dataclasses import dataclass
from pathlib import Path

import torch

from prolora.tuner import PRoLoRAConfig
from prolora.tuner.layout import ChunkSpec, config_spec, expand, flatten, lora_spec
from prolora.tuner.saved import (
    TENSOR_NAMES,
    check_adapter_name,
    check_finite,
    check_saved,
    check_tensors,
    read_weights,
)

__all__ = [
    "ADAPTER_DIR",
    "CONFIG_NAME",
    "SavedAdapter",
    "TENSOR_NAMES",
    "WEIGHTS_NAME",
    "adapter_dir",
    "check_finite",
    "check_output_dir",
    "check_tensors",
    "expand_adapter",
    "holds_adapter",
    "read_adapter",
]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_DIR = "adapter"  # a ``prolora train`` run directory keeps its adapter here
PROLORA_TYPE, LORA_TYPE = "PROLORA", "LORA"


def adapter_dir(path: str | os.PathLike) -> Path:
    """``path``, or its ``adapter/`` when ``path`` is a ``prolora train`` run directory."""
    path = Path(path)
    if not (path / CONFIG_NAME).exists() and (path / ADAPTER_DIR / CONFIG_NAME).exists():
        return path / ADAPTER_DIR
    return path


def holds_adapter(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an adapter directory or a ``prolora train`` run directory (it has an
    ``adapter_config.json``, itself or in its ``adapter/``); :func:`read_adapter` checks the rest."""
    return (adapter_dir(path) / CONFIG_NAME).is_file()


@dataclass(frozen=True)
class SavedAdapter:
    """An adapter folder as :func:`read_adapter` read and checked it.

    ``peft_type``: ``"PROLORA"``, ``"LORA"`` or another PEFT type (only when the caller allows it);
    ``raw``: ``adapter_config.json`` as written; ``config``: a :class:`PRoLoRAConfig`, a peft ``LoraConfig``,
    or None for other types (whose ``tensors`` are not read: empty); ``modules``: module name → (its layout, ``(A_0, A_u, B_0, B_u)``), the layout
    from :mod:`prolora.tuner.layout` (a dense LoRA module is the layout with u = r: A_u = A, B_u = B).
    Unpacks as ``config, tensors``.
    """

    path: Path
    peft_type: str
    raw: dict
    config: object
    tensors: dict[str, torch.Tensor]
    modules: dict[str, tuple[ChunkSpec, tuple]]

    def __iter__(self):
        return iter((self.config, self.tensors))

    @property
    def kind(self) -> str:
        """``"prolora"``, ``"lora"``, … (the peft type in lower case)."""
        return self.peft_type.lower()

    def expand(self) -> dict[str, tuple]:
        """Module name → full ``(A, B, scaling)``, as :func:`expand_adapter`."""
        return {module: _expanded(spec, parts) for module, (spec, parts) in self.modules.items()}


def read_adapter(
    path: str | os.PathLike,
    others: bool = False,
    *,
    name: str | None = None,
    types: tuple[str, ...] | None = (PROLORA_TYPE,),
) -> SavedAdapter:
    """Read and check an adapter folder without a base model: the one reader every path uses (peft loads
    through prolora, ``generate``/``chat``, ``export``, ``serve``, the vLLM plugin). Safetensors only.

    ``path`` is an adapter directory (``save_pretrained``) or a ``prolora train`` run directory (its
    ``adapter/`` is read). ``name``: the name it will be known by, checked against the one name rule
    (:func:`~prolora.tuner.saved.check_adapter_name`). ``types``: the peft types the caller accepts (None:
    any). A PRoLoRA adapter is checked by :func:`~prolora.tuner.saved.check_saved` (tensor names and shapes
    against the config's layout, the ΔW record, finite values) — the same checks, with the same messages,
    that ``PRoLoRAConfig.from_pretrained`` runs for stock peft; ``others`` allows tensors that are not
    PRoLoRA's (PEFT's ``modules_to_save`` and saved embedding layers). A LoRA adapter must pair every
    ``lora_A`` with a ``lora_B`` of the configured rank, and hold finite values. Of other types (Tied-LoRA,
    VeRA, … where a caller takes them) only the config is read: peft loads and checks their weights.

    Raises:
        FileNotFoundError: if the directory or one of its two files is missing.
        ValueError: a bad name, an unaccepted peft type, an invalid config, a corrupt weights file, tensors
            that do not match the config, NaN/inf, or a config that disagrees with the ΔW fields recorded at
            save time — each naming the field or tensor.
    """
    if name is not None:
        check_adapter_name(name)
    path = adapter_dir(path)
    for file in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / file).is_file():
            raise FileNotFoundError(
                f"{path / file} not found: is {path} an adapter directory (written by save_pretrained) "
                "or a `prolora train` run directory?"
            )
    try:
        raw = json.loads((path / CONFIG_NAME).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path / CONFIG_NAME} is not valid JSON ({exc}).") from None
    peft_type = raw.get("peft_type") if isinstance(raw, dict) else None
    if not isinstance(peft_type, str):
        raise ValueError(f"{path / CONFIG_NAME} has no peft_type: it is not a PEFT adapter config.")
    if types is not None and peft_type not in types:
        raise ValueError(
            f"{path / CONFIG_NAME} has peft_type={peft_type!r}; this path reads "
            f"{' and '.join(repr(t) for t in types)} adapters."
        )
    config, tensors, modules = None, {}, {}
    if peft_type in (PROLORA_TYPE, LORA_TYPE):
        metadata, tensors = read_weights(path / WEIGHTS_NAME)
    if peft_type == PROLORA_TYPE:
        try:
            config = PRoLoRAConfig.from_pretrained(str(path), verify_weights=False)  # checked below
        except (TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"{path / CONFIG_NAME} is not a valid PRoLoRA config: {exc}") from None
        check_saved(config, metadata, tensors, source=str(path), others=others)
        modules = _prolora_modules(config, tensors)
    elif peft_type == LORA_TYPE:
        config, modules = _lora_modules(path, tensors)
    return SavedAdapter(path, peft_type, raw, config, tensors, modules)


def _prolora_modules(config: PRoLoRAConfig, tensors: dict) -> dict[str, tuple[ChunkSpec, tuple]]:
    out = {}
    for module in config.module_shapes:
        key = f"base_model.model.{module}."
        try:
            a0, b0, a_u, b_u = (tensors[key + name] for name in TENSOR_NAMES)
        except KeyError as exc:
            raise ValueError(f"the weights file lacks {exc.args[0]} listed in module_shapes.") from None
        out[module] = (config_spec(config, module), (a0, a_u, b0, b_u))
    return out


def _lora_modules(path: Path, tensors: dict) -> tuple[object, dict[str, tuple[ChunkSpec, tuple]]]:
    """A dense PEFT LoRA adapter: its ``LoraConfig`` and module → (layout with u = r, (∅, A, ∅, B))."""
    from peft import LoraConfig
    from peft.utils.other import get_pattern_key

    try:
        config = LoraConfig.from_pretrained(str(path))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path / CONFIG_NAME} is not a valid LoRA config: {exc}") from None
    check_finite(tensors, source=str(path))
    weights = path / WEIGHTS_NAME
    out = {}
    prefix, suffix_a, suffix_b = "base_model.model.", ".lora_A.weight", ".lora_B.weight"
    for key in sorted(k for k in tensors if k.endswith(suffix_a)):
        module = key[len(prefix) : -len(suffix_a)] if key.startswith(prefix) else None
        a, b = tensors[key], tensors.get(key[: -len(suffix_a)] + suffix_b)
        if module is None or b is None or a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(
                f"{weights}: {key} has no matching lora_B of shape (out, {a.shape[0]}); the file is "
                "not a PEFT LoRA adapter."
            )
        rank_key = get_pattern_key(config.rank_pattern.keys(), module) if config.rank_pattern else None
        alpha_key = get_pattern_key(config.alpha_pattern.keys(), module) if config.alpha_pattern else None
        r = config.rank_pattern.get(rank_key, config.r)
        if a.shape[0] != r:
            raise ValueError(f"{weights}: {key} has rank {a.shape[0]} but the config says r={r}.")
        alpha = config.alpha_pattern.get(alpha_key, config.lora_alpha)
        spec = lora_spec(a.shape[1], b.shape[0], r, alpha, config.use_rslora, where=module)
        empty = a.new_zeros(0)
        out[module] = (spec, (empty.view(0, spec.h), a, empty.view(spec.o, 0), b))
    if not out:
        raise ValueError(f"{weights} holds no lora_A/lora_B tensors.")
    return config, out


def _expanded(spec: ChunkSpec, parts: tuple) -> tuple[torch.Tensor, torch.Tensor, float]:
    return (*expand(flatten(parts), spec), spec.scaling)


def expand_adapter(config: PRoLoRAConfig, tensors: dict[str, torch.Tensor]) -> dict[str, tuple]:
    """Module name → full ``(A, B, scaling)`` (A: (r, h), B: (o, r)) from compact tensors (Eq. 4), with each
    module's layout and scaling (``lora_alpha / r``; ``lora_alpha / √r`` with ``use_rslora``) from
    :func:`~prolora.tuner.layout.config_spec`."""
    return {
        module: _expanded(spec, parts) for module, (spec, parts) in _prolora_modules(config, tensors).items()
    }


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
