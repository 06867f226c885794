"""``add_weighted_adapter`` for PRoLoRA: adapter arithmetic with LoRA's "cat" and "svd" semantics.

A weighted sum of PRoLoRA adapters, ``ΔW = Σ_i w_i · ΔW_i``, has no PRoLoRA form of the inputs' sharing
structure in general (the chunks of different adapters do not roll into one shared chunk), so the new
adapter is stored in PRoLoRA's LoRA layout, ``unshared_r = r`` (paper Section 3.1: u = r is plain LoRA),
with ``lora_alpha = r`` (scaling 1): A_u = A, B_u = B, and no shared chunks.

* ``"cat"``: A = [A_1; A_2; …], B = [w_1·s_1·B_1 | w_2·s_2·B_2 | …] (s_i = lora_alpha_i / r_i): exact,
  rank Σ r_i (as LoRA's "cat").
* ``"svd"``: the best rank-``svd_rank`` approximation of ΔW (truncated SVD; ``svd_rank`` defaults to the
  largest input rank; exact when ``svd_rank`` ≥ the rank of ΔW, e.g. one input, or ``svd_rank = Σ r_i``).

LoRA's other combination types ("linear", "ties", "dare_*", "magnitude_prune*") combine the A and B factors
entry-wise, which presumes LoRA's own factors; for those, convert the adapters to LoRA first (peft's
``convert_to_lora``, exact for PRoLoRA, or ``prolora export``) and use LoRA's ``add_weighted_adapter``.
"""

from __future__ import annotations

import re
from dataclasses import replace

import torch

from .layer import PRoLoRALayer

COMBINATIONS = ("cat", "svd")


def add_weighted_adapter(
    tuner,
    adapters: list[str],
    weights: list[float],
    adapter_name: str,
    combination_type: str = "svd",
    svd_rank: int | None = None,
    svd_clamp: float | None = None,
    svd_full_matrices: bool = True,
    svd_driver: str | None = None,
    density: float | None = None,
    majority_sign_method: str = "total",
) -> None:
    """Add adapter ``adapter_name`` whose ΔW is ``Σ_i weights[i] · ΔW(adapters[i])`` (see the module docstring).

    Signature as LoRA's ``LoraModel.add_weighted_adapter``; ``svd_clamp`` clamps the SVD factors at that
    quantile (as LoRA), ``density`` / ``majority_sign_method`` belong to the combination types we do not offer.

    Raises:
        ValueError: unknown or unsupported ``combination_type`` (naming the alternatives), an existing
            ``adapter_name``, unknown adapters, ``weights`` of another length, or adapters on different modules.
    """
    if combination_type not in COMBINATIONS:
        raise ValueError(
            f"Invalid combination_type {combination_type!r} for PRoLoRA: use 'cat' (exact, rank Σ r) or "
            "'svd' (rank svd_rank). For LoRA's factor-wise types (linear, ties, dare_*, magnitude_prune*) "
            "convert the adapters to LoRA first (peft.convert_to_lora, exact for PRoLoRA, or prolora "
            "export) and use LoRA's add_weighted_adapter."
        )
    if adapter_name in tuner.peft_config:
        raise ValueError(
            f"adapter {adapter_name!r} already exists; choose a new name (or delete_adapter it first)."
        )
    unknown = [name for name in adapters if name not in tuner.peft_config]
    if unknown or not adapters:
        raise ValueError(
            f"adapters {unknown or adapters!r} are not loaded; loaded: {sorted(tuner.peft_config)}."
        )
    if len(weights) != len(adapters):
        raise ValueError(
            f"weights has {len(weights)} entries for {len(adapters)} adapters; give one weight each."
        )
    layers = {
        key: layer
        for key, layer in tuner.model.named_modules()
        if isinstance(layer, PRoLoRALayer) and any(name in layer.prolora_spec for name in adapters)
    }
    partial = [
        key for key, layer in layers.items() if not all(name in layer.prolora_spec for name in adapters)
    ]
    if partial:
        raise ValueError(
            f"adapters {adapters} are not all on the same modules (e.g. {partial[0]}); combine adapters "
            "that target the same modules."
        )
    if svd_rank is not None and (isinstance(svd_rank, bool) or not isinstance(svd_rank, int) or svd_rank < 1):
        raise ValueError(
            f"svd_rank={svd_rank!r} must be a positive integer (or None: the largest input rank)."
        )

    # per module: the new rank (cat: Σ r_i; svd: svd_rank or max r_i, at most min(o, h))
    ranks = {}
    for key, layer in layers.items():
        specs = [layer.prolora_spec[name] for name in adapters]
        if combination_type == "cat":
            ranks[key] = sum(spec.r for spec in specs)
        else:
            ranks[key] = min(svd_rank or max(spec.r for spec in specs), layer.in_features, layer.out_features)
    base = tuner.peft_config[adapters[0]]
    rank = max(set(ranks.values()), key=list(ranks.values()).count)
    overrides = {
        re.escape(key): {"r": r, "unshared_r": r, "lora_alpha": r} for key, r in ranks.items() if r != rank
    }
    tuner.peft_config[adapter_name] = replace(
        base,
        r=rank,
        unshared_r=rank,
        lora_alpha=rank,
        sharing_rate_a=1,
        sharing_rate_b=1,
        stride_a=None,
        stride_b=None,
        rotation=False,
        overrides=overrides,
        module_shapes={},
        init_weights=True,
        target_modules=sorted(layers) if layers else base.target_modules,
        layers_to_transform=None,
        layers_pattern=None,
    )
    tuner.inject_adapter(tuner.model, adapter_name)

    with torch.no_grad():
        for key, layer in layers.items():
            a, b = _combine(
                layer,
                adapters,
                weights,
                combination_type,
                ranks[key],
                svd_clamp,
                svd_full_matrices,
                svd_driver,
            )
            a_u, b_u = layer.prolora_A_u[adapter_name], layer.prolora_B_u[adapter_name]
            a_u.copy_(a.to(a_u.dtype))
            b_u.copy_(b.to(b_u.dtype))
    for layer in layers.values():
        layer.set_requires_grad(adapter_name, requires_grad=False)  # as LoRA: the new adapter starts frozen


def _combine(
    layer: PRoLoRALayer, adapters, weights, combination_type, rank, svd_clamp, svd_full_matrices, svd_driver
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (rank, h), B (o, rank)) of the weighted sum on one layer, in float32."""
    factors = []
    for name, weight in zip(adapters, weights, strict=False):
        a, b = layer.expanded_factors(name)
        factors.append((a.float(), b.float() * (weight * layer.prolora_spec[name].scaling)))
    if combination_type == "cat":
        return torch.cat([a for a, _ in factors]), torch.cat([b for _, b in factors], dim=1)
    delta = sum(b @ a for a, b in factors)
    u, s, vh = torch.linalg.svd(delta, full_matrices=svd_full_matrices, driver=svd_driver)
    u, s, vh = u[:, :rank] * s[:rank], None, vh[:rank]
    if svd_clamp is not None:
        dist = torch.cat([u.flatten(), vh.flatten()])
        hi = torch.quantile(dist, svd_clamp)
        u, vh = u.clamp(-hi, hi), vh.clamp(-hi, hi)
    return vh, u
