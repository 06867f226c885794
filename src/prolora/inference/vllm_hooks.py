"""The changes prolora's vLLM plugin makes inside vLLM: small, version-guarded, each undoable (docs/vllm.md).

vLLM calls :func:`prolora.inference.vllm_plugin.register` in each of its processes; it calls :func:`install`,
which applies the hooks below on the vLLM versions they were written and tested for
(:data:`TESTED_VERSIONS`) and, on any other version, applies none and logs a warning (the plugin then
serves PRoLoRA adapters as before: exported to dense LoRA). ``PROLORA_VLLM_HOOKS=0`` turns them all off.

1. **Base rows** (:func:`fix_base_rows`). vLLM 0.32.0's pure-PyTorch LoRA ops, which its CPU build uses
   (``vllm/lora/ops/torch_ops/lora_ops.py``: ``bgmv_shrink``, ``bgmv_expand``, ``bgmv_expand_slice``, and
   the ``sgmv_*`` ops that call them), gather ``lora_weights[lora_indices_tensor]``; a token without an
   adapter carries the index ``-1``, which selects the *last* slot. Once traffic has filled that slot,
   base-model rows in a batch with adapter rows get that adapter's delta (the Triton kernels skip ``-1``).
   The hook wraps the three ``bgmv_*`` ops: the gather uses a valid index and the rows marked ``-1`` get
   no delta (zero input to the shrink and expand; rows an expand would overwrite are kept), as the Triton
   kernels do. Upstream: vllm-project/vllm pull requests 48421 and 49656 (open). Remove this hook once
   vLLM carries the fix.
2. **Compact PRoLoRA adapters** (:func:`compact_adapters`). vLLM loads an adapter folder into a
   ``LoRAModel`` of dense A (r, h) and B (o, r) per module, keeps it in its host-side LRU cache
   (``--max-cpu-loras``) and copies it into a compute slot (``--max-loras``) when a batch needs it. With
   the hook, a PRoLoRA folder (``peft_type`` ``PROLORA``) loads as a :class:`CompactLoRAModel` holding the
   compact tensors only (``prolora_A0``, ``prolora_B0``, ``prolora_A_u``, ``prolora_B_u``, read and checked
   by :func:`prolora.format.read_adapter`, one flat tensor per module); it is expanded to dense
   (:func:`prolora.tuner.layout.expand`, the expansion every path uses) when vLLM copies it into a slot (``LoRAModelManager.activate_adapter``), and the dense copy is dropped
   once the slot holds it. Patched: ``LoRAModel.from_local_checkpoint`` (PRoLoRA folders only),
   ``LoRAModelManager._create_merged_loras_inplace`` (compact models record vLLM's packing instead) and
   ``LoRAModelManager.activate_adapter`` (drops the dense copy). The same folder therefore works through
   the resolver, ``--lora-modules`` and ``/v1/load_lora_adapter``.
3. **Load route** (:func:`clear_load_errors`). ``POST /v1/load_lora_adapter`` answers 500 for any adapter
   that fails to load. The hook checks a folder before vLLM loads it: an adapter vLLM cannot serve, or a
   broken PRoLoRA adapter, gets 400 with the reason; a PRoLoRA folder loads (hook 2).
"""

from __future__ import annotations

import logging
import os
import weakref
from pathlib import Path

logger = logging.getLogger(__name__)

TESTED_VERSIONS = ("0.32.0",)  # vLLM releases the hooks were written for (local tags such as +cpu ignored)
HOOKS_ENV = "PROLORA_VLLM_HOOKS"  # "0": apply none

_originals: dict[tuple[object, str], object] = {}  # (owner, attribute) -> what was there before install()


def vllm_version() -> str:
    """vLLM's version without a local tag (``0.32.0+cpu`` -> ``0.32.0``)."""
    import vllm

    return str(vllm.__version__).split("+", 1)[0]


_INHERITED = object()  # the attribute was not the owner's own: uninstall() deletes ours


def _patch(owner, name: str, new) -> None:
    key = (owner, name)
    if key not in _originals:
        _originals[key] = vars(owner).get(name, _INHERITED)  # the raw descriptor (a classmethod stays one)
    setattr(owner, name, new)


def installed() -> bool:
    """Whether the hooks are applied in this process."""
    return bool(_originals)


def install() -> bool:
    """Apply the hooks when vLLM's version is one of :data:`TESTED_VERSIONS` (and ``$PROLORA_VLLM_HOOKS`` is
    not ``0``); otherwise log why not and change nothing. Idempotent. Returns whether they are applied."""
    try:
        version = vllm_version()
    except ImportError:  # no vLLM: nothing to hook
        return False
    if os.environ.get(HOOKS_ENV, "1") == "0":
        logger.info("prolora: %s=0: vLLM hooks off; PRoLoRA adapters are served as dense exports", HOOKS_ENV)
        return False
    if version not in TESTED_VERSIONS:
        logger.warning(
            "prolora: vLLM %s is not a version prolora's hooks were written for (%s): not applied. "
            "PRoLoRA adapters are served as dense exports; on vLLM's CPU build, send base-model requests "
            "apart from adapter requests (docs/vllm.md)",
            version,
            ", ".join(TESTED_VERSIONS),
        )
        return False
    if installed():
        return True
    fix_base_rows()
    compact_adapters()
    clear_load_errors()
    logger.info("prolora: vLLM %s hooks applied (base rows, compact PRoLoRA adapters, load route)", version)
    return True


def uninstall() -> None:
    """Undo :func:`install` (tests restore vLLM as it was)."""
    while _originals:
        (owner, name), original = _originals.popitem()
        if original is _INHERITED:
            delattr(owner, name)
        else:
            setattr(owner, name, original)


# --- 1. base rows -------------------------------------------------------------------------------------


def _skipping_base_rows(op, expand: bool):
    """``op`` (a ``bgmv_*`` op: ``(inputs, weights, output, indices, ...)``) with rows whose index is
    negative (no adapter) left without a delta, as vLLM's Triton kernels leave them."""
    import inspect

    import torch

    params = inspect.signature(op).parameters
    names = list(params)
    at = names.index("add_inputs") - 4 if "add_inputs" in params else None  # among the args after indices

    def wrapped(inputs, weights, output, indices, *args, **kwargs):
        base = indices < 0
        if not bool(base.any()):
            return op(inputs, weights, output, indices, *args, **kwargs)
        inputs = torch.where(base.unsqueeze(-1), torch.zeros((), dtype=inputs.dtype), inputs)
        overwrites = False
        if expand and at is not None:
            add = kwargs["add_inputs"] if "add_inputs" in kwargs else None
            if add is None:
                add = args[at] if len(args) > at else params["add_inputs"].default
            overwrites = not add and indices.shape[0] == output.shape[0]
        kept = output[base].clone() if overwrites else None  # rows an overwriting expand must not change
        op(inputs, weights, output, indices.clamp(min=0), *args, **kwargs)
        if overwrites:
            output[base] = kept

    wrapped.__wrapped__ = op
    return wrapped


def fix_base_rows() -> None:
    """Wrap vLLM's ``bgmv_shrink``, ``bgmv_expand`` and ``bgmv_expand_slice`` (``torch_ops``, and the names
    ``punica_cpu`` imported) so that base-model rows get no adapter delta (module docstring, item 1)."""
    from vllm.lora.ops import torch_ops
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    for name, expand in (("bgmv_shrink", False), ("bgmv_expand", True), ("bgmv_expand_slice", True)):
        fixed = _skipping_base_rows(getattr(lora_ops, name), expand)
        for owner in (lora_ops, torch_ops, punica_cpu):  # lora_ops: the sgmv_* ops call these by name
            _patch(owner, name, fixed)


# --- 2. compact PRoLoRA adapters ----------------------------------------------------------------------


def is_prolora_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds an adapter config with ``peft_type`` ``PROLORA`` (unreadable: False)."""
    import json

    from prolora.format import CONFIG_NAME

    try:
        config = json.loads((Path(path) / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("peft_type") == "PROLORA"


_expanded: weakref.WeakSet = weakref.WeakSet()  # compact models holding a dense copy during activation
_activating = False


def _compact_model_class():
    """:class:`CompactLoRAModel` (a ``vllm.lora.lora_model.LoRAModel``; imports vLLM)."""
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.lora_weights import LoRALayerWeights, PackedLoRALayerWeights

    class CompactLoRAModel(LoRAModel):
        """A PRoLoRA adapter in vLLM's LoRA cache: the compact tensors, expanded to dense A and B only while
        vLLM copies the adapter into a compute slot.

        ``modules``: vLLM module name -> (its layout, its compact tensors flattened into one), as
        :func:`prolora.tuner.layout.expand` takes them (one tensor per module: the Python and allocator
        overhead of four small tensors per module costs 1.4× the file in memory, one tensor 1.03×).
        ``packed``: vLLM's packed module name (e.g. ``...qkv_proj``) -> the module names it packs, recorded
        by the manager when the adapter is added. ``dtype``: vLLM's LoRA dtype.
        """

        def __init__(self, lora_model_id, modules, dtype, packed=None):
            super().__init__(lora_model_id, max(spec.r for spec, _ in modules.values()), loras={})
            self.modules, self.dtype, self.packed = modules, dtype, packed or {}
            self._dense = None

        def clone(self, lora_model_id):
            return type(self)(lora_model_id, self.modules, self.dtype, self.packed)

        def check_lora_name(self, lora_name):
            return lora_name in self.modules or lora_name in self.packed

        def expand(self) -> dict:
            """vLLM module name -> dense ``LoRALayerWeights`` (scaling folded into B, as vLLM does), expanded by
            the one expansion every path uses (:func:`prolora.tuner.layout.expand`, Eq. 4)."""
            from prolora.tuner.layout import expand

            dense = {}
            for name, (spec, flat) in self.modules.items():
                a, b = (t.to(self.dtype or t.dtype) for t in expand(flat, spec))
                alpha = spec.scaling * spec.r  # informational in vLLM; the scaling is given
                dense[name] = LoRALayerWeights(name, spec.r, alpha, a, b, spec.scaling).optimize()
            return dense

        def get_lora(self, module_name):
            dense = self._dense
            if dense is None:
                dense = self.expand()
                if _activating:  # kept until the slot holds it (activate_adapter drops it)
                    self._dense = dense
                    _expanded.add(self)
            if module_name in self.packed:
                parts = [dense.get(n) for n in self.packed[module_name]]
                return PackedLoRALayerWeights.pack(parts) if any(parts) else None
            return dense.get(module_name)

        def release(self) -> None:
            self._dense = None

    return CompactLoRAModel


_CompactLoRAModel = None


def compact_model_class():
    global _CompactLoRAModel
    if _CompactLoRAModel is None:
        _CompactLoRAModel = _compact_model_class()
    return _CompactLoRAModel


def load_compact(
    lora_dir,
    expected_lora_modules,
    *,
    lora_model_id,
    dtype=None,
    weights_mapper=None,
    skip_prefixes=None,
):
    """A :class:`CompactLoRAModel` for the PRoLoRA folder ``lora_dir`` (what ``from_local_checkpoint`` returns
    for it): read and checked by :func:`prolora.format.read_adapter`, module names mapped as vLLM maps a
    LoRA's (``parse_fine_tuned_lora_name``).

    Raises:
        FileNotFoundError, ValueError: as :func:`prolora.format.read_adapter`; ValueError for a module this
            model has no LoRA layer for (vLLM's own rule for LoRA adapters).
    """
    from vllm.lora.utils import parse_fine_tuned_lora_name

    from prolora.format import read_adapter
    from prolora.tuner.layout import flatten

    saved = read_adapter(lora_dir)
    modules, unexpected = {}, []
    for module, (spec, parts) in saved.modules.items():
        if skip_prefixes and any(f".{p}" in module or module.startswith(p) for p in skip_prefixes):
            continue
        name, _ = parse_fine_tuned_lora_name(f"base_model.model.{module}.lora_A.weight", weights_mapper)
        if name.rsplit(".", 1)[-1] not in expected_lora_modules:
            unexpected.append(name)
        modules[name] = (spec, flatten(parts))
    if unexpected:
        raise ValueError(
            f"While loading {lora_dir}, expected target modules in {sorted(expected_lora_modules)} but "
            f"received {unexpected}: this model has no LoRA layer for them"
        )
    if lora_model_id is None:
        from vllm.lora.utils import get_lora_id

        lora_model_id = get_lora_id()
    return compact_model_class()(lora_model_id, modules, dtype)


def compact_adapters() -> None:
    """Load PRoLoRA folders as :class:`CompactLoRAModel` (module docstring, item 2)."""
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.model_manager import LoRAModelManager

    from_local_checkpoint = LoRAModel.from_local_checkpoint.__func__
    create_merged = LoRAModelManager._create_merged_loras_inplace
    activate = LoRAModelManager.activate_adapter

    def loading(cls, lora_dir, expected_lora_modules, peft_helper, **kwargs):
        if not is_prolora_folder(lora_dir):
            return from_local_checkpoint(cls, lora_dir, expected_lora_modules, peft_helper, **kwargs)
        return load_compact(
            lora_dir,
            expected_lora_modules,
            lora_model_id=kwargs.get("lora_model_id"),
            dtype=kwargs.get("dtype"),
            weights_mapper=kwargs.get("weights_mapper"),
            skip_prefixes=kwargs.get("skip_prefixes"),
        )

    def adding(self, lora_model):
        if not isinstance(lora_model, compact_model_class()):
            return create_merged(self, lora_model)
        if lora_model.rank > self.lora_config.max_lora_rank:
            raise ValueError(
                f"LoRA rank {lora_model.rank} is greater than max_lora_rank {self.lora_config.max_lora_rank}."
            )
        names = lora_model.modules
        lora_model.packed = {
            packed: parts for packed, parts in self.packed_modules.items() if any(p in names for p in parts)
        }

    def activating(self, lora_id):
        global _activating
        _activating = True
        try:
            return activate(self, lora_id)
        finally:
            _activating = False
            for model in list(_expanded):
                model.release()
            _expanded.clear()

    _patch(LoRAModel, "from_local_checkpoint", classmethod(loading))
    _patch(LoRAModelManager, "_create_merged_loras_inplace", adding)
    _patch(LoRAModelManager, "activate_adapter", activating)


# --- 3. load route ------------------------------------------------------------------------------------


def load_error(path: str) -> str | None:
    """Why the adapter folder ``path`` cannot be loaded by vLLM with the hooks, or ``None``: a PRoLoRA folder
    must pass :func:`prolora.format.read_adapter`; a folder of another PEFT type than LoRA and PRoLoRA is
    refused. Folders without an adapter config are left to vLLM (it may resolve hub ids)."""
    import json

    from prolora.format import CONFIG_NAME, read_adapter

    config_file = Path(path) / CONFIG_NAME
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        return f"{config_file} is not valid JSON ({exc})"
    peft_type = config.get("peft_type") if isinstance(config, dict) else None
    if peft_type == "PROLORA":
        try:
            read_adapter(path)
        except (ValueError, FileNotFoundError) as exc:
            return str(exc)
        return None
    if peft_type not in ("LORA", None):
        return f"{path} is a {peft_type} adapter: vLLM serves LoRA adapters (and, with prolora, PRoLoRA ones)"
    return None


def clear_load_errors() -> None:
    """``POST /v1/load_lora_adapter`` answers 400 with the reason for a folder :func:`load_error` refuses
    (module docstring, item 3); anything else goes to vLLM as before."""
    from http import HTTPStatus

    from vllm.entrypoints.openai.models.serving import OpenAIServingModels
    from vllm.entrypoints.serve import create_error_response

    load = OpenAIServingModels.load_lora_adapter

    async def loading(self, request, base_model_name=None):
        import asyncio

        if request.lora_path:
            reason = await asyncio.to_thread(load_error, request.lora_path)
            if reason is not None:
                return create_error_response(
                    message=f"LoRA adapter '{request.lora_name}' cannot be loaded: {reason}",
                    err_type="BadRequestError",
                    status_code=HTTPStatus.BAD_REQUEST,
                )
        return await load(self, request, base_model_name)

    _patch(OpenAIServingModels, "load_lora_adapter", loading)
