"""Trainable-parameter accounting for LoRA-family adapters, from a model's architecture alone.

The adapted layers are enumerated on a model built on the meta device (``accelerate.init_empty_weights``),
so no weight is read or allocated; target matching is PEFT's own (``check_target_module_exists``, the
``"all-linear"`` expansion, ``get_pattern_key`` for per-module overrides). The per-module PRoLoRA count is
:func:`prolora.equations.trainable_params` (paper Section 3.1, after Eq. 4).

Units: parameters are element counts; sizes are bytes = parameters × bytes per element of ``dtype``;
MB = 10^6 bytes, MiB = 2^20 bytes. The paper's Table 1 "MB" are MiB: 159.91M × 4 B = 639.6e6 B = 610 MiB.

transformers, accelerate and peft are imported inside the functions that need them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prolora.base_models import DEFAULT_MODEL, resolve_model

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PretrainedConfig

    Source = nn.Module | PretrainedConfig | str | None

# Paper Section 4.1 and Appendix A.2: "all the linear layers in transformer blocks".
PAPER_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Tied LoRA ties its matrices across the query, key and value projections only (paper Section 4.1).
TIED_LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj")
METHODS = ("lora", "prolora", "clora", "rolora", "vera", "tied-lora")
SOLVER_METHODS = ("prolora", "clora", "rolora")

# Released LLaMA2 architectures: config.json of meta-llama/Llama-2-{7b,13b,70b}-hf (Touvron et al., 2023,
# Table 1; 70B uses grouped-query attention with 8 key/value heads of dim 128, so k/v project to 1024).
_LLAMA2 = {
    "llama2-7b": {
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
    },
    "llama2-13b": {
        "hidden_size": 5120,
        "intermediate_size": 13824,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "num_key_value_heads": 40,
    },
    "llama2-70b": {
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
    },
}
PAPER_CONVENTION = (
    "32 layers and no grouped-query attention for every LLaMA2 size, and chunks counted as "
    "h/m, o/n (not the stored ceil(h/m), ceil(o/n))"
)
# The paper counts 13B and 70B with 7B's 32 layers and full multi-head attention, as the authors'
# calculate_params.py (github.com/Forence1999/PRoLoRA) does: only that gives Table 1's 6.26M and 11.27M.
# "<name>-paper" presets follow that convention.
PRESETS: dict[str, dict[str, int]] = {
    **_LLAMA2,
    **{
        f"{name}-paper": {**dims, "num_hidden_layers": 32, "num_key_value_heads": dims["num_attention_heads"]}
        for name, dims in _LLAMA2.items()
    },
}

_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class TargetLinear:
    """One adapted layer: its module path and base-weight shape W0 ∈ R^{o×h} (paper Section 3.1)."""

    name: str
    h: int  # input features
    o: int  # output features


@dataclass(frozen=True)
class ParamCount:
    """Trainable parameters of one adapter and its size in bytes at ``dtype``."""

    method: str
    params: int  # trainable parameters (elements)
    modules: int  # adapted linear layers
    dtype: str
    bytes_per_param: int

    @property
    def bytes(self) -> int:
        return self.params * self.bytes_per_param

    @property
    def megabytes(self) -> float:
        """Size in MB (10^6 bytes)."""
        return self.bytes / 1e6

    @property
    def mebibytes(self) -> float:
        """Size in MiB (2^20 bytes), the unit of the paper's Table 1 "MB" column."""
        return self.bytes / 2**20

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "bytes": self.bytes, "MB": self.megabytes, "MiB": self.mebibytes}


@dataclass(frozen=True)
class BudgetFit:
    """A PRoLoRA-family config (r, u, m, n), its trainable parameters and the budget it was matched to."""

    r: int
    u: int
    m: int
    n: int
    params: int
    budget: int

    @property
    def gap(self) -> int:
        """``params − budget``: negative under the budget, positive over it."""
        return self.params - self.budget

    @property
    def relative_gap(self) -> float:
        return self.gap / self.budget

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "gap": self.gap, "relative_gap": self.relative_gap}


def preset_config(name: str) -> PretrainedConfig:
    """The ``LlamaConfig`` of a preset in :data:`PRESETS` (dimensions only; vocabulary 32000)."""
    from transformers import LlamaConfig

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return LlamaConfig(vocab_size=32000, **PRESETS[name])


def _meta_model(config: PretrainedConfig) -> nn.Module:
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config)


@functools.lru_cache(maxsize=16)
def _meta_model_by_name(name: str) -> nn.Module:
    if name in PRESETS:
        return _meta_model(preset_config(name))
    from transformers import AutoConfig

    try:
        path, kwargs = resolve_model(name)
        config = AutoConfig.from_pretrained(path, **kwargs)
    except OSError as e:
        raise ValueError(
            f"{name!r} is neither a preset ({', '.join(PRESETS)}) nor a readable model: {e}"
        ) from e
    return _meta_model(config)


def architecture(source: Source) -> nn.Module:
    """The model to enumerate: ``source`` itself if it is a module, else one built on the meta device.

    ``source`` is a ``torch.nn.Module``, a transformers config, a preset name from :data:`PRESETS`, or a
    model for :func:`prolora.base_models.resolve_model` (``None`` = the embedded SmolLM2-135M, a local
    directory, a ``.gguf`` file or a hub id). Only the config is read, never weights; names are cached.
    """
    from torch import nn

    if isinstance(source, nn.Module):
        return source
    if source is None or isinstance(source, str):
        return _meta_model_by_name(source or DEFAULT_MODEL)
    return _meta_model(source)


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """(h, o) of an ``nn.Linear`` (weight (o, h)) or a transformers ``Conv1D`` (weight (h, o)); else None."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, Conv1D):
        return tuple(module.weight.shape)
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return None


def target_layers(
    source: Source, target_modules: str | Sequence[str] = PAPER_TARGET_MODULES
) -> list[TargetLinear]:
    """The linear layers an adapter with ``target_modules`` wraps, matched by PEFT's own rules.

    ``target_modules`` is a list of module names (each matching the full path or its dotted suffix), a
    regex string (full match on the path), or ``"all-linear"`` (every Linear/Conv1D but the output head).

    Raises:
        ValueError: a matched module is not a Linear/Conv1D layer, or nothing matched.
    """
    from peft import LoraConfig
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers, check_target_module_exists

    model = architecture(source)
    wanted = target_modules if isinstance(target_modules, str) else list(target_modules)
    config = _maybe_include_all_linear_layers(LoraConfig(target_modules=wanted), model)
    layers = []
    for name, module in model.named_modules():
        if not check_target_module_exists(config, name):
            continue
        shape = _linear_shape(module)
        if shape is None:
            raise ValueError(
                f"target {name!r} is a {type(module).__name__}; only Linear and Conv1D layers count"
            )
        layers.append(TargetLinear(name, *shape))
    if not layers:
        names = sorted({n.rsplit(".", 1)[-1] for n, mod in model.named_modules() if _linear_shape(mod)})
        raise ValueError(
            f"target_modules={target_modules!r} matched no layer; its linear layers: {', '.join(names)}"
        )
    return layers


def _torch_dtype(dtype: Any) -> torch.dtype:
    """A torch dtype from itself or its name, with the aliases fp32, bf16 and fp16."""
    import torch

    name = str(dtype).removeprefix("torch.")
    resolved = getattr(torch, _DTYPE_ALIASES.get(name, name), None)
    if isinstance(resolved, torch.dtype):
        return resolved
    raise ValueError(f"unknown dtype {dtype!r}; use float32 (fp32), bfloat16 (bf16) or float16 (fp16)")


def _hyperparams(method: str, r: int, u: int | None, m: int, n: int | None) -> tuple[int, int, int, int]:
    """Validate and complete (r, u, m, n): u is fixed by ``method`` except for prolora; ``n`` defaults to ``m``."""
    if r < 1:
        raise ValueError(f"r={r} is invalid: the rank must be ≥ 1")
    fixed_u = {"lora": r, "clora": 0, "rolora": 0}.get(method)
    if fixed_u is not None and u not in (None, fixed_u):
        raise ValueError(f"u={u} is invalid for {method}, whose u is {fixed_u}; use method prolora to set u")
    if method == "prolora" and u is None:
        raise ValueError(
            "prolora needs the unshared rank u (0 ≤ u ≤ r), e.g. r=8, u=1, m=n=7 as in the paper"
        )
    u = fixed_u if fixed_u is not None else u
    n = m if n is None else n
    if not 0 <= u <= r:
        raise ValueError(
            f"u={u} is invalid: the unshared rank must satisfy 0 ≤ u ≤ r={r}; lower u or raise r"
        )
    if m < 1 or n < 1:
        raise ValueError(f"m={m}, n={n} are invalid: sharing rates must be ≥ 1 (1 = no sharing)")
    return r, u, m, n


def _per_module_params(
    method: str,
    layers: Sequence[TargetLinear],
    base: Mapping[str, Any],
    overrides: Mapping[str, Mapping[str, int]],
    exact_division: bool = False,
) -> int:
    """Σ over layers of u·(h+o) + (r−u)·(⌈h/m⌉+⌈o/n⌉), ``overrides`` applied like PEFT's ``rank_pattern``.

    ``exact_division`` counts the paper's way, u·(h+o) + (r−u)·(h/m + o/n) (Section 3.1), rounded at the end:
    a chunk then has a fractional width when m does not divide h, so this is a convention, not storage.
    """
    from peft.utils.other import get_pattern_key

    from prolora.equations import trainable_params  # here: it loads torch (`prolora params --help` does not)

    for pattern, values in overrides.items():
        if unknown := set(values) - {"r", "u", "m", "n"}:
            raise ValueError(
                f"override {pattern!r} sets {sorted(unknown)}; only r, u, m and n can be overridden"
            )
    total = 0
    for layer in layers:
        r, u, m, n = _hyperparams(
            method, **{**base, **overrides.get(get_pattern_key(overrides, layer.name), {})}
        )
        if m > layer.h or n > layer.o:
            raise ValueError(
                f"m={m}, n={n} are invalid for {layer.name} (h={layer.h} inputs, o={layer.o} outputs): A is cut "
                f"into m chunks of its h columns and B into n chunks of its o rows, so use m ≤ {layer.h}, n ≤ {layer.o}"
            )
        total += (
            u * (layer.h + layer.o) + (r - u) * (layer.h / m + layer.o / n)
            if exact_division
            else trainable_params(layer.h, layer.o, r, u, m, n)
        )
    return round(total)


def _tied_lora_params(layers: Sequence[TargetLinear], r: int) -> int:
    """Tied LoRA (Renduchintala et al., 2023) as the paper runs it: ``r·(h + Σo) + L·(r + Σo)``.

    One A (r×h) tied across layers and projections; one B (o×r) per projection, tied across layers; per
    layer a scaling vector of length r and one of length o per projection (Σo sums the projections). With
    q, k, v of size d this is 4·d·r + L·(r + 3·d), the authors' calculate_params.py: 4.60M on LLaMA2-7B at
    r=256 (paper Table 2).
    """
    by_kind: dict[str, list[TargetLinear]] = defaultdict(list)
    for layer in layers:
        by_kind[layer.name.rsplit(".", 1)[-1]].append(layer)
    shapes = [{(t.h, t.o) for t in group} for group in by_kind.values()]
    per_kind = {len(group) for group in by_kind.values()}
    if len({t.h for t in layers}) != 1 or any(len(s) != 1 for s in shapes) or len(per_kind) != 1:
        raise ValueError(
            "tied-lora ties A across all targets and each B across layers, so its targets need one "
            "input size and one shape per module name, in every layer"
        )
    outputs = sum(o for ((_, o),) in shapes)
    return r * (layers[0].h + outputs) + per_kind.pop() * (r + outputs)


def count_parameters(
    source: Source,
    method: str = "lora",
    *,
    r: int,
    u: int | None = None,
    m: int = 1,
    n: int | None = None,
    target_modules: str | Sequence[str] | None = None,
    overrides: Mapping[str, Mapping[str, int]] | None = None,
    dtype: Any = "float32",
    exact_division: bool = False,
) -> ParamCount:
    """Trainable parameters of an adapter on a model (and its bytes at ``dtype``), from the architecture alone.

    Args:
        source: a model, a transformers config, a preset name or a model name/path (see :func:`architecture`).
        method: one of :data:`METHODS`; per adapted layer of weight shape (o, h) it trains

            - ``lora``: r·(h+o) (Hu et al., 2021), i.e. u = r;
            - ``prolora``: u·(h+o) + (r−u)·(⌈h/m⌉+⌈o/n⌉) (paper Section 3.1, after Eq. 4);
            - ``clora``/``rolora``: the same with u = 0 (Eqs. 2–3; rotation adds no parameter);
            - ``vera``: r + o, its scaling vectors d and b (Kopiczko et al., 2023); the frozen shared
              random matrices are not trainable and not counted;
            - ``tied-lora``: matrices shared across layers, see :func:`_tied_lora_params`.
        r: rank. u: unshared rank, 0 ≤ u ≤ r (required for ``prolora``, implied by the others).
        m, n: sharing rates: A is cut into m chunks along h, B into n chunks along o; ``n`` defaults to ``m``.
        target_modules: names, a regex or ``"all-linear"`` (see :func:`target_layers`); default
            :data:`PAPER_TARGET_MODULES`, or :data:`TIED_LORA_TARGET_MODULES` for ``tied-lora``.
        overrides: ``{pattern: {"r"|"u"|"m"|"n": value}}`` for some layers, matched as PEFT's
            ``rank_pattern`` (``peft.utils.other.get_pattern_key``); lora, prolora, clora, rolora only.
        dtype: element type of the stored adapter, a torch dtype or name (fp32: 4 bytes, bf16/fp16: 2).
        exact_division: count chunks as h/m and o/n, as the paper's text does, instead of the ⌈h/m⌉, ⌈o/n⌉
            columns that are actually stored (part of the paper's convention, see :func:`reproduce_paper`).

    Raises:
        ValueError: unknown method or dtype, invalid r/u/m/n (naming the value and the bound), no target.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    dtype = _torch_dtype(dtype)
    if target_modules is None:
        target_modules = TIED_LORA_TARGET_MODULES if method == "tied-lora" else PAPER_TARGET_MODULES
    layers = target_layers(source, target_modules)
    if method in ("vera", "tied-lora"):
        if (u, m, n) != (None, 1, None) or overrides:
            raise ValueError(f"{method} takes only r; u, m, n and overrides are PRoLoRA hyperparameters")
        _hyperparams("lora", r, None, 1, None)  # validates r
        params = sum(r + t.o for t in layers) if method == "vera" else _tied_lora_params(layers, r)
    else:
        params = _per_module_params(
            method, layers, {"r": r, "u": u, "m": m, "n": n}, overrides or {}, exact_division
        )
    return ParamCount(method, params, len(layers), str(dtype).removeprefix("torch."), dtype.itemsize)


def parse_budget(source: Source, budget: int | str, target_modules: str | Sequence[str] | None = None) -> int:
    """A parameter budget: an integer, or ``"METHOD:R"`` (e.g. ``"lora:8"``), that adapter's count on ``source``."""
    if isinstance(budget, int) or budget.isdigit():
        value = int(budget)
    else:
        method, _, rank = budget.partition(":")
        if not rank.isdigit():
            raise ValueError(
                f"budget {budget!r} is invalid: give a parameter count (610560) or METHOD:R (lora:8)"
            )
        value = count_parameters(source, method, r=int(rank), target_modules=target_modules).params
    if value < 1:
        raise ValueError(f"budget {budget!r} is invalid: it must be a positive number of parameters")
    return value


def solve_budget(
    source: Source,
    budget: int | str,
    *,
    method: str = "prolora",
    target_modules: str | Sequence[str] = PAPER_TARGET_MODULES,
    ranks: Iterable[int] = range(1, 65),
    shares: Iterable[int] = range(1, 17),
    tie_mn: bool = True,
    tolerance: float = 0.01,
    strict: bool = False,
) -> list[BudgetFit]:
    """PRoLoRA-family configs whose trainable parameters match a budget: closest first, then higher rank.

    Searches r in ``ranks``; u in 1..r−1 for ``prolora`` (u = 0 is RoLoRA, u = r is LoRA) or u = 0 for
    ``clora``/``rolora``; m, n in ``shares`` (m = n when ``tie_mn``), not both 1, with m ≤ every
    targeted h and n ≤ every targeted o. Keeps |params − budget| ≤ ``tolerance``·budget, and params ≤
    budget when ``strict``. ``budget`` is read by :func:`parse_budget`.

    The paper matches budgets up to rounding: it counts A_0 as h·(r−u)/m entries where a chunk holds
    ⌈h/m⌉ columns, so its r=8, u=1, m=n=7 "equals" LoRA r=2. On SmolLM2-135M that is 612,510 parameters
    against 610,560 (+0.32%): inside the default tolerance, outside a ``strict`` search.
    """
    from prolora.equations import trainable_params  # here: it loads torch (`prolora params --help` does not)

    if method not in SOLVER_METHODS:
        raise ValueError(f"the budget solver searches {', '.join(SOLVER_METHODS)}, not {method!r}")
    budget = parse_budget(source, budget, target_modules)
    shapes = Counter((t.h, t.o) for t in target_layers(source, target_modules))
    shares = sorted(set(shares))
    pairs = [
        (m, n)
        for m in shares
        for n in shares
        if (m == n or not tie_mn) and (m, n) != (1, 1) and all(1 <= m <= h and 1 <= n <= o for h, o in shapes)
    ]
    low, high = budget * (1 - tolerance), budget if strict else budget * (1 + tolerance)
    fits = []
    for r in ranks:
        for u in range(1, r) if method == "prolora" else (0,):
            for m, n in pairs:
                params = sum(k * trainable_params(h, o, r, u, m, n) for (h, o), k in shapes.items())
                if low <= params <= high:
                    fits.append(BudgetFit(r, u, m, n, params, budget))
    return sorted(fits, key=lambda f: (abs(f.gap), -f.r, -f.u, f.m, f.n))


@dataclass(frozen=True)
class PaperRow:
    """One "Param." value of the paper (LLaMA2, fp32) and the adapter config that it counts."""

    source: str  # where the value is printed
    preset: str  # real-architecture preset; the paper's convention is f"{preset}-paper"
    method: str
    r: int
    u: int | None = None
    m: int = 1
    n: int | None = None
    paper: str = ""  # the parameter count as printed, e.g. "5.00M" (M = 10^6)
    paper_size: str | None = None  # Table 1's "Bytes" column as printed (fp32; its "MB" are MiB)
    note: str = ""


_TABLE1 = (  # (preset, r, Param., Bytes) as printed in Table 1
    ("llama2-7b", 2, "5.00M", "19MB"),
    ("llama2-7b", 16, "39.98M", "153MB"),
    ("llama2-7b", 64, "159.91M", "610MB"),
    ("llama2-13b", 2, "6.26M", "24MB"),
    ("llama2-13b", 16, "50.07M", "191MB"),
    ("llama2-13b", 64, "200.28M", "764MB"),
    ("llama2-70b", 2, "11.27M", "43MB"),
    ("llama2-70b", 16, "90.18M", "344MB"),
    ("llama2-70b", 64, "360.71M", "1,376MB"),
)
PAPER_ROWS = (
    *(PaperRow("Table 1", preset, "lora", r, paper=p, paper_size=s) for preset, r, p, s in _TABLE1),
    PaperRow("Table 2", "llama2-7b", "lora", 2, paper="5.00M"),
    PaperRow("Table 2", "llama2-7b", "lora", 8, paper="19.99M"),
    PaperRow("Table 2", "llama2-7b", "lora", 16, paper="40.98M", note="typo: Table 1 has 39.98M"),
    PaperRow("Table 2", "llama2-7b", "vera", 256, paper="1.42M"),
    PaperRow("Table 2", "llama2-7b", "tied-lora", 256, paper="4.60M"),
    PaperRow("Table 2", "llama2-7b", "tied-lora", 280, paper="4.99M"),
    PaperRow("Table 2", "llama2-7b", "prolora", 8, 1, 7, paper="5.00M", note="config of Section 4.2"),
    PaperRow(
        "Table 2",
        "llama2-7b",
        "prolora",
        32,
        4,
        7,
        paper="19.99M",
        note="Figure 2; stored chunks of ceil(h/m) add 9,600",
    ),
    PaperRow("Table 2", "llama2-7b", "clora", 32, m=4, paper="19.99M", note="m=n=4 inferred"),
    PaperRow("Table 2", "llama2-7b", "rolora", 32, m=4, paper="19.99M", note="m=n=4 inferred"),
    PaperRow("Table 3", "llama2-13b", "lora", 2, paper="6.26M", note="budget of Section 4.3"),
)


def reproduce_paper() -> list[dict[str, Any]]:
    """Each of :data:`PAPER_ROWS` counted under the paper's convention and on the real architecture.

    One dict per row: the row's fields; ``paper_convention`` and ``real`` (:meth:`ParamCount.as_dict` at
    fp32); ``matches``: the paper-convention count printed as the paper prints it ("%.2fM") equals
    ``paper``; ``size_matches``: its MiB rounded half up equals Table 1's "MB" (None for rows without one).
    """
    rows = []
    for row in PAPER_ROWS:
        config = {"method": row.method, "r": row.r, "u": row.u, "m": row.m, "n": row.n}
        paper_convention = count_parameters(f"{row.preset}-paper", **config, exact_division=True)
        real = count_parameters(row.preset, **config)
        size = row.paper_size and int(row.paper_size.removesuffix("MB").replace(",", ""))
        rows.append(
            {
                **dataclasses.asdict(row),
                "paper_convention": paper_convention.as_dict(),
                "real": real.as_dict(),
                "matches": f"{paper_convention.params / 1e6:.2f}M" == row.paper,
                "size_matches": None
                if size is None
                else math.floor(paper_convention.mebibytes + 0.5) == size,
            }
        )
    return rows


# ------------------------------------------------------------------------------ text (`prolora params`)
def describe_config(method: str, r: int, u: int | None = None, m: int = 1, n: int | None = None) -> str:
    """A config as the paper names it: only the hyperparameters the method has."""
    if method in ("lora", "vera", "tied-lora"):
        return f"{method} r={r}"
    unshared = "" if method in ("clora", "rolora") else f" u={u}"
    return f"{method} r={r}{unshared} m={m} n={m if n is None else n}"


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in (header, *rows)
    )


def _millions(params: int) -> str:
    return f"{params / 1e6:.2f}M ({params:,})"


def count_text(result: dict[str, Any], default_config: dict[str, Any] | None = None) -> str:
    """A count as text: ``result`` holds ``model``, the config (``method, r, u, m, n``), ``overrides``,
    :meth:`ParamCount.as_dict`, optionally ``defaulted`` (the config keys taken from ``default_config``,
    the library's default PRoLoRA config) and, for a preset with a paper twin, ``paper_convention``
    (``preset``, ``params``)."""
    config = {key: result[key] for key in ("method", "r", "u", "m", "n")}
    params = result["params"]
    overrides = result.get("overrides")
    lines = [
        f"model      {result['model']}",
        f"adapter    {describe_config(**config)} on {result['modules']} layers"
        + (f", overrides {json.dumps(overrides)}" if overrides else ""),
        f"trainable  {params:,} parameters ({params / 1e6:.2f}M)",
        (
            f"size       {result['bytes']:,} bytes at {result['dtype']} ({result['bytes_per_param']} B/param)"
            f" = {result['MB']:,.2f} MB = {result['MiB']:,.2f} MiB"
        ),
    ]
    if result.get("defaulted"):
        lines.append(
            f"defaults   {', '.join(f'{key}={config[key]}' for key in result['defaulted'])} (not given): from "
            f"the library's default PRoLoRA config, {describe_config(**default_config)} (PRoLoRAConfig(), "
            "make_adapter_config() and prolora train's default)"
        )
    paper = result.get("paper_convention") or {"params": params}
    if paper["params"] != params:
        lines += [
            f"The numbers above are for the released architecture. The paper counts {PAPER_CONVENTION}:",
            f"{paper['preset']} gives {paper['params']:,} parameters ({paper['params'] / 1e6:.2f}M).",
        ]
    return "\n".join(lines)


def budget_text(result: dict[str, Any], tolerance: float, strict: bool, top: int) -> str:
    """The configs that fit a budget as a table: ``result`` holds ``budget``, ``method``, ``fits`` (the
    shown ones, :meth:`BudgetFit.as_dict`: the ``top`` closest, then ``train_default`` if it is not among
    them) and ``total_fits``."""
    fits, total, default = result["fits"], result["total_fits"], result.get("train_default")
    band = f"up to {tolerance:.1%} under" if strict else f"within ±{tolerance:.1%} of"
    listed = f"the {min(top, total)} closest shown (--top N for more)" if total > top else "all shown"
    exact = f" = {fits[0]['budget']:,} parameters" if fits else ""
    head = (
        f"{total} {result['method']} configs {band} the budget {result['budget']}{exact}; closest first, then "
        f"higher rank; {listed}:"
    )
    rows = [
        [
            *(str(f[key]) for key in ("r", "u", "m", "n")),
            f"{f['params']:,}",
            f"{f['gap']:+,}",
            f"{f['relative_gap']:+.2%}",
            "prolora train's default" if f == default else "",
        ]
        for f in fits
    ]
    if len(fits) > top:  # the default, listed after the closest ones
        rows.insert(len(rows) - 1, ["...", "", "", "", "", "", "", ""])
    return head + "\n" + text_table(["r", "u", "m", "n", "params", "gap", "gap %", ""], rows)


def paper_text(rows: list[dict[str, Any]]) -> str:
    """:func:`reproduce_paper`'s rows as the tables of ``prolora params --paper``."""
    sized, unsized = [], []
    for row in rows:
        paper, real = row["paper_convention"], row["real"]
        cells = [
            row["source"],
            row["preset"],
            describe_config(row["method"], row["r"], row["u"], row["m"], row["n"]),
            row["paper"],
            _millions(paper["params"]),
            "yes" if row["matches"] else "NO",
            _millions(real["params"]),
        ]
        if row["paper_size"] is None:
            unsized.append([*cells, row["note"]])
        else:
            sized.append([*cells, row["paper_size"], f"{paper['MiB']:,.1f} MiB = {paper['MB']:,.1f} MB"])
    header = ["where", "model", "config", "paper", "ours, paper conv.", "same", "ours, real arch."]
    return "\n\n".join(
        [
            (
                "Paper Tables 1-3 (LLaMA2): trainable parameters, M = 10^6.\n"
                f"'paper conv.' counts as the paper does: {PAPER_CONVENTION}.\n"
                "'real arch.' is the released model: 13B has 40 layers; 70B has 80 layers and 8 KV heads (k/v out 1024).\n"
                "'same': the paper's value equals ours under the paper's convention, rounded as the paper prints it."
            ),
            text_table([*header, "paper size", "ours size, fp32, paper conv."], sized),
            "The paper's size unit 'MB' is MiB (2^20 bytes): 159.91M params x 4 B = 639.6e6 B = 610 MiB.",
            text_table([*header, "note"], unsized),
        ]
    )
