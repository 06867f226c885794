"""Tied-LoRA (Renduchintala et al., 2023, arXiv:2311.09578) as the PRoLoRA paper runs it, as a PEFT tuner.

The PRoLoRA paper (Section 4.1, Table 2: 4.60M parameters on LLaMA2-7B at r=256) applies Tied LoRA to the
query, key and value projections, with every component trainable:

    ΔW_{l,p} = (lora_alpha / r) · diag(v_{l,p}) · B_p · diag(u_l) · A          p ∈ {q, k, v}, layer l

* ``A`` (r × h): ONE matrix, tied across all layers and across q/k/v (they read the same input, of size h);
* ``B_p`` (o_p × r): one per projection, tied across layers. They are stored stacked as one matrix
  ``B = [B_q; B_k; B_v]`` ((Σ_p o_p) × r): the ``B ∈ R^{3d×r}`` of Tied-LoRA's fused QKV projection;
* ``u_l`` (r): one per layer, shared by the layer's q/k/v (fused QKV: one u per layer);
* ``v_{l,p}`` (o_p): one per projection per layer (the fused ``v ∈ R^{3d}`` split by projection).

Trainable parameters: ``r·h + r·Σ_p o_p + L·(r + Σ_p o_p)``; with q, k, v of output d (no GQA) this is
``4·d·r + L·(r + 3·d)`` (LLaMA2-7B: 4,595,712 at r=256, 4,989,696 at r=280). Init: A as LoRA's
``kaiming_uniform_(a=√5)`` (U(±1/√h)), B = 0, u = v = 1, so ΔW = 0 at the start and u = v = 1 recovers a
(tied) LoRA. The scale ``lora_alpha / r`` is LoRA's (Tied-LoRA writes a plain scalar α); see
``docs/baselines.md``.

Storage: the shared A, B and u live once, on the tuner (``base_model.tied_A`` / ``tied_B`` / ``tied_u``, each
an ``nn.ParameterDict`` keyed by adapter name); every adapted layer holds a reference to those same dicts
(the pattern of PEFT's own VeRA and VB-LoRA), so PEFT's trainability, dtype, device and adapter switching
machinery treats them like any adapter tensor, and a model has exactly one ``nn.Parameter`` for each.
``save_pretrained`` writes each shared tensor once (:meth:`TiedLoRAModel._get_adapter_state_dict`), so the
safetensors file needs no aliasing workaround. ``import prolora.baselines`` registers the method with PEFT
(``peft_type`` ``"TIED_LORA"``; ``adapter_config.json`` also carries ``"method": "tied-lora"``).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, _get_in_out_features, check_adapters_to_merge
from peft.utils import resolve_quantization_backend
from torch import nn

QKV = ("q_proj", "k_proj", "v_proj")
PREFIX = "tied_lora_"  # per-layer tensors; the shared ones are named tied_A/B/u (see _get_adapter_state_dict)
SHARED = ("tied_A", "tied_B", "tied_u")


class TiedLoRAType(str, enum.Enum):
    """The ``peft_type`` of Tied-LoRA adapters (``"TIED_LORA"`` in ``adapter_config.json``)."""

    TIED_LORA = "TIED_LORA"


TIED_LORA = TiedLoRAType.TIED_LORA


@dataclass
class TiedLoRAConfig(PeftConfig):
    """Configuration of a Tied-LoRA adapter (see the module docstring for the math).

    Args:
        r: Rank of the tied A and B (the PRoLoRA paper uses 256, and 280 for its 4.99M row).
        lora_alpha: ΔW is scaled by ``lora_alpha / r``.
        lora_dropout: Dropout on the adapter input (each adapted module draws its own mask).
        target_modules: Module names (suffix match) or a regex; default q/k/v. All targets must have the same
            input size (A is tied across them) and each name one output size in every layer (B_p is tied
            across layers): the restriction the PRoLoRA paper notes in Section 3.2.
        exclude_modules, layers_to_transform, layers_pattern: as in PEFT's ``LoraConfig``.
        method: ``"tied-lora"``, a marker for tools reading ``adapter_config.json``.
        layout: Written when the adapter is created: ``in_features`` (h), ``outputs`` ([[name, o_p], ...] in
            the order B stacks them) and ``num_groups`` (L, the number of u vectors); loading onto a base
            model with another layout fails with a clear error.
    """

    r: int = field(default=256, metadata={"help": "Rank of the tied A (r×h) and B_p (o_p×r)."})
    lora_alpha: float = field(default=16, metadata={"help": "ΔW is scaled by lora_alpha / r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter input."})
    target_modules: list[str] | str | None = field(
        default_factory=lambda: list(QKV), metadata={"help": "Modules to adapt (default q/k/v)."}
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Never adapt."})
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer ids."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "Layer list name."})
    method: str = field(default="tied-lora", metadata={"help": "Marker in adapter_config.json."})
    layout: dict = field(
        default_factory=dict, metadata={"help": "in_features, outputs, num_groups (filled)."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = TIED_LORA
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"r={self.r!r} is invalid: it must be an integer ≥ 1.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout={self.lora_dropout!r} must be in [0, 1).")
        if self.method != "tied-lora":
            raise ValueError(f"method={self.method!r}: a TiedLoRAConfig is always 'tied-lora'.")
        if self.target_modules is None:
            self.target_modules = list(QKV)
        elif isinstance(self.target_modules, (list, tuple, set)):
            self.target_modules = sorted(set(self.target_modules))


class TiedLoRALayer(BaseTunerLayer):
    """Tied-LoRA state of one adapted module: its own ``v`` plus references to the tuner's shared A, B, u.

    ``tied_lora_slot[adapter] = (g, offset, o)``: this module uses ``u = tied_u[adapter][g]`` and the rows
    ``offset : offset + o`` of the stacked ``tied_B[adapter]``.
    """

    adapter_layer_names = ("tied_lora_v", "tied_A", "tied_B", "tied_u")
    other_param_names = ("tied_lora_slot", "tied_lora_scaling", "tied_lora_dropout")

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        self.base_layer = base_layer
        self.quantization_backend = resolve_quantization_backend(base_layer)
        self.tied_lora_v = nn.ParameterDict({})
        self.tied_lora_dropout = nn.ModuleDict({})
        self.tied_lora_slot: dict[str, tuple[int, int, int]] = {}
        self.tied_lora_scaling: dict[str, float] = {}
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.in_features, self.out_features = _get_in_out_features(self.get_base_layer())
        self.fan_in_fan_out = type(self.get_base_layer()).__name__ == "Conv1D"  # weight stored (h, o)
        self.kwargs = kwargs

    def update_layer(
        self,
        adapter_name: str,
        shared: dict[str, nn.ParameterDict],
        slot: tuple[int, int, int],
        config: TiedLoRAConfig,
    ) -> None:
        """Add ``adapter_name``: v = 1 of length o, and references to the shared dicts (``tied_A/B/u``)."""
        for name in SHARED:
            setattr(
                self, name, shared[name]
            )  # the same module objects in every layer (registered references)
        self.tied_lora_slot[adapter_name] = slot
        self.tied_lora_scaling[adapter_name] = config.lora_alpha / config.r
        self.tied_lora_v[adapter_name] = nn.Parameter(torch.ones(self.out_features))
        dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.tied_lora_dropout[adapter_name] = dropout.train(self.get_base_layer().training)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def factors(self, adapter_name: str, device: torch.device | None = None):
        """``(A (r, h), B_p (o, r), u_l (r,), v_{l,p} (o,))`` of this module, views of the shared tensors."""
        group, offset, o = self.tied_lora_slot[adapter_name]
        tensors = (
            self.tied_A[adapter_name],
            self.tied_B[adapter_name][offset : offset + o],
            self.tied_u[adapter_name][group],
            self.tied_lora_v[adapter_name],
        )
        return tuple(t.to(device) for t in tensors) if device is not None else tensors

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """ΔW = (lora_alpha / r)·diag(v)·B_p·diag(u)·A in float32, shape (o, h) ((h, o) for a Conv1D base)."""
        a, b, u, v = (t.float() for t in self.factors(adapter_name))
        delta = self.tied_lora_scaling[adapter_name] * (v[:, None] * b) @ (u[:, None] * a)
        return delta.t() if self.fan_in_fan_out else delta

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the adapters' ΔW into the base weight (dequantizing/requantizing a bitsandbytes base).

        Raises:
            ValueError: with ``safe_merge=True``, when the merged weight would contain NaN or inf.
        """
        for name in check_adapters_to_merge(self, adapter_names):
            if name not in self.tied_lora_v:
                continue
            weight = self.get_base_weight()
            merged = (weight.float() + self.get_delta_weight(name).to(weight.device)).to(weight.dtype)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(
                    f"NaN/inf in the merged weight: adapter {name!r} is broken; nothing was merged."
                )
            self.set_base_weight(merged)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Subtract every merged ΔW again (in reverse order)."""
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            weight = self.get_base_weight()
            self.set_base_weight(
                (weight.float() - self.get_delta_weight(name).to(weight.device)).to(weight.dtype)
            )


class TiedLoRALinear(nn.Module, TiedLoRALayer):
    """A base ``nn.Linear`` / ``Conv1D`` / bitsandbytes linear layer plus Tied-LoRA adapters.

    ``forward(x)`` (x: (…, h)) returns ``base(x) + Σ_active (lora_alpha/r)·v ⊙ B_p(u ⊙ A·dropout(x))``, (…, o).
    """

    def __init__(self, base_layer: nn.Module, adapter_name: str, **kwargs: Any) -> None:
        super().__init__()
        TiedLoRALayer.__init__(self, base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, **kwargs)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        for name in self.active_adapters:
            if name not in self.tied_lora_v:
                continue
            a, b, u, v = self.factors(name, x.device)
            h = self._cast_input_dtype(self.tied_lora_dropout[name](x), a.dtype)
            delta = self.tied_lora_scaling[name] * v * F.linear(u * F.linear(h, a), b)
            result = result + delta.to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "tied_lora." + super().__repr__()


class TiedLoRAModel(BaseTuner):
    """The PEFT tuner: creates the shared A, B, u per adapter and wraps each target in a :class:`TiedLoRALinear`."""

    prefix: str = PREFIX
    tuner_layer_cls = TiedLoRALayer
    target_module_mapping: ClassVar[dict] = {}  # no per-architecture defaults: q/k/v
    uses_shared_state: bool = True

    def _pre_injection_hook(self, model: nn.Module, config: TiedLoRAConfig, adapter_name: str) -> None:
        for name in SHARED:
            setattr(self, name, nn.ParameterDict({}))
        self._slots: dict[str, dict[str, tuple[int, int, int]]] = {}

    def _plan(self, config: TiedLoRAConfig, adapter_name: str) -> None:
        """Find the targets, check they can be tied, allocate and initialise A, B, u; fill ``config.layout``.

        Raises:
            ValueError: targets with different input sizes, a module name with different output sizes in
                different layers, or a base model other than the one ``config.layout`` was made for.
        """
        found = {}
        for key, module in self.model.named_modules():
            if key and self._check_target_module_exists(config, key):
                base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
                h, o = _get_in_out_features(base)
                if h is None:
                    raise TypeError(
                        f"Tied-LoRA cannot adapt {key} ({type(base).__name__}); use linear layers."
                    )
                found[key] = (h, o)
        if len({h for h, _ in found.values()}) > 1:
            raise ValueError(
                "Tied-LoRA ties one A across all targets, so they need one input size; got "
                f"{ {k: h for k, (h, _) in found.items()} }. Target q/k/v (PRoLoRA paper, Section 3.2)."
            )
        outputs: dict[str, int] = {}
        groups: dict[str, int] = {}
        for key, (_, o) in found.items():
            parent, _, name = key.rpartition(".")
            if outputs.setdefault(name, o) != o:
                raise ValueError(
                    f"Tied-LoRA ties B_{name} across layers, but {name} has output sizes "
                    f"{outputs[name]} and {o} ({key})."
                )
            groups.setdefault(parent, len(groups))
        layout = {
            "in_features": next(iter(found.values()))[0],
            "outputs": [[n, o] for n, o in outputs.items()],
            "num_groups": len(groups),
        }
        if config.layout and config.layout != layout:
            raise ValueError(
                f"This adapter was made for a base model with layout {config.layout}, but this "
                f"model gives {layout}. Load it onto the base model it was trained on."
            )
        config.layout = layout
        offsets = dict(
            zip(outputs, accumulate(outputs.values(), initial=0), strict=False)
        )  # row of B_p in the stacked B
        self._slots[adapter_name] = {
            k: (groups[k.rpartition(".")[0]], offsets[k.rpartition(".")[2]], o) for k, (_, o) in found.items()
        }
        a = torch.empty(config.r, layout["in_features"])
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # LoRA's init of A: U(±1/√h)
        self.tied_A[adapter_name] = nn.Parameter(a)
        self.tied_B[adapter_name] = nn.Parameter(torch.zeros(sum(outputs.values()), config.r))
        self.tied_u[adapter_name] = nn.Parameter(torch.ones(len(groups), config.r))

    def _create_and_replace(
        self,
        config: TiedLoRAConfig,
        adapter_name,
        target,
        target_name,
        parent,
        current_key,
        **optional_kwargs,
    ):
        if adapter_name not in self.tied_A:
            self._plan(config, adapter_name)
        kwargs = {
            "shared": {name: getattr(self, name) for name in SHARED},
            "slot": self._slots[adapter_name][current_key],
            "config": config,
        }
        if isinstance(target, TiedLoRALayer):
            target.update_layer(adapter_name, **kwargs)
            return
        new_module = TiedLoRALinear(target, adapter_name, **kwargs)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added adapter is not trainable until set_adapter()
        self._replace_module(parent, target_name, new_module, target)

    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        """PEFT's selection minus the per-layer references to A, B, u: each shared tensor is saved once, as
        ``base_model.tied_A`` / ``tied_B`` / ``tied_u`` (adapter name removed by PEFT afterwards)."""
        selected = super()._get_adapter_state_dict(
            model, config, adapter_name, state_dict, unwanted_adapter_names
        )
        return {
            k: t
            for k, t in selected.items()
            if k.rsplit(".", 2)[-2] not in SHARED or k.startswith(tuple(f"base_model.{n}." for n in SHARED))
        }


def register() -> None:
    """Add Tied-LoRA to PEFT's method tables (as :mod:`prolora.tuner.registration` does for PRoLoRA). Idempotent.

    Raises:
        RuntimeError: if another method already took the name ``TIED_LORA`` or the prefix ``tied_lora_``.
    """
    from peft import mapping

    wanted = [
        (mapping.PEFT_TYPE_TO_CONFIG_MAPPING, TiedLoRAConfig),
        (mapping.PEFT_TYPE_TO_TUNER_MAPPING, TiedLoRAModel),
        (mapping.PEFT_TYPE_TO_PREFIX_MAPPING, PREFIX),
    ]
    for table, value in wanted:
        if table.get(TIED_LORA, value) is not value:
            raise RuntimeError(f"peft already maps {TIED_LORA.value!r} to {table[TIED_LORA]!r}.")
    if any(p == PREFIX for k, p in mapping.PEFT_TYPE_TO_PREFIX_MAPPING.items() if k != TIED_LORA):
        raise RuntimeError(f"another PEFT method already uses the parameter prefix {PREFIX!r}.")
    for table, value in wanted:
        table[TIED_LORA] = value


def tied_lora_param_count(
    in_features: int, outputs: list[int] | tuple[int, ...], num_groups: int, r: int
) -> int:
    """Trainable parameters: ``r·h`` (A) + ``r·Σo`` (B_p) + ``L·(r + Σo)`` (u, v), with Σo = Σ_p o_p.

    ``tied_lora_param_count(4096, [4096] * 3, 32, 256)`` = 4·d·r + L·(r + 3·d) = 4,595,712 (LLaMA2-7B, paper
    Table 2: 4.60M). With GQA (SmolLM2-135M: h = 576, q 576, k/v 192, 30 layers, r = 256): 429,696.
    """
    total = sum(outputs)
    return r * (in_features + total) + num_groups * (r + total)


def make_tied_lora_config(
    r: int = 256,
    lora_alpha: float = 16,
    lora_dropout: float = 0.1,
    target_modules: list[str] | str | None = QKV,
    task_type: str | None = "CAUSAL_LM",
    **kwargs,
) -> TiedLoRAConfig:
    """The PRoLoRA paper's Tied-LoRA setting: q/k/v, r = 256, α = 16, dropout 0.1 (Section 4.1, App. A.2).

    ``target_modules=None`` means q/k/v. Extra keyword arguments go to :class:`TiedLoRAConfig`.
    """
    return TiedLoRAConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=list(target_modules) if isinstance(target_modules, tuple) else target_modules,
        task_type=task_type,
        **kwargs,
    )


def apply_tied_lora(
    model: nn.Module,
    r: int = 256,
    lora_alpha: float = 16,
    lora_dropout: float = 0.1,
    target_modules: list[str] | str | None = QKV,
    adapter_name: str = "default",
):
    """Wrap ``model`` with a Tied-LoRA adapter; returns a ``peft.PeftModel`` (only A, B, u, v trainable).

    Save with ``model.save_pretrained(dir)``, reload with :func:`load_tied_lora`, merge with
    ``model.merge_and_unload()``; the HF Trainer trains and checkpoints it like a LoRA model.
    """
    from peft import get_peft_model

    register()
    config = make_tied_lora_config(r, lora_alpha, lora_dropout, target_modules)
    return get_peft_model(model, config, adapter_name=adapter_name)


def load_tied_lora(
    model: nn.Module, directory: str, is_trainable: bool = False, adapter_name: str = "default"
):
    """``PeftModel.from_pretrained`` for a saved Tied-LoRA adapter (registering the method with PEFT first)."""
    from peft import PeftModel

    register()
    return PeftModel.from_pretrained(model, directory, adapter_name=adapter_name, is_trainable=is_trainable)
