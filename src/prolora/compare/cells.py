"""Run the cells of a comparison, one result file each; finished cells are never recomputed.

Layout of a comparison directory::

    cells/<name>.json   one finished cell: its settings, the training summary, its metrics, its seconds
    runs/<name>/        its training run (``prolora train`` layout: adapter/, summary.json, train_log.jsonl)

A cell is finished when its result file exists. The file is written to a temporary name and renamed, so
an interrupted comparison leaves either a whole result or none; rerunning the same command continues with
the missing cells (an unfinished cell's run directory is started afresh). Several processes may share a
directory if they run disjoint cells (e.g. ``--seeds 1,2`` and ``--seeds 3``): each skips what another has
finished meanwhile.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from prolora.files import write_json

from .grid import Cell

CELLS_DIR = "cells"
RUNS_DIR = "runs"
LOSS = "held-out loss"  # the metric every cell has: lower is better; benchmark metrics are higher-better

# (cell, its run directory) -> (metrics {name: value}, the training summary)
Runner = Callable[[Cell, Path], tuple[dict, dict]]


class CellsFailed(RuntimeError):
    """Some cells raised; the others finished. ``results`` holds every finished cell's result by key."""

    def __init__(self, failed: list[Cell], results: dict[str, dict]):
        names = ", ".join(f"{c.label} seed {c.seed}" for c in failed)
        super().__init__(f"{len(failed)} cell(s) failed: {names}")
        self.failed, self.results = failed, results


def result_path(run_dir: str | Path, cell: Cell) -> Path:
    return Path(run_dir) / CELLS_DIR / f"{cell.name}.json"


def load_results(run_dir: str | Path, cells: list[Cell]) -> dict[str, dict]:
    """The finished results among ``cells``, by cell key."""
    found = {}
    for cell in cells:
        path = result_path(run_dir, cell)
        if path.exists():
            found[cell.key] = json.loads(path.read_text(encoding="utf-8"))
    return found


def run_cells(
    cells: list[Cell],
    run_dir: str | Path,
    runner: Runner,
    log: Callable[[str], None] = print,
    after_each: Callable[[dict[str, dict]], object] | None = None,
) -> dict[str, dict]:
    """Run every unfinished cell of ``cells`` (each distinct key once) with ``runner``; return all results
    by key.

    ``runner(cell, cell_run_dir)`` trains and evaluates one cell and returns ``(metrics, summary)``;
    ``after_each(results)`` is called after every finished cell (e.g. to refresh the report).

    Raises:
        CellsFailed: after all cells were tried, if some raised (their error is logged when it happens).
    """
    run_dir = Path(run_dir)
    first: dict[str, Cell] = {}
    for cell in cells:
        first.setdefault(cell.key, cell)
    unique = list(first.values())
    results = load_results(run_dir, unique)
    todo = [cell for cell in unique if cell.key not in results]
    log(f"{len(unique)} distinct cells: {len(results)} finished, {len(todo)} to run")
    failed: list[Cell] = []
    for i, cell in enumerate(todo, 1):
        path = result_path(run_dir, cell)
        if path.exists():  # finished meanwhile by another process working on the same directory
            results[cell.key] = json.loads(path.read_text(encoding="utf-8"))
            continue
        cell_dir = run_dir / RUNS_DIR / cell.name
        shutil.rmtree(cell_dir, ignore_errors=True)  # an unfinished earlier attempt
        log(
            f"[{i}/{len(todo)}] {cell.group}: {cell.label}, seed {cell.seed} ({cell.params:,} params) "
            f"-> {cell_dir}"
        )
        started = time.perf_counter()
        try:
            metrics, summary = runner(cell, cell_dir)
        except Exception as error:  # noqa: BLE001  (one broken cell must not cost the others)
            failed.append(cell)
            log(f"    FAILED ({type(error).__name__}: {error}); continuing, rerun to retry it")
            continue
        seconds = time.perf_counter() - started
        finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
        result = {
            "cell": {**dataclasses.asdict(cell), "key": cell.key},
            "metrics": metrics,
            "summary": summary,
            "seconds": seconds,
            "finished": finished,
        }
        write_json(path, result, sort_keys=True)
        results[cell.key] = result
        log(f"    done in {seconds:.0f} s: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if after_each is not None:
            after_each(results)
    if failed:
        raise CellsFailed(failed, results)
    return results


def build_adapter_config(config, method: str, adapter: dict):
    """The PEFT config of a cell whose :class:`~prolora.train.config.TrainConfig` is ``config``:
    :func:`prolora.method_presets.make_adapter_config` for ``method``, or the VeRA / Tied-LoRA presets of
    :mod:`prolora.baselines`, with the cell's extra PRoLoRAConfig fields (Table 4) applied."""
    from prolora import baselines
    from prolora.method_presets import make_adapter_config

    if method == "vera":
        peft_config = baselines.make_vera_config(
            r=config.r, target_modules=config.target_modules, vera_dropout=config.lora_dropout
        )
    elif method == "tied-lora":
        peft_config = baselines.make_tied_lora_config(
            r=config.r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.target_modules,
        )
    else:
        peft_config = make_adapter_config(
            method,
            r=config.r,
            u=config.unshared_r,
            m=config.sharing_rate_a,
            n=config.sharing_rate_b,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.target_modules,
            use_rslora=config.use_rslora,
        )
    return dataclasses.replace(peft_config, **adapter) if adapter else peft_config


def train_config(train: dict, output_dir: Path):
    """The :class:`~prolora.train.config.TrainConfig` of a cell.

    ``method`` is validated against :data:`prolora.method_presets.METHODS`; a method built here from
    :mod:`prolora.baselines` that it does not list (yet) is recorded as ``lora`` in the run's own files,
    while the cell's result keeps the real name (its adapter config is passed to ``train`` directly).
    """
    from prolora.method_presets import METHODS
    from prolora.train.config import TrainConfig, parse_target_modules

    fields = {
        **train,
        "output_dir": str(output_dir),
        "target_modules": parse_target_modules(train["target_modules"]),
    }
    if fields["method"] not in METHODS:
        fields["method"] = "lora"
    return TrainConfig(**fields)


class TrainRunner:
    """Trains cells with :func:`prolora.train.run.train`, loading the base model once (float32 bases).

    With a full-precision base, each cell trains on a deep copy of one model loaded at the first cell
    (loading takes about 20 s on a CPU; a copy well under a second). A 4-bit base is loaded per cell.
    ``evaluate(adapter_run_dir) -> {metric: value}`` adds benchmark scores, if given.
    """

    def __init__(self, evaluate: Callable[[Path], dict] | None = None):
        self.evaluate = evaluate
        self._base = None

    def _base_model(self, config):
        from prolora.base_models import load_base_model, resolve_quantization

        if resolve_quantization(config.quantization) != "none":
            return None
        if self._base is None:
            self._base = load_base_model(config.model, "none")
        return copy.deepcopy(self._base)

    def __call__(self, cell: Cell, output_dir: Path) -> tuple[dict, dict]:
        from prolora.train.run import train

        config = train_config(cell.train, output_dir)
        summary = train(
            config,
            base_model=self._base_model(config),
            adapter_config=build_adapter_config(config, cell.train["method"], cell.adapter),
        )
        if summary["interrupted"]:  # stopped early by a signal: not a result; stop the comparison too
            raise KeyboardInterrupt(f"{cell.label} seed {cell.seed}: stopped by {summary['interrupted']}")
        metrics = {LOSS: summary["heldout_loss_adapter"]}
        if self.evaluate is not None:
            metrics.update(self.evaluate(output_dir))
        return metrics, summary


def benchmark_evaluator(model: str | None, benchmarks: tuple[str, ...], data_dir: str, limit: int | None):
    """``evaluate(run_dir)``: the paper's Table 2 scores of one trained adapter (:mod:`prolora.eval`)."""
    from prolora.eval.report import COLUMNS
    from prolora.eval.runner import run_eval
    from prolora.eval.settings import EvalSettings
    from prolora.eval.sources import DataSources

    def evaluate(run_dir: Path) -> dict:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        results, _ = run_eval(
            model,
            [str(run_dir)],
            list(benchmarks),
            DataSources.from_dir(data_dir),
            EvalSettings(limit=limit),
            device=device,
        )
        scores = results["runs"][0]["scores"]
        return {header: scores[bench][metric] for header, bench, metric in COLUMNS if bench in benchmarks}

    return evaluate
