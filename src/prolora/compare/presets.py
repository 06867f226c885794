"""The comparison experiments as data: which methods, at which budgets, how trained, how evaluated.

A :class:`Preset` names a base training setup (:class:`~prolora.train.config.TrainConfig` fields), the
seeds, the rows of the main table (:class:`MethodSpec`), the Figure 2 grid (:class:`HeatmapSpec`) and the
Table 4 variants (:class:`Table4Spec`). :mod:`.grid` turns it into cells.

* ``small``: the embedded SmolLM2-135M-Instruct and FLAN-CoT data on a 2-core CPU; held-out loss only
  (a benchmark subset does not fit the hour: one GSM8K generation alone takes seconds per example).
* ``paper``: the paper's LLaMA2-7B setting (Section 4.1, Appendix A.2): 10k steps at batch 16, length 512,
  all five benchmarks; a GPU job of days, listed so that users with GPUs run the same comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Tied-LoRA ties A across its targets, so they need one input size: q, k, v as in the paper (Section 4.1).
QKV = "q_proj,k_proj,v_proj"
SHARED_LR_LABEL = "PRoLoRA + shared lr"  # the row of PRoLoRA with its own rate for A_0/B_0 (lr_shared_scale)


@dataclass(frozen=True)
class MethodSpec:
    """One row of the main table: a method at a fixed configuration or matched to a parameter budget.

    Attributes:
        label: the row's name in tables and plots.
        method: a :data:`prolora.methods.METHODS` name, or ``vera`` / ``tied-lora``.
        r: rank (for PRoLoRA-family methods with a ``budget``, the rank searched at).
        u: PRoLoRA unshared rank; ``None`` with a ``budget`` lets the solver choose.
        budget: ``"METHOD:R"`` or a count: m = n are chosen by :func:`prolora.params.solve_budget`.
        lr: learning rate; ``None`` takes the preset's.
        lr_shared_scale: learning rate of PRoLoRA's shared chunks as a multiple of ``lr`` (paper Section 6).
        target_modules: modules to adapt; ``None`` takes the preset's.
        adapter: extra PRoLoRAConfig fields, e.g. ``{"share": "rank"}`` (Table 4 variants).
    """

    label: str
    method: str
    r: int
    u: int | None = None
    budget: str | None = None
    lr: float | None = None
    lr_shared_scale: float = 1.0
    target_modules: str | None = None
    adapter: dict = field(default_factory=dict)


@dataclass(frozen=True)
class HeatmapSpec:
    """Figure 2: PRoLoRA at rank ``r`` and a fixed ``budget`` over unshared ranks × learning rates.

    An unshared rank equal to the budget's LoRA rank is vanilla LoRA at that rank (as u = 8 in Figure 2).
    """

    budget: str
    r: int
    unshared: tuple[int, ...]
    lrs: tuple[float, ...]
    seed: int = 1


@dataclass(frozen=True)
class Table4Spec:
    """Table 4: the PRoLoRA configuration ``base`` with sharing × rotation along hidden/rank dimensions."""

    base: MethodSpec
    seed: int = 1
    dims: tuple[str, ...] = ("hidden", "rank")


@dataclass(frozen=True)
class Preset:
    """A whole comparison: training setup, seeds, table rows, Figure 2 grid, Table 4, evaluation.

    ``claims``: ``(better label, worse label, what it tests)``, the paper's orderings that the report checks.
    """

    name: str
    description: str
    train: dict
    seeds: tuple[int, ...]
    methods: tuple[MethodSpec, ...]
    heatmap: HeatmapSpec | None = None
    table4: Table4Spec | None = None
    benchmarks: tuple[str, ...] = ()
    eval_limit: int | None = None
    claims: tuple[tuple[str, str, str], ...] = ()
    notes: tuple[str, ...] = ()


def _table2_rows(budget_rank: int, prolora_r: int, prolora_u: int, baseline_lr: float,
                 shared_scale: float) -> tuple[MethodSpec, ...]:
    """Table 2's rows at the budget of LoRA with rank ``budget_rank`` (plus LoRA at twice that rank)."""
    budget = f"lora:{budget_rank}"
    prolora = {"r": prolora_r, "u": prolora_u, "budget": budget}
    return (
        MethodSpec(f"LoRA r={budget_rank}", "lora", r=budget_rank),
        MethodSpec(f"LoRA r={2 * budget_rank}", "lora", r=2 * budget_rank),
        MethodSpec("VeRA", "vera", r=256, lr=baseline_lr),
        MethodSpec("Tied-LoRA", "tied-lora", r=256, lr=baseline_lr, target_modules=QKV),
        MethodSpec("CLoRA", "clora", r=prolora_r, u=0, budget=budget),
        MethodSpec("RoLoRA", "rolora", r=prolora_r, u=0, budget=budget),
        MethodSpec("PRoLoRA", "prolora", **prolora),
        MethodSpec("PRoLoRA^-r", "prolora-r", **prolora),
        MethodSpec("PRoLoRA^-i", "prolora-i", **prolora),
        MethodSpec(SHARED_LR_LABEL, "prolora", **prolora, lr_shared_scale=shared_scale),
    )


def _table2_claims(budget_rank: int) -> tuple[tuple[str, str, str], ...]:
    """The orderings of Table 2 and Section 4.4 among :func:`_table2_rows` (better, worse, what it tests)."""
    lora, lora2 = f"LoRA r={budget_rank}", f"LoRA r={2 * budget_rank}"
    return (
        (lora2, lora, "the setting is capacity-constrained: twice the budget helps"),
        ("PRoLoRA", lora, "parameter efficiency at the same budget (Table 2)"),
        ("PRoLoRA", lora2, "'twice the parameter efficiency' (Section 4.2): as good as LoRA at 2× budget"),
        ("PRoLoRA", "VeRA", "vs inter-layer sharing baseline VeRA (Table 2)"),
        ("PRoLoRA", "Tied-LoRA", "vs inter-layer sharing baseline Tied-LoRA (Table 2)"),
        ("RoLoRA", "CLoRA", "rotation enhancement without unshared ranks (Table 2)"),
        ("PRoLoRA", "RoLoRA", "partially-sharing refinement (Table 2, Figure 2)"),
        ("PRoLoRA", "PRoLoRA^-r", "rotation enhancement (Table 2)"),
        ("PRoLoRA", "PRoLoRA^-i", "rectified initialization (Table 2)"),
        (SHARED_LR_LABEL, "PRoLoRA", "beyond the paper (Section 6): a learning rate of the shared chunks"),
    )


SMALL = Preset(
    name="small",
    description="embedded SmolLM2-135M-Instruct + FLAN-CoT on a CPU, held-out loss",
    train={"max_steps": 8, "batch_size": 4, "micro_batch_size": 4, "max_length": 96, "heldout_size": 16,
           "learning_rate": 2e-4, "logging_steps": 4, "save_steps": 1000, "save_total_limit": 1},
    seeds=(1, 2, 3),
    methods=_table2_rows(budget_rank=2, prolora_r=8, prolora_u=1, baseline_lr=5e-3, shared_scale=3.0),
    claims=_table2_claims(budget_rank=2),
    heatmap=HeatmapSpec(budget="lora:2", r=8, unshared=(0, 1, 2), lrs=(2e-4, 6e-4)),
    table4=Table4Spec(base=MethodSpec("PRoLoRA", "prolora", r=8, u=1, budget="lora:2")),
    notes=(
        ("Metric: held-out loss (nats per assistant token, lower is better) on the embedded held-out split; "
        "no benchmark (a GSM8K or BBH subset large enough to rank methods does not fit the hour on a CPU)."),
        ("VeRA and Tied-LoRA train at lr 5e-3, inside the paper's search range {2e-3 … 5e-2} for them "
        "(App. A.2), not searched here; every other row at the paper's 2e-4."),
        ("Short runs on a small model may not separate LoRA ranks (LoRA r=2 vs r=4): then they measure "
        "optimisation speed in the first steps, not parameter efficiency (docs/compare.md)."),
    ),
)

PAPER = Preset(
    name="paper",
    description="the paper's setting: LLaMA2-7B, QLoRA, 10k steps × batch 16, length 512, five benchmarks",
    train={"model": "meta-llama/Llama-2-7b-hf", "max_steps": 10_000, "batch_size": 16, "micro_batch_size": 4,
           "max_length": 512, "heldout_size": 128, "learning_rate": 2e-4, "quantization": "auto",
           "save_steps": 500},
    seeds=(1, 2, 3),
    methods=_table2_rows(budget_rank=2, prolora_r=8, prolora_u=1, baseline_lr=5e-3, shared_scale=3.0),
    claims=_table2_claims(budget_rank=2),
    heatmap=HeatmapSpec(budget="lora:8", r=32, unshared=tuple(range(9)), lrs=(1e-4, 2e-4, 5e-4, 1e-3)),
    table4=Table4Spec(base=MethodSpec("PRoLoRA", "prolora", r=32, u=4, budget="lora:8")),
    benchmarks=("mmlu", "bbh", "gsm8k", "tydiqa", "humaneval"),
    notes=(
        ("The paper searched lr in {1e-5 … 1e-3} for LoRA (2e-4 best except HumanEval: 5e-5) and "
        "{2e-3 … 5e-2} for VeRA and Tied-LoRA (App. A.2); the rows here use 2e-4 and 5e-3 (--lr sets "
         "the first)."),
        "Figure 2 and Table 4 are at the 19.99M budget (LoRA r=8) with PRoLoRA rank 32, as in Section 4.4.",
    ),
)

PRESETS: dict[str, Preset] = {p.name: p for p in (SMALL, PAPER)}
