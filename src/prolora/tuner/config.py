"""``PRoLoRAConfig``: the knobs of PRoLoRA (paper Section 3.1) as a PEFT config.

Switching from PEFT's LoRA is one line: ``LoraConfig(r=2, ...)`` → ``PRoLoRAConfig(r=8, unshared_r=1,
sharing_rate_a=7, sharing_rate_b=7, ...)`` (the paper's Table 2 pair: the same 5.00M parameters on
LLaMA2-7B, four times the rank).
"""

from __future__ import annotations

import enum
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from peft.config import PeftConfig

from prolora.equations import ROTATE_DIMS, SHARE_DIMS

from .layout import _is_number, validate_values


class PRoLoRAType(str, enum.Enum):
    """The ``peft_type`` of PRoLoRA adapters (``"PROLORA"`` in ``adapter_config.json``).

    A one-member ``str`` enum: it equals (and hashes like) the plain string read back from JSON, and has
    the ``.value`` that some PEFT code paths read (see :mod:`prolora.tuner.registration`).
    """

    PROLORA = "PROLORA"


PROLORA = PRoLoRAType.PROLORA
PREFIX = "prolora_"  # parameter-name prefix of every PRoLoRA tensor (PEFT's ``prefix``)

INIT_SCHEMES = ("rectified", "vanilla")
OVERRIDABLE = ("r", "unshared_r", "sharing_rate_a", "sharing_rate_b", "stride_a", "stride_b", "lora_alpha")


class UnsupportedOptionError(TypeError, ValueError):
    """A LoRA option that PRoLoRA does not support (e.g. ``bias="all"``, ``target_parameters``).

    Both a ``TypeError`` — what PEFT's callers expect from a method without that option (they construct the
    config and catch ``TypeError``) — and a ``ValueError`` (bad user input, as prolora's CLI reports it).
    """


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class PRoLoRAConfig(PeftConfig):
    """Configuration of a PRoLoRA adapter (Wang et al., ACL 2024, Section 3.1).

    Args:
        r: Rank of ΔW = B·A (the rank of LoRA this adapter replaces). Must be ≥ 1.
        unshared_r: ``u``, ranks kept unshared (partially-sharing refinement). ``0 ≤ u ≤ r``; ``u = r`` is
            exactly LoRA, ``u = 0`` is RoLoRA (with rotation) or CLoRA (without).
        sharing_rate_a: ``m``, number of chunks of A along its input dimension h; only the first,
            A_0 of shape (r−u, ceil(h/m)), is trained. ``1 ≤ m ≤ h``.
        sharing_rate_b: ``n``, number of chunks of B along its output dimension o; B_0 is (ceil(o/n), r−u).
        lora_alpha: Scaling numerator: ΔW is multiplied by ``lora_alpha / r`` (as LoRA; paper Section 4).
        use_rslora: Beyond the paper: scale ΔW by ``lora_alpha / √r`` instead (rank-stabilised LoRA,
            Kalajdzievski 2023), with the same name and meaning as PEFT's ``LoraConfig.use_rslora``. Default
            ``False`` (the paper's ``lora_alpha / r``); adapters saved without the field load as ``False``.
        lora_dropout: Dropout probability on the adapter's input (off in eval mode).
        target_modules: Module names (suffix match), a regex (full match), or ``"all-linear"``. ``None`` uses
            PEFT's LoRA defaults for known architectures.
        exclude_modules: Names or regex of modules never adapted.
        rotation: Rotation enhancement (Eq. 3): chunk i is rolled by ``i·stride``. ``False`` gives the
            paper's PRoLoRA^-r (and CLoRA when ``unshared_r = 0``).
        stride_a, stride_b: Base strides s_A, s_B. ``None`` means ``max(⌊(r−u)/m⌋, 1)`` and
            ``max(⌊(r−u)/n⌋, 1)`` (Section 3.1; the authors' code uses r−u, the paper writes r).
        init: ``"rectified"`` (Eq. 5: A_0 uses the bound of the full input size h, as A_u does) or
            ``"vanilla"`` (Kaiming bound of A_0's own width ceil(h/m): the paper's PRoLoRA^-i ablation).
        init_weights: ``True`` (default): B_0 and B_u start at zero, so a new adapter is the identity (paper
            Section 3.1, as LoRA). ``False``: they start random too (``U(±1/√r)``), so ΔW ≠ 0 at once — PEFT's
            ``init_weights=False`` convention for tests and debugging, not for training.
        share: Table 4 variants: ``"hidden"`` cuts A and B along their hidden dimensions (the paper's
            broadcast reduction); ``"rank"`` cuts them along the rank dimension instead.
        rotate_dim: Table 4 variants: ``"rank"`` rolls the copies along the rank dimension (the paper's
            rotation); ``"hidden"`` rolls them along the hidden dimension. Ignored when ``rotation=False``.
        overrides: Per-module values by name pattern, as PEFT's ``rank_pattern``: ``{"mlp\\\\..*":
            {"r": 16, "unshared_r": 2}}``; keys of the inner dicts: r, unshared_r, sharing_rate_a,
            sharing_rate_b, stride_a, stride_b, lora_alpha. The paper allows distinct values per layer.
        bias: ``"none"`` only (biases stay frozen).
        modules_to_save, layers_to_transform, layers_pattern: as in PEFT's ``LoraConfig``.
        module_shapes, fan_in_fan_out: written by prolora when the adapter is created (see the format docs).

    Raises:
        ValueError: at construction, naming the field, the value and the bound it violates.
        UnsupportedOptionError: (a ``TypeError`` and a ``ValueError``) for LoRA options PRoLoRA lacks:
            ``bias`` other than ``"none"``, ``target_parameters``.
    """

    r: int = field(default=8, metadata={"help": "Rank r of ΔW = B·A."})
    unshared_r: int = field(default=1, metadata={"help": "Unshared rank u (0 ≤ u ≤ r)."})
    sharing_rate_a: int = field(default=7, metadata={"help": "m: chunks of A along its input dimension."})
    sharing_rate_b: int = field(default=7, metadata={"help": "n: chunks of B along its output dimension."})
    lora_alpha: float = field(default=16, metadata={"help": "ΔW is scaled by lora_alpha / r."})
    use_rslora: bool = field(
        default=False,
        metadata={
            "help": "Scale ΔW by lora_alpha / sqrt(r) (rsLoRA, as PEFT's LoraConfig.use_rslora) instead of lora_alpha / r."
        },
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter input."})
    target_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules to adapt."})
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Never adapt."})
    rotation: bool = field(default=True, metadata={"help": "Rotation enhancement (Eq. 3)."})
    stride_a: int | None = field(
        default=None, metadata={"help": "Base stride s_A (default max(⌊(r−u)/m⌋,1))."}
    )
    stride_b: int | None = field(
        default=None, metadata={"help": "Base stride s_B (default max(⌊(r−u)/n⌋,1))."}
    )
    init: str = field(
        default="rectified", metadata={"help": "'rectified' (Eq. 5) or 'vanilla' (PRoLoRA^-i)."}
    )
    init_weights: bool = field(
        default=True, metadata={"help": "False: B starts random too (tests/debugging)."}
    )
    share: str = field(default="hidden", metadata={"help": "Table 4: chunk along 'hidden' or 'rank'."})
    rotate_dim: str = field(default="rank", metadata={"help": "Table 4: roll along 'rank' or 'hidden'."})
    overrides: dict = field(default_factory=dict, metadata={"help": "Per-module r/u/m/n by name pattern."})
    bias: str = field(default="none", metadata={"help": "Only 'none' is supported."})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Extra trainable modules."})
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer ids."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "Layer list name."})
    target_parameters: list[str] | None = field(default=None, metadata={"help": "Unsupported; keep None."})
    module_shapes: dict = field(
        default_factory=dict,
        metadata={
            "help": "Filled by prolora: module name -> [o, h] of its base weight, so that tools can expand the "
            "compact tensors without the base model, and loading onto a different base fails clearly."
        },
    )
    fan_in_fan_out: bool = field(
        default=False,
        metadata={
            "help": "Set by prolora when a base layer is a transformers Conv1D (weight stored as (h, o))."
        },
    )

    def __post_init__(self):  # noqa: C901 -- a flat list of independent checks
        super().__post_init__()
        self.peft_type = PROLORA
        if isinstance(self.target_modules, (list, tuple, set)):
            self.target_modules = sorted(set(self.target_modules))
        if not isinstance(self.overrides, dict) or not all(
            isinstance(v, dict) for v in self.overrides.values()
        ):
            raise ValueError(
                f"overrides={self.overrides!r} must map module-name regexes to dicts of values, "
                "e.g. {'mlp\\..*': {'r': 4}}."
            )
        if not isinstance(self.module_shapes, dict) or not all(
            isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(d) and d > 0 for d in v)
            for v in self.module_shapes.values()
        ):
            raise ValueError(
                "module_shapes must map module names to [out_features, in_features] (positive "
                "integers); it is written by prolora when the adapter is created, do not edit it."
            )
        for name in ("rotation", "fan_in_fan_out", "init_weights", "use_rslora"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be true or false.")  # noqa: TRY004  (bad user input: a ValueError for prolora.cli)
        for name, value in self.overrides.items():
            try:
                re.compile(name)
            except re.error as exc:
                raise ValueError(f"overrides key {name!r} is not a valid regex: {exc}") from None
            unknown = set(value) - set(OVERRIDABLE)
            if unknown:
                raise ValueError(
                    f"overrides[{name!r}] has unknown keys {sorted(unknown)}; allowed: {OVERRIDABLE}"
                )
        self.validate_values(self.module_values(None), where="")
        for name, value in self.overrides.items():
            self.validate_values({**self.module_values(None), **value}, where=f"overrides[{name!r}]")
        if not _is_number(self.lora_dropout) or not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout={self.lora_dropout!r} must be in [0, 1).")
        if self.init not in INIT_SCHEMES:
            raise ValueError(f"init={self.init!r} must be one of {INIT_SCHEMES}.")
        if self.share not in SHARE_DIMS:
            raise ValueError(f"share={self.share!r} must be one of {SHARE_DIMS}.")
        if self.rotate_dim not in ROTATE_DIMS[:2]:
            raise ValueError(f"rotate_dim={self.rotate_dim!r} must be one of {ROTATE_DIMS[:2]}.")
        if self.bias != "none":
            raise UnsupportedOptionError(f"bias={self.bias!r} is not supported by PRoLoRA; use bias='none'.")
        if self.target_parameters:
            raise UnsupportedOptionError("target_parameters is not supported by PRoLoRA; use target_modules.")
        self._check_layer_selection()

    def _check_layer_selection(self) -> None:
        """layers_to_transform / layers_pattern need a list of target_modules, and go together (as LoRA).

        Raises:
            ValueError: naming the combination that would otherwise be silently ignored.
        """
        # both messages: peft's LoraConfig words (peft's tests match them by regex), then the fix
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise ValueError(
                f"layers_to_transform cannot be used when target_modules is a str "
                f"({self.target_modules!r}): give target_modules as a list of module names."
            )
        if isinstance(self.target_modules, str) and self.layers_pattern is not None:
            raise ValueError(
                f"layers_pattern cannot be used when target_modules is a str "
                f"({self.target_modules!r}): give target_modules as a list of module names."
            )
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("layers_pattern needs layers_to_transform (the layer indices to adapt).")

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str,
        subfolder: str | None = None,
        verify_weights: bool = True,
        **kwargs,
    ):
        """Read ``adapter_config.json`` (as PEFT does) and, for a local folder (unless ``verify_weights`` is
        false), check the weights file beside it before anything is loaded
        (:func:`~prolora.tuner.saved.verify_saved`: tensor names against ``module_shapes``, shapes,
        finiteness, and the ΔW fields recorded at save time).

        Raises:
            ValueError: naming the missing/unexpected/non-finite tensor or the config field that disagrees.
        """
        from .saved import verify_saved

        config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        path = (
            os.path.join(pretrained_model_name_or_path, subfolder)
            if subfolder
            else pretrained_model_name_or_path
        )
        if verify_weights and os.path.isdir(path):
            verify_saved(config, path)
        return config

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        """Write ``adapter_config.json`` (as PEFT does); then record the fields that decide ΔW in the metadata
        of the weights file beside it (``PeftModel.save_pretrained`` writes the weights first), and add to the
        folder's README how to load a PRoLoRA adapter."""
        from .saved import LOAD_HINT, record_delta_w

        super().save_pretrained(save_directory, **kwargs)
        record_delta_w(self, save_directory)
        readme = os.path.join(save_directory, "README.md")
        text = Path(readme).read_text(encoding="utf-8") if os.path.isfile(readme) else ""
        if "## Loading this PRoLoRA adapter" not in text:
            from prolora.files import write_text

            write_text(
                readme,
                text.rstrip("\n")
                + ("\n\n" if text else "")
                + f"## Loading this PRoLoRA adapter\n\n{LOAD_HINT}\n",
            )

    def module_values(self, key: str | None) -> dict:
        """r, unshared_r, sharing rates, strides and lora_alpha for the module named ``key`` (overrides applied).

        The first pattern of ``overrides`` that matches the end of ``key`` wins (PEFT's rank_pattern rule).
        """
        values = {name: getattr(self, name) for name in OVERRIDABLE}
        if key is not None:
            from peft.utils.other import get_pattern_key

            pattern = get_pattern_key(self.overrides.keys(), key) if self.overrides else None
            if pattern in self.overrides:
                values.update(self.overrides[pattern])
        return values

    validate_values = staticmethod(validate_values)  # the module-level check of prolora.tuner.layout
