"""Checks of a saved PRoLoRA adapter, run before it is loaded, and the record that ``save_pretrained`` adds.

A loaded adapter must give exactly the ΔW it was saved with, or fail with an error that names the cause:

* :func:`check_tensors`: the weights file holds exactly the four compact tensors of every module of
  ``module_shapes``, with the shapes the config implies (names of missing and unexpected tensors);
* :func:`check_finite`: no NaN or infinity (the tensor's name);
* :func:`check_delta_w_record`: the fields that decide ΔW from the tensors (:data:`DELTA_W_FIELDS`:
  r, unshared_r, sharing rates, strides, lora_alpha, use_rslora, rotation, share, rotate_dim, overrides,
  module_shapes, fan_in_fan_out, and which modules are adapted: target_modules, exclude_modules,
  layers_to_transform, layers_pattern) equal those recorded in the safetensors metadata (key :data:`DELTA_W_KEY`) when the
  adapter was saved. Files written before this record existed (prolora ≤ 0.1.0) have none and load.
* :func:`check_adapter_name`: the one rule for adapter names (PEFT uses the name as a sub-folder of
  ``save_pretrained``'s folder; a path would write outside it).

:meth:`PRoLoRAConfig.from_pretrained <prolora.tuner.config.PRoLoRAConfig.from_pretrained>` runs the three
file checks (:func:`verify_saved`) on a local adapter folder, so ``PeftModel.from_pretrained``,
``load_adapter`` and prolora's loaders refuse a bad file before anything is injected; its
``save_pretrained`` adds the record (:func:`record_delta_w`). docs/security.md and docs/format.md.
"""

from __future__ import annotations

import json
import os
import re

import torch

from .layout import FILE_ORDER, config_spec

WEIGHTS_NAME = "adapter_model.safetensors"
TENSOR_NAMES = FILE_ORDER
DELTA_W_KEY = "prolora.delta_w"
DELTA_W_FIELDS = (
    "r",
    "unshared_r",
    "sharing_rate_a",
    "sharing_rate_b",
    "stride_a",
    "stride_b",
    "lora_alpha",
    "use_rslora",
    "rotation",
    "share",
    "rotate_dim",
    "overrides",
    "module_shapes",
    "fan_in_fan_out",
    "target_modules",
    "exclude_modules",
    "layers_to_transform",
    "layers_pattern",
)
# every other field of PRoLoRAConfig, and why it does not decide ΔW from the tensors (tests/test_drift.py
# checks that the two lists cover every field, so a new field must be placed in one of them)
NOT_DELTA_W_FIELDS = {
    "task_type": "the model head's task; ΔW of each adapted module is the same",
    "peft_type": "always PROLORA (checked by the reader)",
    "auto_mapping": "PEFT's auto class bookkeeping",
    "peft_version": "the PEFT version that saved the file",
    "base_model_name_or_path": "which base model; module_shapes already pins every adapted module's shape",
    "revision": "the base model's hub revision",
    "inference_mode": "whether the loaded adapter is trainable",
    "lora_dropout": "training only; off in eval mode",
    "init": "initialisation; the saved tensors are what they became",
    "init_weights": "initialisation; the saved tensors are what they became",
    "bias": "only 'none' is accepted",
    "modules_to_save": "whole modules saved beside the adapter, loaded by PEFT as they are",
    "target_parameters": "only None is accepted",
}
ADAPTER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")  # the one name rule (check_adapter_name)
RESERVED_NAMES = ("__base__",)  # the row selector of mixed batches: "no adapter"
LOAD_HINT = (
    "This is a PRoLoRA adapter (peft_type 'PROLORA'): `import prolora` before loading it with peft or "
    "transformers (pip install prolora), so that peft knows the method; a bare KeyError: 'PROLORA' "
    "means it was not imported. Or convert it once with `prolora export ADAPTER OUT` into a standard "
    "LoRA adapter that stock peft, vLLM and TGI load."
)


def valid_adapter_name(name) -> bool:
    """Whether ``name`` follows the one name rule (:func:`check_adapter_name`, which says why not)."""
    return isinstance(name, str) and ADAPTER_NAME.fullmatch(name) is not None and name not in RESERVED_NAMES


def check_adapter_name(name) -> None:
    """Refuse an adapter name that is not a safe identifier: the one rule, at every entry (Python API, CLI
    ``--adapter NAME=PATH``, ``prolora serve``'s ``--adapters-dir`` folders and load route, the vLLM plugin).

    Rule: 1-64 characters out of letters, digits, ``_``, ``-`` and ``.``, not starting with ``-`` or ``.``;
    not ``__base__``. So a name is never a path (no ``/``, ``\\``, ``.``, ``..``) — ``save_pretrained`` writes
    every adapter inside the folder it is given, ``--adapters-dir`` finds only its own sub-folders — and
    folder names such as ``v1.2`` work.

    Raises:
        ValueError: naming the value and the rule.
    """
    if not valid_adapter_name(name):
        shown = repr(name) if not isinstance(name, str) or len(name) <= 80 else repr(name[:80]) + "…"
        raise ValueError(
            f"adapter name {shown} is not allowed: use 1-64 letters, digits, '_', '-' or '.' (not "
            f"starting with '-' or '.'), e.g. 'math_v2' or 'v1.2'; {', '.join(RESERVED_NAMES)} is "
            "reserved. Names become folder names in save_pretrained, so they may not be paths "
            "(prolora's commands take --adapter NAME=PATH to choose one)."
        )


def expected_shapes(config) -> dict[str, tuple]:
    """Key in the weights file → shape, for every module of ``config.module_shapes`` (the layout of
    :func:`~prolora.tuner.layout.config_spec`)."""
    expected = {}
    for module in config.module_shapes:
        for name, shape in zip(TENSOR_NAMES, config_spec(config, module).file_shapes(), strict=True):
            expected[f"base_model.model.{module}.{name}"] = tuple(shape)
    return expected


def _some(names: list[str]) -> str:
    return f"{names[:3]}{' …' if len(names) > 3 else ''} ({len(names)})" if names else "none"


def check_tensors(config, tensors: dict, source: str = "the adapter", others: bool = False) -> None:
    """Check that ``tensors`` (name → tensor or shape) are exactly the compact tensors ``config`` describes.

    Each module of ``config.module_shapes`` needs A_0, B_0 (shapes from Eq. 4's chunking,
    :func:`~prolora.equations.chunk_shapes`), A_u (u, h) and B_u (o, u), and nothing else may be
    present: a renamed or missing tensor would otherwise load as PEFT's zero/random initialisation (a
    "missing keys" warning) and serve another ΔW. With ``others``, tensors that are not PRoLoRA tensors
    (names without a ``.prolora_*`` part: PEFT's ``modules_to_save`` and saved embedding layers) are allowed.

    Raises:
        ValueError: naming the missing and unexpected tensors, or the module, tensor and both shapes.
    """
    if not config.module_shapes:
        raise ValueError(
            f"{source}: module_shapes is empty, so the adapter adapts no module; it is written "
            "by prolora at creation: re-save the adapter with prolora."
        )
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(
        k for k in set(tensors) - set(expected) if not others or any(f".{name}" in k for name in TENSOR_NAMES)
    )
    if missing or extra:
        raise ValueError(
            f"{source}: the weights do not match the config's module_shapes: missing tensors "
            f"{_some(missing)}; unexpected tensors {_some(extra)}. The weights file and "
            "adapter_config.json must come from the same save_pretrained."
        )
    for key, shape in expected.items():
        found = tuple(getattr(tensors[key], "shape", tensors[key]))
        if found != shape:
            raise ValueError(
                f"{source}: {key} has shape {found}, but the config (r, unshared_r, sharing rates, "
                f"module_shapes) implies {shape}; the config and weights file belong together."
            )


def check_finite(tensors: dict[str, torch.Tensor], source: str = "the adapter") -> None:
    """Refuse NaN or infinite values.

    Raises:
        ValueError: naming the first tensor (in name order) that holds one, and how many values are bad.
    """
    for key in sorted(tensors):
        t = tensors[key]
        if t.is_floating_point() or t.is_complex():
            bad = (~torch.isfinite(t)).sum().item()
            if bad:
                raise ValueError(
                    f"{source}: tensor {key} holds {bad} NaN or infinite value(s) of {t.numel()}; "
                    "the adapter is broken (e.g. training diverged). Use an earlier checkpoint."
                )


def delta_w_record(config) -> dict:
    """The fields of ``config`` that decide ΔW from the compact tensors (and which modules have one), as JSON
    values (a set, as PEFT keeps ``target_modules`` in memory, as a sorted list: the file's form)."""
    values = {name: getattr(config, name, None) for name in DELTA_W_FIELDS}
    return json.loads(json.dumps(values, default=sorted))


def check_delta_w_record(config, metadata: dict | None, source: str = "the adapter") -> None:
    """Compare the config with the record in the weights file's metadata (absent in old files: accepted).

    Raises:
        ValueError: naming each field that differs, with both values.
    """
    raw = (metadata or {}).get(DELTA_W_KEY)
    if raw is None:
        return
    try:
        recorded = json.loads(raw)
    except json.JSONDecodeError:
        raise ValueError(
            f"{source}: the {DELTA_W_KEY!r} metadata of {WEIGHTS_NAME} is not JSON; the file is damaged."
        ) from None
    current = delta_w_record(config)
    differ = [
        f"{name}: adapter_config.json has {current.get(name)!r}, the weights were saved with "
        f"{recorded[name]!r}"
        for name in DELTA_W_FIELDS
        if name in recorded and recorded[name] != current.get(name)
    ]
    if differ:
        raise ValueError(
            f"{source}: adapter_config.json disagrees with what its weights were trained with, so the "
            f"adapter would give another ΔW ({'; '.join(differ)}). Restore adapter_config.json (e.g. "
            "from the run's checkpoint), or re-save the adapter after changing it on purpose."
        )


def read_weights(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(metadata, name → tensor)`` of a safetensors weights file (nothing is unpickled).

    Raises:
        ValueError: the file is not a readable safetensors file.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load

    try:
        with safe_open(str(path), "pt") as f:
            metadata = dict(f.metadata() or {})
        # the tensors from the file's bytes: safetensors 0.8's get_tensor keeps about 56 bytes per tensor
        # (and more RSS) for the life of the process, which a server loading and evicting adapters accumulates
        with open(path, "rb") as f:
            return metadata, load(f.read())
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path} is not a readable safetensors file ({exc}).") from None


def check_saved(config, metadata: dict, tensors: dict, source: str, others: bool = True) -> None:
    """The checks of a saved PRoLoRA adapter, in order: :func:`check_tensors` (names and shapes against the
    config), :func:`check_delta_w_record`, :func:`check_finite`. Raises ``ValueError`` as they do."""
    check_tensors(config, tensors, source=source, others=others)
    check_delta_w_record(config, metadata, source=source)
    check_finite(tensors, source=source)


def verify_saved(config, directory: str) -> None:
    """:func:`check_saved` on the weights file in ``directory`` (does nothing when there is none): what
    ``PRoLoRAConfig.from_pretrained`` runs, so stock peft loads are checked as prolora's reader
    (:func:`prolora.format.read`) checks. Raises ``ValueError`` as it does."""
    path = os.path.join(directory, WEIGHTS_NAME)
    if os.path.isfile(path):
        check_saved(config, *read_weights(path), source=directory)


def record_delta_w(config, directory: str) -> bool:
    """Add :func:`delta_w_record` to the metadata of the weights file in ``directory`` (atomically), when
    that file holds exactly ``config``'s tensors; returns whether it did."""
    from safetensors.torch import save_file

    from prolora.files import atomic_write

    path = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(path):
        return False
    metadata, tensors = read_weights(path)
    try:
        check_tensors(config, tensors, others=True)
    except ValueError:
        return False  # not this config's weights (e.g. a config saved alone into another adapter's folder)
    metadata[DELTA_W_KEY] = json.dumps(delta_w_record(config), sort_keys=True)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return True
