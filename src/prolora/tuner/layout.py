"""The one place where an adapter's layout on a module is decided: :class:`ChunkSpec` and its builders.

Every path that needs to know how an adapter's compact tensors map to ΔW — the tuner layer
(:class:`~prolora.tuner.layer.PRoLoRALayer`), the file checks (:mod:`prolora.tuner.saved`), the file format
and its exports (:mod:`prolora.format`), the serving bank (:mod:`prolora.inference.adapter_bank`) and so the
vLLM export — builds it here:

* :func:`module_spec` — r, u, m, n, strides (Section 3.1's defaults), rotation, ``share``/``rotate_dim``
  and the scaling (``lora_alpha / r``, or ``lora_alpha / √r`` with ``use_rslora``) of one module, from the
  per-module values (``PRoLoRAConfig.module_values``: overrides applied), validated against (h, o);
* :func:`config_spec` — the same from a config and a module name (``module_shapes`` gives (h, o));
* :func:`lora_spec` — a dense LoRA module as PRoLoRA with ``u = r`` (A_u = A, B_u = B, no shared chunks);
* :meth:`ChunkSpec.file_shapes` / :meth:`ChunkSpec.flat_shapes` — the compact shapes (Eq. 4's chunking),
  in the file's order (A_0, B_0, A_u, B_u) and in the flat order (A_0, A_u, B_0, B_u) that the layer's
  gathers and the bank's resident tensors use; :meth:`ChunkSpec.split` cuts a flat tensor into them;
* :func:`gather_index` / :func:`expand` — the full A (r, h) and B (o, r) from the flat tensor by one
  gather (:func:`~prolora.equations.flat_gather_indices`, Eq. 4 on element numbers).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from prolora import equations as eq

FILE_ORDER = ("prolora_A0", "prolora_B0", "prolora_A_u", "prolora_B_u")  # tensor names, the file's order


@dataclass(frozen=True)
class ChunkSpec:
    """Static layout of one adapter on one module (all integers except ``scaling``). Build it with
    :func:`module_spec`, :func:`config_spec` or :func:`lora_spec`, never field by field."""

    h: int  # input features of the base layer
    o: int  # output features of the base layer
    r: int
    u: int
    m: int
    n: int
    stride_a: int
    stride_b: int
    rotate: str | None  # "rank", "hidden" or None (no rotation)
    share: str  # "hidden" or "rank"
    scaling: float  # lora_alpha / r, or lora_alpha / √r with use_rslora

    @property
    def shared(self) -> int:
        """R = r − u, the shared rank."""
        return self.r - self.u

    @property
    def chunked(self) -> bool:
        """Whether :func:`~prolora.equations.chunked_adapter_forward` applies (the paper's sharing along the
        hidden dimensions, any rotation along the rank); Table 4's other variants are computed expanded."""
        return self.share == "hidden" and self.rotate != "hidden"

    def file_shapes(self) -> tuple[tuple[int, int], ...]:
        """Shapes of (A_0, B_0, A_u, B_u): the file's order (:data:`FILE_ORDER`)."""
        shape_a0, shape_b0 = eq.chunk_shapes(self.h, self.o, self.r, self.u, self.m, self.n, self.share)
        return shape_a0, shape_b0, (self.u, self.h), (self.o, self.u)

    def flat_shapes(self) -> tuple[tuple[int, int], ...]:
        """Shapes of (A_0, A_u, B_0, B_u): the order of :func:`flatten` and of the flat tensors."""
        a0, b0, a_u, b_u = self.file_shapes()
        return a0, a_u, b0, b_u

    @property
    def numel(self) -> int:
        """Elements of the four compact tensors together (the module's trainable parameters)."""
        return sum(math.prod(shape) for shape in self.flat_shapes())

    def split(self, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Views ``(A_0, A_u, B_0, B_u)`` of ``flat`` (…, numel), cut along its last dimension (no copy)."""
        shapes = self.flat_shapes()
        parts = flat.split([math.prod(shape) for shape in shapes], dim=-1)
        return tuple(p.unflatten(-1, shape) for p, shape in zip(parts, shapes, strict=True))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require_int(name: str, value, low: int, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}={value!r} is invalid: it must be an integer ≥ {low} ({hint}).")


def validate_values(values: dict, where: str, h: int | None = None, o: int | None = None) -> None:
    """Check r/u/m/n/strides (and, given the module's h and o, that m ≤ h and n ≤ o)."""
    at = f" for module {where}" if where else ""
    _require_int("r" + at, values["r"], 1, "the rank of ΔW")
    u = values["unshared_r"]
    _require_int("unshared_r" + at, u, 0, "unshared ranks")
    if u > values["r"]:
        raise ValueError(
            f"unshared_r={u}{at} exceeds r={values['r']}: use 0 ≤ unshared_r ≤ r "
            "(unshared_r = r is plain LoRA)."
        )
    for name, dim, dim_name in (("sharing_rate_a", h, "h"), ("sharing_rate_b", o, "o")):
        k = values[name]
        _require_int(name + at, k, 1, "number of chunks")
        if dim is not None and k > dim:
            raise ValueError(
                f"{name}={k}{at} exceeds the dimension it chunks ({dim_name}={dim}); use 1 ≤ {name} ≤ {dim}."
            )
    for name in ("stride_a", "stride_b"):
        if values[name] is not None:
            _require_int(name + at, values[name], 0, "rotation stride; None = default")
    alpha = values["lora_alpha"]
    if not _is_number(alpha) or alpha <= 0:
        raise ValueError(
            f"lora_alpha={alpha!r}{at} must be a positive number (ΔW is scaled by "
            "lora_alpha / r; the paper uses 16)."
        )


def module_spec(
    h: int,
    o: int,
    values: dict,
    *,
    rotation: bool,
    rotate_dim: str,
    share: str,
    use_rslora: bool,
    where: str = "",
) -> ChunkSpec:
    """The layout of one module of input size ``h`` and output size ``o``.

    ``values``: r, unshared_r, sharing_rate_a, sharing_rate_b, stride_a, stride_b, lora_alpha for this module
    (``PRoLoRAConfig.module_values``: overrides applied). Strides of ``None`` take Section 3.1's default
    ``max(⌊(r−u)/k⌋, 1)``; ``rotate_dim`` applies only with ``rotation``; the scaling is
    :func:`~prolora.equations.lora_scaling` (rsLoRA's ``lora_alpha / √r`` with ``use_rslora``).

    Raises:
        ValueError: when the values are invalid or do not fit the module (e.g. m > h), naming ``where``.
    """
    validate_values(values, where, h=h, o=o)
    r, u, m, n = values["r"], values["unshared_r"], values["sharing_rate_a"], values["sharing_rate_b"]
    return ChunkSpec(
        h=h,
        o=o,
        r=r,
        u=u,
        m=m,
        n=n,
        stride_a=eq.default_stride(r, u, m) if values["stride_a"] is None else values["stride_a"],
        stride_b=eq.default_stride(r, u, n) if values["stride_b"] is None else values["stride_b"],
        rotate=rotate_dim if rotation else None,
        share=share,
        scaling=eq.lora_scaling(values["lora_alpha"], r, use_rslora),
    )


def config_spec(config, module: str) -> ChunkSpec:
    """:func:`module_spec` of ``module`` of a :class:`~prolora.tuner.config.PRoLoRAConfig`, with (h, o) from
    its ``module_shapes`` (``[o, h]``). KeyError when the config does not adapt ``module``."""
    o, h = config.module_shapes[module]
    return module_spec(
        h,
        o,
        config.module_values(module),
        rotation=config.rotation,
        rotate_dim=config.rotate_dim,
        share=config.share,
        use_rslora=config.use_rslora,
        where=module,
    )


def lora_spec(h: int, o: int, r: int, lora_alpha: float, use_rslora: bool, where: str = "") -> ChunkSpec:
    """A dense LoRA module (A (r, h), B (o, r)) as the PRoLoRA layout with ``u = r``: A_u = A, B_u = B."""
    values = {
        "r": r,
        "unshared_r": r,
        "sharing_rate_a": 1,
        "sharing_rate_b": 1,
        "stride_a": 1,
        "stride_b": 1,
        "lora_alpha": lora_alpha,
    }
    return module_spec(
        h, o, values, rotation=False, rotate_dim="rank", share="hidden", use_rslora=use_rslora, where=where
    )


def flatten(tensors) -> torch.Tensor:
    """``(A_0, A_u, B_0, B_u)`` as one flat tensor, in that order (inverse of :meth:`ChunkSpec.split`)."""
    return torch.cat([t.reshape(-1) for t in tensors])


@functools.lru_cache(maxsize=256)
@eq.normal_tensors
def gather_index(spec: ChunkSpec, device: torch.device) -> torch.Tensor:
    """``idx`` with ``cat(A.flatten(), B.flatten()) = flat[idx]`` for ``flat`` = :func:`flatten` of the four
    compact tensors: :func:`~prolora.equations.flat_gather_indices` (Eq. 4 applied to element numbers)."""
    idx_a, idx_b = eq.flat_gather_indices(
        spec.h,
        spec.o,
        spec.r,
        spec.u,
        spec.m,
        spec.n,
        spec.stride_a,
        spec.stride_b,
        spec.rotate,
        spec.share,
        device,
    )
    a0, a_u, _, _ = spec.flat_shapes()
    return torch.cat([idx_a, idx_b + math.prod(a0) + math.prod(a_u)])


def expand(flat: torch.Tensor, spec: ChunkSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The full A (r, h) and B (o, r) from the flat compact tensors: one ``index_select`` (Eq. 4)."""
    full = flat.index_select(0, gather_index(spec, flat.device))
    rh = spec.r * spec.h
    return full[:rh].view(spec.r, spec.h), full[rh:].view(spec.o, spec.r)
