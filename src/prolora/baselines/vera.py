"""VeRA (Kopiczko et al., 2023, arXiv:2310.11454) as the PRoLoRA paper runs it, on PEFT's ``VeraConfig``.

VeRA freezes two random matrices shared across layers and trains two scaling vectors per module:

    ΔW = diag(λ_b) · B · diag(λ_d) · A         A (r × h), B (o × r) frozen; λ_d (r), λ_b (o) trainable

so a module trains ``r + o`` parameters (PEFT's ``vera_lambda_d``, ``vera_lambda_b``). The PRoLoRA paper
(Section 4.1, Appendix A.2, Table 2) applies it to all seven linear layers of LLaMA2-7B with r = 256
(1,417,216 = 1.42M trainable) and dropout 0.1; VeRA has no α. λ_b = 0 and λ_d = d_initial = 0.1 at the
start (VeRA's init; the PRoLoRA paper does not state d_initial).

What PEFT 0.21 can and cannot express: the paper shares frozen matrices "of the same types across layers,
but initialize[s] weights of different types separately"; PEFT keeps ONE pair per model, sized to the
largest input and output among the targets (A: r × max h, B: max o × r) and gives each module the top-left
slice ``A[:, :h]``, ``B[:o, :]``. The trainable count is identical; the frozen matrices differ (how many,
which values, their init bound: PEFT's A is U(±√(6/max h)) for every module). :func:`vera_param_counts`
gives both; ``docs/baselines.md`` has the details.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

PAPER_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_vera_config(
    r: int = 256,
    target_modules: list[str] | str | tuple[str, ...] = PAPER_TARGET_MODULES,
    vera_dropout: float = 0.1,
    d_initial: float = 0.1,
    projection_prng_key: int = 0,
    save_projection: bool = True,
    task_type: str | None = "CAUSAL_LM",
    **kwargs,
):
    """A ``peft.VeraConfig`` with the PRoLoRA paper's VeRA setting (r = 256, all linear layers, dropout 0.1).

    Args:
        r: VeRA rank (the width of the frozen random matrices).
        target_modules: module names, a regex, or ``"all-linear"``; default the seven LLaMA projections.
        vera_dropout: dropout on the adapter input (the paper's 0.1 for every method).
        d_initial: initial value of every λ_d entry (VeRA's recommended 0.1; λ_b starts at 0).
        projection_prng_key: seed of the frozen A and B.
        save_projection: store A and B in the adapter file (exact reload anywhere) instead of regenerating
            them from the seed on load. Costs r·(max h + max o) floats per file (22.5 MB for LLaMA2-7B).
        task_type: PEFT task type.
        **kwargs: other ``VeraConfig`` fields (``layers_to_transform``, ``modules_to_save``, ...).
    """
    from peft import VeraConfig

    if isinstance(target_modules, tuple):
        target_modules = list(target_modules)
    return VeraConfig(
        r=r,
        target_modules=target_modules,
        vera_dropout=vera_dropout,
        d_initial=d_initial,
        projection_prng_key=projection_prng_key,
        save_projection=save_projection,
        task_type=task_type,
        **kwargs,
    )


@dataclass(frozen=True)
class VeraCounts:
    """Trainable and frozen parameters of VeRA on a set of modules (element counts)."""

    trainable: int  # Σ (r + o): λ_d and λ_b of every module, the same in PEFT and in the paper
    frozen_peft: int  # PEFT: one pair, r·(max h + max o)
    frozen_per_type: int  # the paper's wording: one pair per module name (q, k, ..., down), Σ_type r·(h + o)
    frozen_per_shape: int  # one pair per distinct (h, o) shape: attention vs MLP up/gate vs MLP down


def vera_param_counts(modules: Iterable[tuple[str, int, int]], r: int) -> VeraCounts:
    """Count VeRA's parameters over ``modules``, given as ``(name, h, o)`` (input and output sizes).

    The module type is the last component of ``name`` (``model.layers.3.mlp.up_proj`` → ``up_proj``).
    LLaMA2-7B, seven projections, r = 256: trainable 1,417,216 (paper Table 2: 1.42M); frozen 5,636,096
    (PEFT), 19,988,480 (per type), 9,830,400 (per shape).
    """
    modules = list(modules)
    per_type = {name.rpartition(".")[2]: (h, o) for name, h, o in modules}
    per_shape = {(h, o) for _, h, o in modules}
    return VeraCounts(
        trainable=sum(r + o for _, _, o in modules),
        frozen_peft=r * (max(h for _, h, _ in modules) + max(o for _, _, o in modules)),
        frozen_per_type=sum(r * (h + o) for h, o in per_type.values()),
        frozen_per_shape=sum(r * (h + o) for h, o in per_shape),
    )
