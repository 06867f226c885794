"""``PRoLoRAModel``: the PEFT tuner that decides where PRoLoRA layers go (and nothing else).

Everything model-level — ``save_pretrained``, ``load_adapter``, ``set_adapter``, ``disable_adapter``,
``delete_adapter``, ``merge_adapter``/``unmerge_adapter``, ``merge_and_unload``, ``unload`` — is PEFT's
``BaseTuner``/``PeftModel`` machinery working on :class:`~prolora.tuner.layer.PRoLoRALayer`.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

from .config import PREFIX, PRoLoRAConfig
from .layer import PRoLoRALayer, PRoLoRALinear, base_shape
from .saved import check_adapter_name


def _inject_adapter_names(module, args, kwargs, adapter_names):
    kwargs["adapter_names"] = adapter_names
    return args, kwargs


def _record_shape(config: PRoLoRAConfig, key: str, base: torch.nn.Module) -> None:
    """Store ``[o, h]`` of module ``key`` in the config, or check it against the one stored on save.

    Raises:
        ValueError: when the adapter was made for a base weight of another shape, naming both.
    """
    h, o = base_shape(base)
    expected = config.module_shapes.get(key)
    if expected is not None and list(expected) != [o, h]:
        raise ValueError(
            f"This adapter was made for a base model whose {key} has weight shape (o, h) = "
            f"{tuple(expected)}, but this base model's is {(o, h)}. Load it onto the base model it "
            "was trained on (adapter_config.json: base_model_name_or_path)."
        )
    config.module_shapes[key] = [o, h]
    if type(base).__name__ == "Conv1D":
        config.fan_in_fan_out = True


class PRoLoRAModel(BaseTuner):
    """Replaces each targeted linear layer of ``model`` with a :class:`~prolora.tuner.layer.PRoLoRALinear`."""

    prefix: str = PREFIX
    tuner_layer_cls = PRoLoRALayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    def inject_adapter(self, model: torch.nn.Module, adapter_name: str, *args, **kwargs) -> None:
        """PEFT's injection (used by ``get_peft_model``, ``add_adapter``, ``load_adapter``,
        ``from_pretrained``), all or nothing: a name that is not a safe identifier is refused first
        (:func:`~prolora.tuner.saved.check_adapter_name`), and when injection fails part-way (e.g. a module of
        another shape), every replaced module, every adapter entry added to an existing PRoLoRA layer and the
        ``requires_grad`` flags are put back before the error propagates, so the model is exactly as before.

        Raises:
            ValueError: for a bad name, or as the injection does.
        """
        check_adapter_name(adapter_name)
        modules = dict(model.named_modules())
        trainable = {name: p.requires_grad for name, p in model.named_parameters()}
        try:
            super().inject_adapter(model, adapter_name, *args, **kwargs)
        except BaseException:
            _restore(model, adapter_name, modules, trainable)
            raise

    def _check_merge_allowed(self) -> None:
        """Before any merge (``merge_adapter``, ``merge_and_unload``): untie every targeted base weight that
        another module shares (e.g. ``lm_head`` tied to ``embed_tokens``), so that the merge changes only
        the targeted module and the merged model gives the unmerged model's outputs; the model config's
        ``tie_word_embeddings`` becomes false (a saved merged model keeps both matrices). Warns once."""
        untied = untie_targets(self.model)
        if untied:
            import warnings

            warnings.warn(
                f"untied {untied} from the weights they shared (tie_word_embeddings) before merging, so "
                "that the merge leaves the other module (e.g. embed_tokens) unchanged; the merged model "
                "has a separate lm_head.",
                stacklevel=3,
            )
        super()._check_merge_allowed()

    def _check_new_adapter_config(self, config: PRoLoRAConfig) -> None:
        """Remember which modules a loaded adapter was saved with (``module_shapes``), before injection."""
        super()._check_new_adapter_config(config)
        config._saved_modules = frozenset(config.module_shapes)  # not a field: never serialised

    def _mark_only_adapters_as_trainable(self, model: torch.nn.Module) -> None:
        """After injection: a loaded adapter must have found every module it was saved with."""
        for name, config in self.peft_config.items():
            saved = getattr(config, "_saved_modules", frozenset())
            missing = sorted(
                saved - {key for key, layer in prolora_modules(model) if name in layer.prolora_spec}
            )
            if missing:
                raise ValueError(
                    f"This adapter was saved with modules the base model lacks ({missing[:3]}"
                    f"{' …' if len(missing) > 3 else ''}); load it onto the base model it was "
                    "trained on (adapter_config.json: base_model_name_or_path)."
                )
        super()._mark_only_adapters_as_trainable(model)

    def _create_and_replace(
        self, config: PRoLoRAConfig, adapter_name, target, target_name, parent, current_key, **optional_kwargs
    ):
        saved = getattr(config, "_saved_modules", frozenset())
        if saved and current_key not in saved:
            raise ValueError(
                f"This adapter has no weights for {current_key}: it was saved for a base model "
                "with other layers. Load it onto the base model it was trained on "
                "(adapter_config.json: base_model_name_or_path)."
            )
        kwargs = {
            "values": config.module_values(current_key),
            "lora_dropout": config.lora_dropout,
            "use_rslora": config.use_rslora,
            "rotation": config.rotation,
            "init": config.init,
            "init_weights": config.init_weights,
            "share": config.share,
            "rotate_dim": config.rotate_dim,
            "module_name": current_key,
            "inference_mode": config.inference_mode,
        }
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        _record_shape(config, current_key, base)
        if isinstance(target, PRoLoRALayer):
            target.update_layer(adapter_name, **kwargs)
            return
        new_module = PRoLoRALinear(base, adapter_name, **kwargs)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added adapter is not trainable until set_adapter()
        self._replace_module(parent, target_name, new_module, target)

    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        """``forward(..., adapter_names=[...])``: route each batch row through the named adapter (as LoRA).

        The names reach every PRoLoRA layer and every ``modules_to_save`` copy. With beam search
        (``generate(..., num_beams=k)``) each name is repeated k times, as the rows are; an encoder keeps
        the original names (it sees the original rows).

        Raises:
            ValueError: for a name no layer has (``"__base__"`` means no adapter), or in training mode.
            TypeError: with beam search, when ``adapter_names`` is not a list or tuple.
        """
        from peft.utils.other import AuxiliaryTrainingWrapper

        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            yield
            return
        if self.training:
            # peft's words first (peft's tests match them by regex; tests/test_peft_conformance.py), then ours
            raise ValueError(
                "Cannot pass `adapter_names` when the model is in training mode (adapter_names= is "
                "for inference); call model.eval() first."
            )
        num_beams = kwargs.get("num_beams")
        beams = num_beams if isinstance(num_beams, int) else 1
        if beams > 1 and not isinstance(adapter_names, (list, tuple)):
            raise TypeError(
                f"adapter_names must be a list of str (one per input row) with num_beams > 1, got "
                f"{type(adapter_names).__name__}."
            )
        known = set()
        for layer in self.model.modules():
            if isinstance(layer, PRoLoRALayer):
                known |= set(layer.prolora_spec)
        unknown = sorted(set(adapter_names) - known - {"__base__"})
        if unknown:
            raise ValueError(
                f"Unknown adapter name(s) {unknown} in adapter_names; loaded adapters: {sorted(known)} "
                "(use '__base__' for rows without an adapter)."
            )
        original = list(adapter_names)
        if beams > 1:
            adapter_names = [name for name in adapter_names for _ in range(beams)]
        routed = (PRoLoRALayer, AuxiliaryTrainingWrapper)
        handles = [
            module.register_forward_pre_hook(
                partial(_inject_adapter_names, adapter_names=list(adapter_names)), with_kwargs=True
            )
            for module in self.model.modules()
            if isinstance(module, routed)
        ]
        encoder = self.model.get_encoder() if hasattr(self.model, "get_encoder") else None
        if encoder is not None and encoder is not self.model and len(adapter_names) != len(original):
            handles += [  # registered later, so it runs later and wins
                module.register_forward_pre_hook(
                    partial(_inject_adapter_names, adapter_names=original), with_kwargs=True
                )
                for module in encoder.modules()
                if isinstance(module, routed)
            ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        """PEFT's selection of the adapter's tensors, plus a zero-size tensor for each compact tensor that has no
        elements (A_u, B_u when u = 0; A_0, B_0 when u = r): they are not parameters in memory, but every adapter
        file has all four keys per module, whatever u (docs/format.md)."""
        to_return = super()._get_adapter_state_dict(
            model, config, adapter_name, state_dict, unwanted_adapter_names
        )
        for name, layer in model.named_modules():
            if not isinstance(layer, PRoLoRALayer) or adapter_name not in layer.prolora_spec:
                continue
            keys = [f"{name}.{tensor}.{adapter_name}" for tensor in PRoLoRALayer.adapter_layer_names]
            if not any(key in to_return for key in keys):
                continue  # the model's keys are named differently here (e.g. wrapped): nothing to complete
            like = next(to_return[key] for key in keys if key in to_return)
            for key, shape in zip(keys, layer.prolora_spec[adapter_name].file_shapes(), strict=True):
                if key not in to_return:
                    to_return[key] = like.new_zeros(shape)
        return to_return

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        """Drop the zero-size compact tensors of an adapter file (see :meth:`_get_adapter_state_dict`)."""
        names = PRoLoRALayer.adapter_layer_names
        state_dict = {
            key: value
            for key, value in state_dict.items()
            if not (value.numel() == 0 and key.rsplit(".", 1)[-1] in names)
        }
        return super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)

    def add_weighted_adapter(
        self,
        adapters: list[str],
        weights: list[float],
        adapter_name: str,
        combination_type: str = "svd",
        **kwargs,
    ) -> None:
        """New adapter ``adapter_name`` with ΔW = Σ weights[i]·ΔW(adapters[i]): LoRA's "cat" (exact) and "svd"
        combinations, stored in PRoLoRA's LoRA layout (u = r); see :mod:`prolora.tuner.weighted`.

        Raises:
            ValueError: for LoRA's factor-wise combination types (naming what to use instead) and bad arguments.
        """
        from .weighted import add_weighted_adapter

        add_weighted_adapter(self, adapters, weights, adapter_name, combination_type, **kwargs)

    def set_expanded_cache(self, enabled: bool) -> None:
        """Cache the expanded A, B per adapter without autograd (default) or compute from the chunks."""
        for layer in self.model.modules():
            if isinstance(layer, PRoLoRALayer):
                layer.cache_expanded = enabled
                layer._expanded.clear()

    def set_lean_backward(self, enabled: bool) -> None:
        """Train through the lean autograd function (default: expanded A, B are not kept for backward, so a
        step's peak memory is at most LoRA's) or through plain autograd over the same gathers (keeps A and B
        for backward: r·(h + o) floats per module; a few percent faster on very short steps)."""
        for layer in self.model.modules():
            if isinstance(layer, PRoLoRALayer):
                layer.lean_backward = enabled


def _restore(model: torch.nn.Module, adapter_name: str, modules: dict, trainable: dict) -> None:
    """Undo a failed injection of ``adapter_name``: put back the modules of ``modules`` (name → module
    before), drop the adapter from PRoLoRA layers that existed before, restore ``requires_grad``."""
    for name in sorted(modules, key=lambda n: n.count(".") if n else -1):  # parents first
        if not name:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if getattr(parent, child, None) is not modules[name]:
            setattr(parent, child, modules[name])
    for module in model.modules():
        if isinstance(module, PRoLoRALayer) and adapter_name in module.prolora_spec:
            module.delete_adapter(adapter_name)
    for name, param in model.named_parameters():
        if name in trainable:
            param.requires_grad_(trainable[name])


def untie_targets(model: torch.nn.Module) -> list[str]:
    """Give every PRoLoRA layer whose base weight another module shares its own copy; returns their names.

    Sets ``tie_word_embeddings = False`` in the model's config (and its text config) when it untied any.
    """
    shared = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        shared.setdefault(id(param), []).append(name)
    untied = []
    for name, layer in prolora_modules(model):
        base = layer.get_base_layer()
        weight = getattr(base, "weight", None)
        if isinstance(weight, torch.nn.Parameter) and len(shared.get(id(weight), [])) > 1:
            base.weight = torch.nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
            untied.append(name)
    if untied:
        config = getattr(model, "config", None)
        for cfg in {
            id(c): c for c in (config, getattr(config, "get_text_config", lambda: None)()) if c is not None
        }.values():
            if getattr(cfg, "tie_word_embeddings", False):
                cfg.tie_word_embeddings = False
    return untied


def prolora_modules(model: torch.nn.Module):
    """Yield ``(name, layer)`` for every PRoLoRA layer in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, PRoLoRALayer):
            yield name, module


def get_prolora_model(model: torch.nn.Module, config: PRoLoRAConfig, adapter_name: str = "default", **kwargs):
    """Wrap ``model`` with a PRoLoRA adapter; returns a ``peft.PeftModel`` (same API as LoRA's).

    Equivalent to ``peft.get_peft_model(model, config, adapter_name)``. Only the compact tensors
    (A_0, B_0, A_u, B_u of each targeted module) are trainable.

    Raises:
        TypeError: if ``config`` is not a :class:`PRoLoRAConfig`.
        ValueError: if r/u/m/n do not fit a targeted module (the message names it).
    """
    from peft import get_peft_model

    if not isinstance(config, PRoLoRAConfig):
        raise TypeError(f"config must be a PRoLoRAConfig, got {type(config).__name__}.")
    return get_peft_model(model, config, adapter_name=adapter_name, **kwargs)
