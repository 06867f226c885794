"""``prolora compare``: budget matching, resume, the table's statistics, plots, shared-chunk learning rates.

Everything runs on tiny random models or on made-up cell results; no real model is trained.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import make_tiny_llama
from reference import ref_params

from prolora.compare.cells import LOSS, CellsFailed, load_results, result_path, run_cells
from prolora.compare.grid import Cell, build_cells, resolve
from prolora.compare.plots import BEST_VS_PARAMS, HEATMAP, LR_SWEEP, SCORE_VS_PARAMS, TABLE4, write_plots
from prolora.compare.presets import SMALL, MethodSpec
from prolora.compare.report import markdown, mean_std, summarize


@pytest.fixture
def tiny_preset():
    """The small preset's design on a 2-layer Llama (as a model object: no files, no downloads)."""
    return dataclasses.replace(SMALL, train={**SMALL.train, "model": make_tiny_llama()}, seeds=(1, 2))


def _fake_loss(cell: Cell) -> float:
    """A deterministic made-up loss per cell: seeds differ, methods differ."""
    bonus = 0.05 if cell.train["method"] == "prolora" else 0.0
    return 2.0 - 0.01 * cell.seed - 0.001 * (len(cell.label) % 7) - bonus


class FakeRunner:
    """Stands in for training: counts calls, returns a made-up loss."""

    def __init__(self):
        self.calls = []

    def __call__(self, cell, output_dir):
        self.calls.append(cell.key)
        return {LOSS: _fake_loss(cell)}, {"heldout_loss_base": 2.4}


# --- budget matching ----------------------------------------------------------------------------------------


# SmolLM2-135M: 30 layers, hidden 576, k/v project to 192 (3 of 9 heads); the small preset adapts q, k, v
QKV_SHAPES = [(576, 576), (576, 192), (576, 192)]


def _per_model(per_module) -> int:
    return 30 * sum(per_module(h, o) for h, o in QKV_SHAPES)


def test_small_preset_budgets_on_smollm2():
    """On SmolLM2-135M (architecture only), q/k/v: LoRA r=2 = 30·2·Σ(h+o) = 161,280; PRoLoRA r=8, u=1,
    m=n=7 by the paper's count; CLoRA/RoLoRA at r=8 fill the budget with m=n=4; ^-r/^-i copy PRoLoRA;
    Tied-LoRA r=85 = r·(d + Σo) + L·(r + Σo) just above the budget, VeRA r=256 = L·Σ(r + o) far below."""
    rows = {cell.label: cell for cell in build_cells(SMALL, ("main",)) if cell.seed == 1}
    lora2 = _per_model(lambda h, o: 2 * (h + o))
    assert lora2 == 161_280 == rows["LoRA r=2"].params
    for r in (1, 4, 8):
        assert rows[f"LoRA r={r}"].params == r * lora2 // 2
    prolora = rows["PRoLoRA"]
    assert (
        prolora.train["r"],
        prolora.train["unshared_r"],
        prolora.train["sharing_rate_a"],
        prolora.train["sharing_rate_b"],
    ) == (8, 1, 7, 7)
    assert prolora.params == _per_model(lambda h, o: ref_params(h, o, 8, 1, 7, 7)) == 162_120
    for label in ("CLoRA", "RoLoRA"):
        cell = rows[label]
        assert (cell.train["r"], cell.train["unshared_r"], cell.train["sharing_rate_a"]) == (8, 0, 4)
        assert cell.params == _per_model(lambda h, o: ref_params(h, o, 8, 0, 4, 4)) == lora2
    for label in ("PRoLoRA^-r", "PRoLoRA^-i", "PRoLoRA + shared lr"):
        same = {k: rows[label].train[k] for k in ("r", "unshared_r", "sharing_rate_a", "sharing_rate_b")}
        assert same == {k: prolora.train[k] for k in same} and rows[label].params == prolora.params
    for cell in rows.values():
        if cell.budget is not None:
            assert abs(cell.params - cell.budget) <= 0.01 * cell.budget
    outs = sum(o for _, o in QKV_SHAPES)
    assert rows["Tied-LoRA"].params == 85 * (576 + outs) + 30 * (85 + outs) == 161_910
    assert rows["VeRA"].params == 30 * (3 * 256 + outs) == 51_840
    assert {cell.train["target_modules"] for cell in rows.values()} == {"q_proj,k_proj,v_proj"}


def test_lr_sweep_is_every_row_at_every_rate():
    """One learning-rate grid for every method; the sweep's default-rate cells are the seed-1 main cells."""
    cells = build_cells(SMALL)
    sweep = [c for c in cells if c.group == "lrs"]
    assert len(sweep) == len(SMALL.lr_grid_rows) * len(SMALL.lr_grid)
    assert set(SMALL.lr_grid_rows) <= {m.label for m in SMALL.methods}
    by_label: dict[str, list[float]] = {}
    for c in sweep:
        by_label.setdefault(c.label, []).append(c.train["learning_rate"])
        assert c.seed == SMALL.lr_grid_seed and c.coords == {"lr": c.train["learning_rate"]}
    assert all(sorted(lrs) == sorted(SMALL.lr_grid) for lrs in by_label.values())
    assert set(by_label) == set(SMALL.lr_grid_rows)
    main_seed1 = {
        c.key
        for c in cells
        if c.group == "main" and c.seed == SMALL.lr_grid_seed and c.label in SMALL.lr_grid_rows
    }
    at_default = {c.key for c in sweep if c.train["learning_rate"] == SMALL.train["learning_rate"]}
    assert at_default == main_seed1
    shared = [c for c in sweep if c.label == "PRoLoRA + shared lr"]
    assert all(c.train["lr_shared_scale"] == 3.0 for c in shared)


def test_lr_sweep_report_picks_each_rows_best_rate(tmp_path):
    cells = build_cells(SMALL, ("main", "lrs"))

    def runner(cell, output_dir):  # best rate: 5e-3 for PRoLoRA, 5e-4 for every other row
        lr = cell.train["learning_rate"]
        best = 5e-3 if cell.label == "PRoLoRA" else 5e-4
        return {LOSS: 2.0 + abs(lr - best) * 10 + 0.001 * cell.seed}, {"heldout_loss_base": 2.4}

    results = run_cells(cells, tmp_path, runner, log=lambda _: None)
    summary = summarize(SMALL, cells, results)
    rows = {row["label"]: row for row in summary["lr_sweep"]["rows"]}
    assert summary["lr_sweep"]["lrs"] == sorted(SMALL.lr_grid)
    assert rows["PRoLoRA"]["best_lr"] == 5e-3 and rows["LoRA r=2"]["best_lr"] == 5e-4
    assert rows["PRoLoRA"]["best"] == pytest.approx(2.001)
    claim = next(c for c in summary["claims_best_lr"] if c["claim"] == "PRoLoRA > LoRA r=2")
    assert claim["gain"] == pytest.approx(0.0) and claim["n"] == 1
    text = markdown(summary)
    assert "## Every method over its learning-rate grid (seed 1)" in text
    # both best rates sit at an end of the grid: flagged, since the optimum may lie beyond it
    assert "| PRoLoRA | 2.0460 | 2.0310 | 2.0010 | 0.005 | 2.0010 | **high edge** |" in text
    assert rows["LoRA r=2"]["edge"] == "low" and rows["PRoLoRA"]["edge"] == "high"
    # with a rate of its grid unfinished, a row's edge is not judged yet
    partial = {
        k: v
        for k, v in results.items()
        if not (v["cell"]["label"] == "PRoLoRA" and v["cell"]["train"]["learning_rate"] == 5e-4)
    }
    rows = {row["label"]: row for row in summarize(SMALL, cells, partial)["lr_sweep"]["rows"]}
    assert rows["PRoLoRA"]["edge"] is None and rows["LoRA r=2"]["edge"] == "low"


def test_best_group_trains_each_row_at_its_best_rate_for_every_seed(tmp_path):
    """The best group: every sweep row at the rate with its lowest loss (a whole grid only), for every seed;
    the sweep's seed at that rate is the sweep's own cell; the report pairs the rows over all seeds."""
    from prolora.compare.grid import best_lr, best_lr_cells, lr_sweep_cells
    from prolora.compare.report import score

    preset = dataclasses.replace(SMALL, seeds=(1, 2, 3))
    best = {"PRoLoRA": 2e-3, "LoRA r=2": 5e-4}  # the others: 5e-3

    def runner(cell, output_dir):
        lr = cell.train["learning_rate"]
        return {LOSS: 2.0 + abs(lr - best.get(cell.label, 5e-3)) * 10 + 0.001 * cell.seed}, {}

    cells = build_cells(preset, ("main", "lrs"))
    results = run_cells(cells, tmp_path, runner, log=lambda _: None)
    sweep = lr_sweep_cells(preset)
    rates = best_lr(sweep, results, score)
    assert rates == {label: best.get(label, 5e-3) for label in preset.lr_grid_rows}
    chosen = best_lr_cells(preset, results, score)
    assert len(chosen) == len(preset.lr_grid_rows) * 3
    for cell in chosen:
        assert cell.group == "best" and cell.train["learning_rate"] == rates[cell.label] == cell.coords["lr"]
    by_seed1 = {c.label: c.key for c in chosen if c.seed == preset.lr_grid_seed}
    assert all(by_seed1[c.label] == c.key for c in sweep if c.coords["lr"] == rates[c.label])
    # a row with an unfinished rate is not in the group
    partial = {
        k: v
        for k, v in results.items()
        if not (v["cell"]["label"] == "PRoLoRA" and v["cell"]["train"]["learning_rate"] == 5e-3)
    }
    assert "PRoLoRA" not in best_lr(sweep, partial, score) and "LoRA r=2" in best_lr(sweep, partial, score)

    cells += chosen
    results = run_cells(cells, tmp_path, runner, log=lambda _: None)
    summary = summarize(preset, cells, results)
    rows = {row["label"]: row for row in summary["best_rows"]}
    assert rows["PRoLoRA"]["lr"] == 2e-3 and rows["PRoLoRA"]["metrics"][LOSS]["n"] == 3
    assert rows["PRoLoRA"]["metrics"][LOSS]["mean"] == pytest.approx(2.002)
    claim = next(c for c in summary["claims_best_lr"] if c["claim"] == "PRoLoRA > LoRA r=2")
    assert claim["n"] == 3 and claim["gain"] == pytest.approx(0.0, abs=1e-9)
    assert "## Every method at its own best rate (all seeds)" in markdown(summary)
    assert BEST_VS_PARAMS in {p.name for p in write_plots(summary, tmp_path / "report")}


def test_resolve_on_tiny_model_matches_budget(tiny_preset):
    spec = MethodSpec("PRoLoRA", "prolora", r=4, budget="lora:2")  # u chosen by the solver
    fields, params, budget = resolve(spec, tiny_preset, seed=3)
    assert fields["seed"] == 3 and fields["method"] == "prolora"
    assert (fields["unshared_r"], fields["sharing_rate_a"], fields["sharing_rate_b"]) == (1, 3, 3)
    assert abs(params - budget) <= 0.01 * budget


def test_resolve_rejects_unreachable_budget(tiny_preset):
    with pytest.raises(ValueError, match="no prolora configuration at r=8, u=3"):
        resolve(MethodSpec("x", "prolora", r=8, u=3, budget="lora:2"), tiny_preset, seed=1)


def test_shared_runs_are_one_cell():
    """Table 4's hidden/rank variant and Figure 2's default-lr PRoLoRA and LoRA cells are main-table cells."""
    cells = build_cells(SMALL)
    main = {c.key for c in cells if c.group == "main"}
    prolora = {"share": "hidden", "rotate": "rank"}
    assert {c.key for c in cells if c.group == "table4" and c.coords == prolora} <= main
    heat = [c for c in cells if c.group == "heatmap" and c.coords["lr"] == SMALL.train["learning_rate"]]
    assert {c.key for c in heat} <= main and len(heat) == len(SMALL.heatmap.unshared)


# --- resume -----------------------------------------------------------------------------------------------


def test_resume_skips_finished_cells(tmp_path):
    cells = build_cells(SMALL)
    runner = FakeRunner()
    distinct = {c.key for c in cells}
    first = run_cells(cells[:5], tmp_path, runner, log=lambda _: None)
    assert len(runner.calls) == len(first) == len({c.key for c in cells[:5]})
    results = run_cells(cells, tmp_path, runner, log=lambda _: None)
    assert len(runner.calls) == len(distinct) == len(results)  # the first five were not trained again
    run_cells(cells, tmp_path, runner, log=lambda _: None)
    assert len(runner.calls) == len(distinct)
    stored = json.loads(result_path(tmp_path, cells[0]).read_text())
    assert stored["cell"]["key"] == cells[0].key and stored["metrics"][LOSS] == _fake_loss(cells[0])


def test_cells_run_in_preset_order(tmp_path):
    """Each distinct run once, at its first occurrence: the main table (seed by seed) comes first."""
    cells = build_cells(SMALL)
    runner = FakeRunner()
    run_cells(cells, tmp_path, runner, log=lambda _: None)
    assert runner.calls == list(dict.fromkeys(c.key for c in cells))


def test_result_files_are_atomic(tmp_path):
    """A finished cell is exactly its result file; no temporary file is left behind."""
    cells = build_cells(SMALL, ("table4",))
    run_cells(cells, tmp_path, FakeRunner(), log=lambda _: None)
    names = [p.name for p in (tmp_path / "cells").iterdir()]
    assert all(n.endswith(".json") and not n.startswith(".") for n in names)
    assert set(load_results(tmp_path, cells)) == {c.key for c in cells}


def test_failed_cell_is_not_finished(tmp_path):
    cells = build_cells(SMALL, ("table4",))

    def broken(cell, output_dir):
        raise RuntimeError("out of memory")

    with pytest.raises(CellsFailed) as caught:
        run_cells(cells, tmp_path, broken, log=lambda _: None)
    assert len(caught.value.failed) == len({c.key for c in cells}) and caught.value.results == {}
    assert load_results(tmp_path, cells) == {}


# --- report -----------------------------------------------------------------------------------------------


def test_table_mean_and_std(tmp_path):
    cells = build_cells(SMALL, ("main",))
    results = run_cells(cells, tmp_path, FakeRunner(), log=lambda _: None)
    summary = summarize(SMALL, cells, results, command="prolora compare")
    row = next(r for r in summary["rows"] if r["label"] == "PRoLoRA")
    losses = [_fake_loss(c) for c in cells if c.label == "PRoLoRA"]
    expected = mean_std(losses)
    assert row["metrics"][LOSS]["n"] == 3
    assert row["metrics"][LOSS]["mean"] == pytest.approx(sum(losses) / 3)
    assert row["metrics"][LOSS]["std"] == pytest.approx(expected["std"])
    assert expected["std"] == pytest.approx(0.01)  # seeds 1, 2, 3 differ by 0.01 each: sample std 0.01
    text = markdown(summary)
    mean = f"{expected['mean']:.4f} ± 0.0100 (n=3)"
    assert f"| PRoLoRA | 8 (u=1, m=n=7) | 162,120 | +0.52% | 0.002 | {mean}" in text
    lora = mean_std(_fake_loss(c) for c in cells if c.label == "LoRA r=2")
    claim = next(c for c in summary["claims"] if c["claim"] == "PRoLoRA > LoRA r=2")
    assert claim["holds"] and claim["gain"] == pytest.approx(lora["mean"] - expected["mean"])  # lower wins
    assert claim["spread"] == pytest.approx(0.0) and claim["wins"] == claim["n"] == 3  # paired: same per seed


def test_mean_std_edge_cases():
    assert mean_std([]) == {"mean": None, "std": None, "n": 0, "values": []}
    assert mean_std([1.5]) == {"mean": 1.5, "std": 0.0, "n": 1, "values": [1.5]}
    assert mean_std([1.0, 2.0, 3.0])["std"] == pytest.approx(1.0)


def test_report_with_missing_cells(tmp_path):
    """Unfinished cells show as not run; the report still renders."""
    cells = build_cells(SMALL)
    results = run_cells(cells[:3], tmp_path, FakeRunner(), log=lambda _: None)
    text = markdown(summarize(SMALL, cells, results))
    assert "not run" in text and "## Unshared rank" in text and "## Sharing × rotation" in text


# --- plots ------------------------------------------------------------------------------------------------


def test_plots_written(tmp_path):
    cells = build_cells(SMALL)
    results = run_cells(cells, tmp_path / "run", FakeRunner(), log=lambda _: None)
    paths = write_plots(summarize(SMALL, cells, results), tmp_path / "report")
    assert {p.name for p in paths} == {SCORE_VS_PARAMS, LR_SWEEP, HEATMAP, TABLE4}
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000


# --- shared-chunk learning rate -------------------------------------------------------------------------


def test_lr_shared_scale_param_groups(tmp_path):
    """With lr_shared_scale=3 the optimizer trains A_0/B_0 at 3× the rate and A_u/B_u at the rate, through
    the schedule (the scheduler scales both groups alike)."""
    from peft import get_peft_model
    from transformers import TrainingArguments

    from prolora.method_presets import make_adapter_config
    from prolora.train.trainer import CheckpointTrainer

    model = get_peft_model(make_tiny_llama(), make_adapter_config("prolora", r=4, u=1, m=2, n=2))
    args = TrainingArguments(
        output_dir=str(tmp_path),
        learning_rate=1e-3,
        max_steps=10,
        warmup_steps=0,
        lr_scheduler_type="linear",
        use_cpu=True,
        report_to="none",
    )
    trainer = CheckpointTrainer(model=model, args=args, lr_shared_scale=3.0)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    names = {id(p): n for n, p in model.named_parameters()}
    by_lr: dict[float, set[str]] = {}
    for group in trainer.optimizer.param_groups:
        kinds = {names[id(p)].split(".default")[0].rsplit(".", 1)[-1] for p in group["params"]}
        by_lr.setdefault(round(group["lr"], 9), set()).update(kinds)
    assert by_lr == {1e-3: {"prolora_A_u", "prolora_B_u"}, 3e-3: {"prolora_A0", "prolora_B0"}}
    trained = sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"])
    assert trained == sum(p.numel() for p in model.parameters() if p.requires_grad)
    trainer.lr_scheduler.step()
    lrs = sorted(g["lr"] for g in trainer.optimizer.param_groups)
    assert lrs[-1] == pytest.approx(3 * lrs[0]) and lrs[0] < 1e-3


def test_lr_shared_scale_default_keeps_one_rate(tmp_path):
    from peft import get_peft_model
    from transformers import TrainingArguments

    from prolora.method_presets import make_adapter_config
    from prolora.train.trainer import CheckpointTrainer

    model = get_peft_model(make_tiny_llama(), make_adapter_config("prolora", r=4, u=1, m=2, n=2))
    args = TrainingArguments(
        output_dir=str(tmp_path), learning_rate=1e-3, max_steps=10, use_cpu=True, report_to="none"
    )
    trainer = CheckpointTrainer(model=model, args=args)
    trainer.create_optimizer()
    assert {g["lr"] for g in trainer.optimizer.param_groups} == {1e-3}


def test_lr_shared_scale_must_be_positive():
    from prolora.train.config import TrainConfig

    with pytest.raises(ValueError, match="lr_shared_scale"):
        TrainConfig(lr_shared_scale=0)


def test_rank_pilot_and_study_presets_build_the_cells_they_should():
    """issue 14: the pilot is LoRA r=1/4/8 at both scalings (r=1 once); the study reuses the pilot's runs."""
    from prolora.compare.presets import PRESETS, TOP6_DOWN

    pilot, study = PRESETS["pilot-down6"], PRESETS["study-down6"]
    pilot_cells = build_cells(pilot)
    assert len(pilot_cells) == 5 * 3 == len({c.key for c in pilot_cells})
    by_label = {c.label: c for c in pilot_cells if c.seed == 1}
    assert [by_label[f"LoRA r={r}"].params for r in (1, 4, 8)] == [
        12_672,
        50_688,
        101_376,
    ]  # 6 × r·(1536+576)
    assert by_label["LoRA r=8 (α/√r)"].train["use_rslora"] is True
    assert "use_rslora" not in by_label["LoRA r=1"].train  # r=1: both scalings are one run
    cells = build_cells(study)
    main = [c for c in cells if c.group == "main"]
    assert len(main) == len(study.methods) * 3 and {c.seed for c in main} == {1, 2, 3}
    assert {c.key for c in pilot_cells} <= {c.key for c in cells}  # the pilot's finished cells are reused
    rows = {c.label: c for c in main if c.seed == 1}
    assert all(c.train["target_modules"] == TOP6_DOWN and c.train["learning_rate"] == 2e-3 for c in main)
    # budgets: LoRA r=2 = 25,344; PRoLoRA r=8 u=1 m=n=7 within 1%; at LoRA r=1's budget u=0, m=n=8 exactly
    assert (rows["PRoLoRA"].train["unshared_r"], rows["PRoLoRA"].train["sharing_rate_a"]) == (1, 7)
    assert rows["PRoLoRA"].budget == 25_344 and abs(rows["PRoLoRA"].params / 25_344 - 1) < 0.01
    assert rows["RoLoRA @r1"].params == rows["LoRA r=1"].params == 12_672
    assert rows["RoLoRA @r1"].train["sharing_rate_a"] == 8 and rows["RoLoRA @r1"].train["unshared_r"] == 0
    assert rows["PRoLoRA (α/√r)"].train["use_rslora"] is True
    # every row with a grid is trained at each of its own rates (seed 1); the default rate is the main cell
    sweep = [c for c in cells if c.group == "lrs"]
    for spec in study.methods:
        got = sorted(c.coords["lr"] for c in sweep if c.label == spec.label)
        assert got == sorted(spec.lr_grid or ())
    assert all(c.seed == 1 for c in sweep)
    # distinct runs: the main table, plus each grid's rates other than the shared 2e-3 (that one is a main cell)
    extra = sum(len([lr for lr in spec.lr_grid if lr != 2e-3]) for spec in study.methods)
    assert len({c.key for c in cells}) == len(main) + extra == 54 + 57


def test_headline_preset_reuses_the_160_step_pilots_runs():
    """headline-down6-160's LoRA r=1/r=4 rows at its shared rate are pilot-down6-160's cells (same keys)."""
    from prolora.compare.presets import PRESETS

    pilot = {c.key for c in build_cells(PRESETS["pilot-down6-160"]) if c.label in ("LoRA r=1", "LoRA r=4")}
    headline = build_cells(PRESETS["headline-down6-160"])
    assert len(pilot) == 6 and pilot <= {c.key for c in headline if c.group == "main"}
    assert all(c.train["max_steps"] == 160 for c in headline)


@pytest.mark.parametrize("method", ["vera", "tied-lora", "rolora"])
def test_study_methods_adapt_only_the_regex_modules(method):
    """The study adapts down_proj of some layers by regex: VeRA, Tied-LoRA and PRoLoRA accept it."""
    from peft import get_peft_model

    from prolora.compare.cells import build_adapter_config, train_config

    regex = r"model\.layers\.(1)\.mlp\.down_proj"
    train = {
        "method": method,
        "r": 4,
        "unshared_r": 0,
        "sharing_rate_a": 2,
        "sharing_rate_b": 2,
        "target_modules": regex,
        "seed": 1,
    }
    config = train_config(train, "unused")
    model = get_peft_model(make_tiny_llama(), build_adapter_config(config, method, {}))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".layers.1.mlp.down_proj." in n for n in trainable)


# --- one comparison end to end (what `prolora compare` runs) ------------------------------------------------


def test_run_comparison_runs_the_groups_then_the_best_rates_and_resumes(tmp_path):
    """configure → run_comparison: the main rows × seeds and the sweep, then each row at its best rate for
    every seed; the report lists every cell; a rerun trains nothing; report_only reads the same results."""
    from prolora.compare.experiment import REPORT_JSON, REPORT_MD, configure, run_comparison
    from prolora.compare.grid import best_lr_cells, lr_sweep_cells
    from prolora.compare.report import score

    preset = configure("small", methods=["LoRA r=2"], seeds=[1, 3], max_steps=7)
    assert [m.label for m in preset.methods] == ["LoRA r=2"]
    assert preset.seeds == (1, 3) and preset.train["max_steps"] == 7
    runner = FakeRunner()
    md, cells, results = run_comparison(preset, ("main", "lrs", "best"), tmp_path / "out", runner=runner)
    expected = build_cells(preset, ("main", "lrs"))
    sweep = load_results(tmp_path / "out", lr_sweep_cells(preset))
    expected += best_lr_cells(preset, sweep, score)
    assert [c.key for c in cells] == [c.key for c in expected] and any(c.group == "best" for c in cells)
    assert set(results) == {c.key for c in cells} and runner.calls == list(dict.fromkeys(runner.calls))
    assert md == tmp_path / "out" / REPORT_MD and md.read_text().startswith("#")
    assert json.loads((tmp_path / "out" / REPORT_JSON).read_text())["preset"] == "small"
    trained = len(runner.calls)
    again = run_comparison(preset, ("main", "lrs", "best"), tmp_path / "out", tmp_path / "rep", runner=runner)
    assert len(runner.calls) == trained and again[2] == results and (tmp_path / "rep" / REPORT_MD).is_file()
    read = run_comparison(preset, ("main", "lrs", "best"), tmp_path / "out", report_only=True)
    assert read[2] == results


def test_configure_refuses_an_unknown_row_and_run_comparison_a_bad_group(tmp_path):
    from prolora.compare.experiment import configure, run_comparison

    with pytest.raises(ValueError, match=r"unknown \['nope'\]; the rows are: .*PRoLoRA"):
        configure("small", methods=["nope"])
    with pytest.raises(ValueError, match="unknown"):
        run_comparison(SMALL, ("main", "mian"), tmp_path, runner=FakeRunner())
