"""A preset → the cells of the comparison: one training run each, with budgets solved.

Every cell holds the complete :class:`~prolora.train.config.TrainConfig` fields of its run (method, r, u,
m, n, learning rate, seed, ...) and any extra adapter fields (Table 4). Its :attr:`Cell.key` hashes exactly
those, so two groups asking for the same run (Table 4's hidden/rank variant is PRoLoRA itself; Figure 2's
u = 1 at the default rate is the main table's PRoLoRA) share one result file, and changing a setting makes
a new cell instead of reusing a stale one.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from prolora.method_presets import COUNTING_FAMILY, PROLORA_METHODS
from prolora.params import count_parameters, solve_budget
from prolora.train.config import parse_target_modules

from .presets import MethodSpec, Preset

GROUPS = ("main", "lrs", "best", "heatmap", "table4")
# Table 4 defaults of PRoLoRAConfig: the paper's PRoLoRA shares along hidden and rotates along rank.
TABLE4_DEFAULTS = {"share": "hidden", "rotate_dim": "rank"}


@dataclass(frozen=True)
class Cell:
    """One training run of the comparison.

    Attributes:
        group: ``main`` (Table 2 rows × seeds), ``lrs`` (every row at every rate of the preset's
            learning-rate grid, one seed), ``best`` (every row at its best rate of ``lrs``, all seeds),
            ``heatmap`` (Figure 2) or ``table4``.
        label: the row's name.
        train: TrainConfig fields of the run (the preset's, then the method's, then the seed).
        adapter: extra PRoLoRAConfig fields (Table 4's ``share``/``rotate_dim``), empty otherwise.
        params: trainable parameters, counted from the architecture.
        budget: the parameter budget the configuration was matched to, or ``None``.
        coords: the cell's place in its group: ``{"lr"}`` (lrs, best), ``{"u", "lr"}`` (heatmap),
            ``{"share", "rotate"}`` (table4).
    """

    group: str
    label: str
    train: dict
    adapter: dict = field(default_factory=dict)
    params: int = 0
    budget: int | None = None
    coords: dict = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.train["seed"]

    @property
    def key(self) -> str:
        """Hash of the run's settings: equal for equal runs, whatever group or label asks for them."""
        blob = json.dumps({"train": self.train, "adapter": self.adapter}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    @property
    def name(self) -> str:
        """File-name stem: readable method and seed, then the key."""
        slug = re.sub(r"[^a-z0-9]+", "-", self.train["method"] + f"-r{self.train['r']}").strip("-")
        return f"{slug}-seed{self.seed}-{self.key}"


def resolve(spec: MethodSpec, preset: Preset, seed: int) -> tuple[dict, int, int | None]:
    """``(train fields, trainable params, budget)`` of ``spec`` under ``preset`` for ``seed``.

    PRoLoRA-family rows with a budget get m = n (and u when ``spec.u`` is ``None``) from
    :func:`~prolora.params.solve_budget` at rank ``spec.r``: the closest fit within its 1% tolerance.

    Raises:
        ValueError: no configuration at rank ``spec.r`` fits the budget, or a PRoLoRA-family row has none.
    """
    model = preset.train.get("model")
    targets = spec.target_modules or preset.train.get("target_modules", "all-linear")
    count_targets = parse_target_modules(targets)
    fields = {
        **preset.train,
        "method": spec.method,
        "r": spec.r,
        "target_modules": targets,
        "seed": seed,
        "learning_rate": spec.lr or preset.train["learning_rate"],
        "lr_shared_scale": spec.lr_shared_scale,
    }
    if spec.use_rslora:  # only when set, so that the keys of cells from before the option stay the same
        fields["use_rslora"] = True
    if spec.method not in PROLORA_METHODS:
        family = COUNTING_FAMILY[spec.method]
        count = count_parameters(model, family, r=spec.r, target_modules=count_targets).params
        return fields, count, None
    if spec.budget is None:
        raise ValueError(f"{spec.label}: a PRoLoRA-family row needs a budget (e.g. 'lora:2') to choose m, n")
    family = COUNTING_FAMILY[spec.method]
    solver = "rolora" if family == "prolora" and spec.u == 0 else family  # u = 0 counts as RoLoRA
    fits = [
        f
        for f in solve_budget(model, spec.budget, method=solver, target_modules=count_targets, ranks=[spec.r])
        if spec.u is None or f.u == spec.u
    ]
    if not fits:
        raise ValueError(
            f"{spec.label}: no {solver} configuration at r={spec.r}"
            f"{'' if spec.u is None else f', u={spec.u}'} is within 1% of budget {spec.budget}"
        )
    fit = fits[0]
    fields.update(unshared_r=fit.u, sharing_rate_a=fit.m, sharing_rate_b=fit.n)
    return fields, fit.params, fit.budget


def _cell(group: str, spec: MethodSpec, preset: Preset, seed: int, coords: dict | None = None) -> Cell:
    fields, params, budget = resolve(spec, preset, seed)
    return Cell(group, spec.label, fields, dict(spec.adapter), params, budget, coords or {})


def lr_sweep_cells(preset: Preset) -> list[Cell]:
    """The main-table rows of ``preset.lr_grid_rows`` (default: all) at every rate of their own grid
    (``MethodSpec.lr_grid``) or else ``preset.lr_grid`` (seed ``preset.lr_grid_seed``).

    The same grid for every method: a method's best rate can then be read off instead of being assumed
    (PRoLoRA at rank 8 and LoRA at rank 2 share ``lora_alpha``, so their update scales ``lora_alpha / r``
    differ fourfold; the paper also searched VeRA and Tied-LoRA over their own range, App. A.2). The
    shared-lr row keeps its multiple (``lr_shared_scale``) of each rate.
    """
    rows = [
        spec for spec in preset.methods if preset.lr_grid_rows is None or spec.label in preset.lr_grid_rows
    ]
    return [
        _cell("lrs", replace(spec, lr=lr), preset, preset.lr_grid_seed, {"lr": lr})
        for spec in rows
        for lr in (spec.lr_grid or preset.lr_grid)
    ]


def best_lr(cells: list[Cell], results: dict[str, dict], score: Callable[[dict], float]) -> dict[str, float]:
    """The best rate of each ``lrs`` row whose whole grid has finished, by label: the rate whose result has
    the lowest ``score(result)`` (ties: the lower rate). Rows with an unfinished rate are left out, so a
    best rate is never chosen from part of a grid."""
    by_row: dict[str, list[Cell]] = {}
    for cell in cells:
        if cell.group == "lrs":
            by_row.setdefault(cell.label, []).append(cell)
    best = {}
    for label, row in by_row.items():
        if all(c.key in results for c in row):
            best[label] = min(row, key=lambda c: (score(results[c.key]), c.coords["lr"])).coords["lr"]
    return best


def best_lr_cells(preset: Preset, results: dict[str, dict], score: Callable[[dict], float]) -> list[Cell]:
    """The ``best`` group: every row of the learning-rate sweep at its best rate (:func:`best_lr`), for every
    seed of the main table, so that each method is also compared at its own rate with a seed-to-seed
    spread. The sweep's seed at that rate is the sweep's own cell (same key, trained once); rows whose grid
    has not finished yet are not in the group until it has."""
    rates = best_lr(lr_sweep_cells(preset), results, score)
    return [
        _cell("best", replace(spec, lr=rates[spec.label]), preset, seed, {"lr": rates[spec.label]})
        for seed in preset.seeds
        for spec in preset.methods
        if spec.label in rates
    ]


def heatmap_cells(preset: Preset) -> list[Cell]:
    """Figure 2: unshared rank × learning rate at the heatmap's budget (u = 0 is RoLoRA; u = the budget's
    LoRA rank is that LoRA, as u = 8 in Figure 2)."""
    spec = preset.heatmap
    budget_method, _, budget_rank = spec.budget.partition(":")
    cells = []
    for u in spec.unshared:
        for lr in spec.lrs:
            if budget_method == "lora" and u == int(budget_rank):
                row = MethodSpec(f"LoRA r={u} (u={u})", "lora", r=u, lr=lr)
            elif u == 0:  # no unshared rank: RoLoRA (Figure 2's u = 0)
                row = MethodSpec("RoLoRA (u=0)", "rolora", r=spec.r, u=0, budget=spec.budget, lr=lr)
            else:
                row = MethodSpec(f"PRoLoRA (u={u})", "prolora", r=spec.r, u=u, budget=spec.budget, lr=lr)
            cells.append(_cell("heatmap", row, preset, spec.seed, {"u": u, "lr": lr}))
    return cells


def table4_cells(preset: Preset) -> list[Cell]:
    """Table 4: sharing (rows) × rotation (columns) along the hidden and rank dimensions."""
    spec = preset.table4
    cells = []
    for share in spec.dims:
        for rotate in spec.dims:
            chosen = {"share": share, "rotate_dim": rotate}
            extra = {k: v for k, v in chosen.items() if v != TABLE4_DEFAULTS[k]}
            row = replace(spec.base, label=f"share {share} / rotate {rotate}", adapter=extra)
            cells.append(_cell("table4", row, preset, spec.seed, {"share": share, "rotate": rotate}))
    return cells


def build_cells(preset: Preset, groups: tuple[str, ...] = GROUPS) -> list[Cell]:
    """The cells of ``preset`` in ``groups`` that do not depend on results: main rows × seeds, the
    learning-rate sweep, Figure 2, Table 4 (the ``best`` group comes from the sweep's results:
    :func:`best_lr_cells`)."""
    cells = []
    if "main" in groups:
        cells += [_cell("main", spec, preset, seed) for seed in preset.seeds for spec in preset.methods]
    if "lrs" in groups and (preset.lr_grid or any(m.lr_grid for m in preset.methods)):
        cells += lr_sweep_cells(preset)
    if "heatmap" in groups and preset.heatmap:
        cells += heatmap_cells(preset)
    if "table4" in groups and preset.table4:
        cells += table4_cells(preset)
    return cells
