"""Export a PRoLoRA adapter: to a standard dense PEFT LoRA adapter, or merged into its base model.

Both are exact: PRoLoRA's ΔW = (α/r)·B·A has rank r, so a rank-r LoRA with the expanded A and B (Eqs. 3–4)
reproduces it. Outputs are written atomically (nothing half-written is left on failure).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from prolora.base_models import model_name
from prolora.files import atomic_write
from prolora.tuner import PRoLoRAConfig, prolora_modules

from .compact import (
    CONFIG_NAME,
    TENSOR_NAMES,
    WEIGHTS_NAME,
    adapter_dir,
    check_finite,
    check_output_dir,
    expand_adapter,
    read_adapter,
)


def export_lora(
    model_or_path,
    out_dir: str | os.PathLike,
    adapter_name: str = "default",
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write a PRoLoRA adapter as a standard dense PEFT LoRA adapter (rank r, same ``lora_alpha``).

    ``model_or_path`` is a ``PeftModel`` holding a PRoLoRA adapter ``adapter_name``, or a saved PRoLoRA
    adapter directory (no base model needed). The result (``lora_A``: (r, h), ``lora_B``: (o, r) per module;
    per-module ranks via ``rank_pattern``) loads with stock peft, without prolora installed, and gives the
    same outputs: what vLLM, TGI and LoRAX serve. It is up to ``m``× larger than the PRoLoRA file.

    ``progress``: show a progress bar over the modules on stderr (tqdm).

    Returns the output directory. Raises ``ValueError``/``FileNotFoundError`` as :func:`read_adapter` (also
    for NaN/inf in a tensor, naming it, whether read from a folder or a model), and ``ValueError`` from
    :func:`check_output_dir` (an existing adapter in ``out_dir`` needs ``overwrite``).
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    source = model_or_path if isinstance(model_or_path, (str, os.PathLike)) else None
    check_output_dir(out_dir, source, overwrite)
    if isinstance(model_or_path, (str, os.PathLike)):
        adapter = read_adapter(model_or_path)
        config, factors = adapter.config, adapter.expand()
    else:
        if adapter_name not in model_or_path.peft_config:
            raise ValueError(
                f"the model has no adapter named {adapter_name!r}; it has "
                f"{sorted(model_or_path.peft_config)}."
            )
        config = model_or_path.peft_config[adapter_name]
        if not isinstance(config, PRoLoRAConfig):
            raise TypeError(f"adapter {adapter_name!r} is a {type(config).__name__}, not a PRoLoRA adapter.")
        tensors = {}
        for name, layer in prolora_modules(model_or_path.get_base_model()):
            if adapter_name in layer.prolora_spec:
                for t in TENSOR_NAMES:
                    tensors[f"base_model.model.{name}.{t}"] = getattr(layer, t)[adapter_name].detach()
        check_finite(tensors, source=f"adapter {adapter_name!r}")
        factors = expand_adapter(config, tensors)
    from tqdm import tqdm

    weights, ranks = {}, {}
    for module, (a, b, _) in tqdm(
        factors.items(), desc="export: dense LoRA", unit="module", disable=not progress
    ):
        weights[f"base_model.model.{module}.lora_A.weight"] = a.to(dtype or a.dtype).contiguous()
        weights[f"base_model.model.{module}.lora_B.weight"] = b.to(dtype or b.dtype).contiguous()
        ranks[module] = a.shape[0]
    alphas = {module: config.module_values(module)["lora_alpha"] for module in factors}
    # the name servers know the base model by (adapters saved before 0.2 record the embedded model's folder)
    base_name = model_name(config.base_model_name_or_path) if config.base_model_name_or_path else None
    lora = LoraConfig(
        r=config.r,
        lora_alpha=config.lora_alpha,
        use_rslora=config.use_rslora,
        target_modules=sorted(factors),
        rank_pattern={k: v for k, v in ranks.items() if v != config.r},
        alpha_pattern={k: v for k, v in alphas.items() if v != config.lora_alpha},
        fan_in_fan_out=config.fan_in_fan_out,
        base_model_name_or_path=base_name,
        task_type=config.task_type,
        bias="none",
        lora_dropout=0.0,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(weights, tmp, metadata={"format": "pt"}))
    lora_dict = lora.to_dict()
    lora_dict["target_modules"] = sorted(factors)
    atomic_write(
        out / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(lora_dict, indent=2, default=list))
    )
    return out


def export_merged(
    adapter: str | os.PathLike,
    out_dir: str | os.PathLike,
    model: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write the base model ``model`` with the adapter's ΔW merged in (``merge_and_unload``), plus its tokenizer.

    ``progress``: show progress on stderr: each stage's name, and a bar with ETA over the merged modules
    (peft's ``merge_and_unload(progressbar=True)``; loading shows transformers' own bar).

    All or nothing: everything is written to a temporary folder beside ``out_dir``, which replaces
    ``out_dir`` only when complete. ``model`` is a path, hub id or ``.gguf`` (default: the embedded model).

    Raises:
        ValueError/FileNotFoundError: as :func:`read_adapter` and :func:`check_output_dir`, before the base
        model is loaded.
    """
    import tempfile

    from peft import PeftModel

    from prolora.base_models import load_model, load_tokenizer
    from prolora.files import replace_dir

    out = check_output_dir(out_dir, adapter, overwrite)
    source = adapter_dir(adapter)
    read_adapter(source, others=True)  # a clear error for a broken adapter before the base model loads

    def stage(text: str) -> None:
        if progress:
            print(f"export: {text}", file=sys.stderr, flush=True)

    stage(f"loading the base model {model_name(model) or ''} and the adapter")
    merged = PeftModel.from_pretrained(load_model(model), str(source)).merge_and_unload(progressbar=progress)
    tokenizer = load_tokenizer(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    try:
        stage(f"writing the merged model to {out}")
        merged.save_pretrained(staging)  # safetensors
        tokenizer.save_pretrained(staging)
        replace_dir(staging, str(out))
    except BaseException:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
