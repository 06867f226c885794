"""Method presets: one place that maps a method name to its PEFT adapter config.

Names follow the paper (Section 3.1 and Table 4 of the ablation study, Section 4.4):

=============  ===================================================================  ===================
name           what it is                                                           config
=============  ===================================================================  ===================
``lora``       LoRA (Hu et al., 2021), rank r                                       ``peft.LoraConfig``
``prolora``    PRoLoRA: partial sharing + rotation + rectified init (Eq. 4, 5)      ``PRoLoRAConfig``
``clora``      CLoRA: broadcast reduction only (Eq. 2): u = 0, no rotation          ``PRoLoRAConfig``
``rolora``     RoLoRA: broadcast + rotation (Eq. 3): u = 0                          ``PRoLoRAConfig``
``prolora-r``  PRoLoRA^-r (Table 4): PRoLoRA without rotation                       ``PRoLoRAConfig``
``prolora-i``  PRoLoRA^-i (Table 4): PRoLoRA with vanilla Kaiming init of A_0       ``PRoLoRAConfig``
``vera``       VeRA (Kopiczko et al., 2023): frozen shared random A, B; trains      ``peft.VeraConfig``
               scaling vectors (docs/baselines.md)
``tied-lora``  Tied-LoRA (Renduchintala et al., 2023) on q/k/v, as the paper ran it   ``TiedLoRAConfig``
=============  ===================================================================  ===================

The defaults ``r=8, u=1, m=n=7`` are the paper's PRoLoRA setting at the trainable-parameter budget of
LoRA with rank 2 (Table 1); ``lora_alpha=16`` and ``lora_dropout=0.1`` are Appendix A.2. ``"all-linear"``
targets every linear layer of the transformer blocks (on Llama: q, k, v, o, gate, up, down; Appendix A.2)
and never the output head.
"""

from __future__ import annotations

METHODS: tuple[str, ...] = (
    "prolora",
    "lora",
    "clora",
    "rolora",
    "prolora-r",
    "prolora-i",
    "vera",
    "tied-lora",
)

# PRoLoRAConfig keyword overrides of each PRoLoRA-family preset (applied after r, u, m, n).
_PROLORA_VARIANTS: dict[str, dict] = {
    "prolora": {},
    "clora": {"unshared_r": 0, "rotation": False},
    "rolora": {"unshared_r": 0, "rotation": True},
    "prolora-r": {"rotation": False},
    "prolora-i": {"init": "vanilla"},
}
PROLORA_METHODS: tuple[str, ...] = tuple(_PROLORA_VARIANTS)  # the presets that use u, m and n
# The one preset → counting-family table: the name :func:`prolora.params.count_parameters` and the budget
# solver know each preset by (^-r and ^-i train as many parameters as PRoLoRA; tests/test_params.py checks
# that every preset has a family and every family is one of ``prolora.params.METHODS``).
COUNTING_FAMILY: dict[str, str] = {
    "prolora": "prolora",
    "lora": "lora",
    "clora": "clora",
    "rolora": "rolora",
    "prolora-r": "prolora",
    "prolora-i": "prolora",
    "vera": "vera",
    "tied-lora": "tied-lora",
}


def make_adapter_config(
    method: str = "prolora",
    r: int = 8,
    u: int = 1,
    m: int = 7,
    n: int = 7,
    lora_alpha: float = 16,
    lora_dropout: float = 0.1,
    target_modules: str | list[str] = "all-linear",
    task_type: str = "CAUSAL_LM",
    use_rslora: bool = False,
):
    """Return the PEFT config of ``method`` (one of :data:`METHODS`).

    Args:
        method: preset name; see the module docstring.
        r: rank of the full (expanded) A and B matrices.
        u: unshared rank of PRoLoRA (ignored by ``lora``; forced to 0 by ``clora`` and ``rolora``).
        m: sharing rate of A: A_0 is broadcast m times along the hidden size h (ignored by ``lora``).
        n: sharing rate of B: B_0 is broadcast n times along the output size o (ignored by ``lora``).
        lora_alpha: scaling numerator; the update is ``(lora_alpha / r) · B · A`` (see ``use_rslora``).
        lora_dropout: dropout probability on the adapter's input.
        target_modules: module names, a regex (full match), or ``"all-linear"``.
        task_type: PEFT task type.
        use_rslora: scale by ``lora_alpha / √r`` instead (rsLoRA; PEFT's ``LoraConfig.use_rslora``), for
            ``lora`` and the PRoLoRA family; VeRA has no such scaling and Tied-LoRA does not offer it.

    Raises:
        ValueError: for an unknown method, naming the known ones, or ``use_rslora`` with VeRA/Tied-LoRA.
    """
    if use_rslora and method in ("vera", "tied-lora"):
        raise ValueError(
            f"use_rslora is not available for {method!r}: it applies to lora and the PRoLoRA "
            "family; drop --use-rslora for this method"
        )
    common = {
        "r": r,
        "lora_alpha": lora_alpha,
        "lora_dropout": lora_dropout,
        "target_modules": target_modules,
        "task_type": task_type,
    }
    if method == "lora":
        from peft import LoraConfig

        return LoraConfig(**common, use_rslora=use_rslora)
    if method == "vera":
        from prolora.baselines import make_vera_config

        return make_vera_config(
            r=r, target_modules=target_modules, vera_dropout=lora_dropout, task_type=task_type
        )
    if method == "tied-lora":
        from prolora.baselines import make_tied_lora_config

        targets = (
            None if target_modules == "all-linear" else target_modules
        )  # None: q/k/v (paper Section 4.1)
        return make_tied_lora_config(
            r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=targets, task_type=task_type
        )
    if method not in _PROLORA_VARIANTS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    from prolora.tuner import PRoLoRAConfig

    kwargs = {"unshared_r": u, "sharing_rate_a": m, "sharing_rate_b": n, **_PROLORA_VARIANTS[method]}
    return PRoLoRAConfig(**common, **kwargs, use_rslora=use_rslora)
