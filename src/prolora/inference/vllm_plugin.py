"""vLLM integration: a LoRA resolver that serves PRoLoRA adapters by name, and the dense copies vLLM needs.

vLLM serves dense LoRA adapters (A: (r, h), B: (o, r) per module). This module lets ``vllm serve`` take
PRoLoRA adapters through vLLM's official extension points only:

* :func:`register` is the ``vllm.general_plugins`` entry point (``pyproject.toml``): vLLM calls it in each
  of its processes. When ``PROLORA_VLLM_ADAPTERS_DIR`` is set it registers :class:`AdapterFolder` as a
  ``vllm.lora.resolver.LoRAResolver`` under the name ``"prolora"``. With
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``, a request for ``model=NAME`` that names no loaded adapter asks
  the resolvers; ours serves ``$PROLORA_VLLM_ADAPTERS_DIR/NAME`` (an adapter directory or a ``prolora
  train`` run directory).
* A PRoLoRA adapter is exported to dense LoRA once (:func:`dense_lora`, exact: Eqs. 3-4), into a cache
  folder named by the SHA-256 of its two files, written atomically (a staging folder renamed into place:
  concurrent servers and killed processes leave a complete copy or none); dense LoRA adapters pass through
  unchanged. The cache is ``$PROLORA_VLLM_CACHE_DIR``, else ``$XDG_CACHE_HOME/prolora/vllm``
  (``~/.cache/prolora/vllm``; exported adapters in ``lora/``, dense base models in ``models/``).
* The adapter's ``base_model_name_or_path`` must name the served model: vLLM passes the model it was
  started with (``vllm serve MODEL``: a hub id or a folder). A folder written by :func:`dense_base_model`
  carries the name of the model it holds (``prolora_model.json``); ``PROLORA_VLLM_BASE_MODEL=NAME`` declares
  the served model's name, ``*`` turns the check off. An adapter for another model is not served (vLLM
  answers 404) and the reason is logged.
* :func:`dense_base_model` writes a base model that vLLM cannot load itself (the embedded GGUF default) as
  a float32 safetensors folder, once (cached by the file's content hash, atomic).

Everything here imports without vLLM; vLLM is imported only inside :func:`register`.
Command line (:mod:`prolora.cli.vllm`): ``prolora vllm base-model [--model M]`` prints the folder of
:func:`dense_base_model`; ``prolora vllm adapter PATH`` prints the folder vLLM serves for an adapter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

ADAPTERS_ENV = "PROLORA_VLLM_ADAPTERS_DIR"
CACHE_ENV = "PROLORA_VLLM_CACHE_DIR"
BASE_ENV = "PROLORA_VLLM_BASE_MODEL"
RESOLVER_NAME = "prolora"
MODEL_MARKER = "prolora_model.json"  # in a folder written by dense_base_model: {"name", "file", "sha256"}
_EXPORT_VERSION = "dense-lora-1"  # part of the cache key: bump when the exported files change

logger = logging.getLogger(__name__)


def cache_dir(root: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``root``, else ``$PROLORA_VLLM_CACHE_DIR``, else ``$XDG_CACHE_HOME/prolora/vllm``
    (``~/.cache/prolora/vllm``). Exported adapters go to its ``lora/``, dense base models to ``models/``."""
    if root is not None:
        return Path(root)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "prolora" / "vllm"


def _sha256(paths: list[Path], extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def read_peft_type(adapter: str | os.PathLike) -> tuple[Path, dict]:
    """``(adapter directory, its adapter_config.json)`` of an adapter read and checked by the one reader,
    :func:`prolora.format.read_adapter` (any peft type; a ``prolora train`` run directory gives its
    ``adapter/``).

    Raises:
        FileNotFoundError, ValueError: as :func:`prolora.format.read_adapter`.
    """
    from prolora.format import read_adapter

    read = read_adapter(adapter, others=True, types=None)
    return read.path, read.raw


def dense_lora(adapter: str | os.PathLike, cache: str | os.PathLike | None = None) -> Path:
    """The dense LoRA adapter folder vLLM serves for ``adapter``.

    A dense LoRA adapter (``peft_type`` ``LORA``) is returned as it is. A PRoLoRA adapter is exported with
    :func:`prolora.format.export_lora` into ``cache_dir(cache)/lora/<sha256>`` once: the key is the SHA-256 of its
    config and weights files (and the export format's version), so an edited adapter gets a new copy and an
    unchanged one is never exported twice. The export goes to a staging folder renamed into place: a
    reader sees a complete copy or none, also with several processes exporting at once.

    Raises:
        FileNotFoundError, ValueError: as :func:`prolora.format.read_adapter` (a broken adapter, with
        the message every other path gives); ValueError for adapter types vLLM cannot serve (VeRA, Tied-LoRA, ...).
    """
    from prolora.format import CONFIG_NAME, WEIGHTS_NAME, export_lora

    path, config = read_peft_type(adapter)
    peft_type = config["peft_type"]
    if peft_type == "LORA":
        return path
    if peft_type != "PROLORA":
        raise ValueError(
            f"{path} is a {peft_type} adapter; vLLM serves LoRA adapters, and prolora exports "
            "PRoLoRA ones to LoRA: other types cannot be served by vLLM"
        )
    root = cache_dir(cache) / "lora"
    final = root / _sha256([path / CONFIG_NAME, path / WEIGHTS_NAME], _EXPORT_VERSION)
    if (final / CONFIG_NAME).is_file() and (final / WEIGHTS_NAME).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=root)
    source = Path(f"{staging}.source")
    try:
        # export a private copy and key the cache by the copy's hash: an adapter rewritten meanwhile cannot
        # leave one content's export under another content's key
        source.mkdir()
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            shutil.copyfile(path / name, source / name)
        final = root / _sha256([source / CONFIG_NAME, source / WEIGHTS_NAME], _EXPORT_VERSION)
        export_lora(source, staging, overwrite=True)

        def complete():
            return (final / CONFIG_NAME).is_file() and (final / WEIGHTS_NAME).is_file()

        try:
            os.rename(staging, final)
        except OSError:  # `final` exists: another process's complete copy is as good as ours
            if not complete():
                if not final.is_dir():  # not a folder in the way: a real error (permissions, disk)
                    raise
                # a damaged copy (a file removed by hand or a cache cleaner): set it aside, put ours in place
                aside = f"{staging}.stale"
                os.rename(final, aside)
                shutil.rmtree(aside, ignore_errors=True)
                try:
                    os.rename(staging, final)
                except OSError:
                    if not complete():
                        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(source, ignore_errors=True)
    logger.info("prolora: exported PRoLoRA adapter %s to dense LoRA %s", path, final)
    return final


def served_name(base_model: str) -> str:
    """The name of the model vLLM serves, as adapters record it: ``$PROLORA_VLLM_BASE_MODEL``, else the name
    in a :func:`dense_base_model` folder's ``prolora_model.json``, else ``base_model`` itself (via
    :func:`prolora.base_models.model_name`)."""
    from prolora.base_models import model_name

    if os.environ.get(BASE_ENV):
        return os.environ[BASE_ENV]
    marker = Path(base_model) / MODEL_MARKER
    if marker.is_file():
        try:
            return json.loads(marker.read_text())["name"]
        except (json.JSONDecodeError, KeyError, TypeError):
            logger.warning("prolora: %s is unreadable; using %s as the model's name", marker, base_model)
    return model_name(base_model)


def base_mismatch(adapter_base: str | None, base_model: str) -> str | None:
    """Why an adapter made for ``adapter_base`` must not be served on ``base_model``, or ``None`` when it may.

    Names are compared after :func:`prolora.base_models.model_name` (so an adapter saved before 0.2 with
    the embedded model's local folder matches its hub id). An adapter that records no model is served.
    """
    from prolora.base_models import model_name

    served = served_name(base_model)
    if served == "*" or not adapter_base:
        return None
    if model_name(adapter_base) in (served, model_name(base_model)):
        return None
    return (
        f"it was made for {adapter_base!r} (adapter_config.json: base_model_name_or_path) but this server "
        f"serves {served!r}; set {BASE_ENV}=NAME to declare the served model's name, or '*' to skip the check"
    )


def find_adapter(adapters_dir: str | os.PathLike, name: str) -> Path | None:
    """The adapter ``name`` in ``adapters_dir`` (``adapters_dir/name``), or ``None`` when there is none.

    Raises:
        ValueError: ``name`` breaks the one name rule (:func:`prolora.tuner.saved.check_adapter_name`), so
            that a request cannot reach outside the folder.
    """
    from prolora.tuner.saved import check_adapter_name

    check_adapter_name(name)
    path = Path(adapters_dir) / name
    return path if path.is_dir() else None


class AdapterFolder:
    """Resolve adapter names to the dense LoRA folders vLLM loads (the logic of the vLLM resolver).

    ``adapters_dir``: the folder whose sub-folders are adapters (PRoLoRA, LoRA, or ``prolora train`` runs),
    requested by folder name. ``cache``: where PRoLoRA adapters are exported (:func:`cache_dir`).
    ``compact``: vLLM loads PRoLoRA folders itself (:mod:`prolora.inference.vllm_hooks` applied): a PRoLoRA
    adapter is checked (:func:`prolora.format.read_adapter`) and served from its own folder, nothing exported.
    """

    def __init__(
        self, adapters_dir: str | os.PathLike, cache: str | os.PathLike | None = None, compact: bool = False
    ):
        if not Path(adapters_dir).is_dir():
            raise ValueError(
                f"{ADAPTERS_ENV}={adapters_dir}: not a folder; set it to the folder holding "
                "one sub-folder per adapter"
            )
        self.adapters_dir = Path(adapters_dir)
        self.cache = cache_dir(cache)
        self.compact = compact

    def resolve(self, base_model: str, name: str) -> Path | None:
        """The folder vLLM loads as ``name`` on ``base_model`` (dense LoRA, or with ``compact`` the PRoLoRA
        adapter itself), or ``None`` (logged) when there is no such adapter, it cannot be read or served, or
        it was made for another model."""
        try:
            path = find_adapter(self.adapters_dir, name)
            if path is None:
                return None
            source, config = read_peft_type(path)
            reason = base_mismatch(config.get("base_model_name_or_path"), base_model)
            if reason is not None:
                logger.warning("prolora: not serving adapter %r: %s", name, reason)
                return None
            if self.compact and config.get("peft_type") == "PROLORA":
                return source  # read and checked above; vLLM loads it compact
            return dense_lora(source, self.cache)
        except (ValueError, FileNotFoundError, OSError) as exc:
            logger.warning("prolora: not serving adapter %r: %s", name, exc)
            return None


def _resolver_class():
    """The ``vllm.lora.resolver.LoRAResolver`` subclass over :class:`AdapterFolder` (imports vLLM)."""
    import asyncio

    from vllm.lora.request import LoRARequest
    from vllm.lora.resolver import LoRAResolver

    class PRoLoRAResolver(LoRAResolver):
        """vLLM resolver: ``model=NAME`` → ``$PROLORA_VLLM_ADAPTERS_DIR/NAME`` as dense LoRA."""

        def __init__(self, folder: AdapterFolder):
            self.folder = folder

        async def resolve_lora(self, base_model_name: str, lora_name: str):
            # exporting reads and writes files: off the server's event loop
            path = await asyncio.to_thread(self.folder.resolve, base_model_name, lora_name)
            if path is None:
                return None
            # vLLM replaces lora_int_id with its own counter when it loads the adapter
            return LoRARequest(
                lora_name=lora_name, lora_int_id=1, lora_path=str(path), base_model_name=base_model_name
            )

    return PRoLoRAResolver


def register() -> None:
    """The ``vllm.general_plugins`` entry point (vLLM calls this in each of its processes): apply prolora's
    version-guarded hooks (:func:`prolora.inference.vllm_hooks.install`: right base-model rows, PRoLoRA
    adapters kept compact, clear load errors), and register the ``"prolora"`` resolver when
    ``$PROLORA_VLLM_ADAPTERS_DIR`` is set (registering again replaces the resolver).

    Raises:
        ValueError: ``$PROLORA_VLLM_ADAPTERS_DIR`` is set but is not a folder (vLLM stops at start-up).
    """
    from prolora.inference import vllm_hooks

    compact = vllm_hooks.install()
    adapters_dir = os.environ.get(ADAPTERS_ENV)
    if not adapters_dir:
        return
    from vllm.lora.resolver import LoRAResolverRegistry

    folder = AdapterFolder(adapters_dir, compact=compact)
    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, _resolver_class()(folder))


def dense_base_model(model: str | None = None, cache: str | os.PathLike | None = None) -> Path:
    """A folder vLLM can load for ``model``: the embedded default or a ``.gguf`` file de-quantized to a
    float32 safetensors model with its tokenizer (written once, keyed by the file's SHA-256, atomically), and
    a ``prolora_model.json`` naming it (:func:`prolora.base_models.model_name`) and its source file. Other
    models (folders, hub ids) are returned as given: vLLM loads them itself.

    Raises:
        FileNotFoundError: as :func:`prolora.base_models.resolve_model`.
    """
    from prolora.base_models import load_model, load_tokenizer, model_file, model_name
    from prolora.files import write_json

    source = model_file(model)
    if source is None:
        return Path(str(model))
    digest = _sha256([Path(source)], "dense-base-1")
    final = cache_dir(cache) / "models" / f"{Path(source).stem}-f32-{digest[:16]}"
    if (final / MODEL_MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    try:
        load_model(model).save_pretrained(staging)  # safetensors, float32
        load_tokenizer(model).save_pretrained(staging)
        write_json(
            os.path.join(staging, MODEL_MARKER), {"name": model_name(model), "file": source, "sha256": digest}
        )
        try:
            os.rename(staging, final)
        except OSError:
            if not (final / MODEL_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
