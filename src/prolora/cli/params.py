"""``prolora params``: trainable parameters and adapter bytes of a config, a budget solver, the paper's tables.

A thin layer over :mod:`prolora.params` (the counts, the solver and their text: ``count_text``,
``budget_text``, ``paper_text``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from typing import Any

from prolora.base_models import DEFAULT_MODEL
from prolora.method_presets import make_adapter_config
from prolora.params import (
    METHODS,
    PAPER_CONVENTION,
    PAPER_TARGET_MODULES,
    PRESETS,
    SOLVER_METHODS,
    budget_text,
    count_parameters,
    count_text,
    paper_text,
    reproduce_paper,
    solve_budget,
)

DTYPES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
# r, u, m, n of the library's default PRoLoRA config: make_adapter_config()'s defaults, which `prolora train`
# and PRoLoRAConfig() share (the paper's r=8, u=1, m=n=7 at LoRA r=2's budget); read from the one place
_PRESET_DEFAULTS = inspect.signature(make_adapter_config).parameters
DEFAULT_CONFIG = {key: _PRESET_DEFAULTS[key].default for key in ("method", "r", "u", "m", "n")}
TRAIN_DEFAULT = tuple(DEFAULT_CONFIG[key] for key in ("r", "u", "m", "n"))


def _int_at_least(low: int):
    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < low:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer ≥ {low}")
        return int(text)

    return parse


def _targets(text: str) -> str | list[str]:
    return text if text == "all-linear" else [name for name in text.split(",") if name]


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f'expected a JSON object like {{"down_proj": {{"r": 4}}}}, got {text!r}'
        )
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--model",
        help="model name, local directory, .gguf file or hub id; only its config is "
        "read (default: the embedded smollm2-135m)",
    )
    where.add_argument(
        "--preset",
        choices=list(PRESETS),
        help=f"LLaMA2 dimensions without download; '-paper' variants use {PAPER_CONVENTION}",
    )
    default = "r={r} u={u} m={m} n={n}".format(**DEFAULT_CONFIG)
    parser.add_argument(
        "--method",
        choices=METHODS,
        help=f"adapter to count (default: the library's default PRoLoRA config, {default})",
    )
    parser.add_argument("--r", type=_int_at_least(1), help=f"rank (default {DEFAULT_CONFIG['r']})")
    parser.add_argument(
        "--u",
        type=_int_at_least(0),
        help=f"unshared rank, 0 ≤ u ≤ r (prolora; default {DEFAULT_CONFIG['u']})",
    )
    parser.add_argument(
        "--m",
        type=_int_at_least(1),
        help=f"sharing rate of A, chunks along h (PRoLoRA family; default {DEFAULT_CONFIG['m']})",
    )
    parser.add_argument("--n", type=_int_at_least(1), help="sharing rate of B (chunks along o; default m)")
    targets = parser.add_mutually_exclusive_group()
    targets.add_argument(
        "--target-modules",
        type=_targets,
        help="comma-separated module names (suffix match, as PEFT) or all-linear "
        "(default: q,k,v,o,gate,up,down_proj; q,k,v_proj for tied-lora)",
    )
    targets.add_argument("--target-regex", help="regex matched against full module paths (as PEFT)")
    parser.add_argument(
        "--overrides",
        type=_json_object,
        metavar="JSON",
        help='per-module values by name pattern, as PEFT rank_pattern: \'{"down_proj": {"r": 4}}\'',
    )
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="adapter element type for bytes")
    solver = parser.add_argument_group("budget solver")
    solver.add_argument(
        "--budget", help="parameter count or METHOD:R (e.g. lora:8): list PRoLoRA configs that fit"
    )
    solver.add_argument(
        "--tolerance", type=float, default=0.01, help="relative band around the budget (0.01)"
    )
    solver.add_argument("--strict", action="store_true", help="only configs at or under the budget")
    solver.add_argument("--max-r", type=_int_at_least(1), default=64, help="largest rank searched (64)")
    solver.add_argument("--max-share", type=_int_at_least(1), default=16, help="largest m, n searched (16)")
    solver.add_argument("--untie-mn", action="store_true", help="also search m ≠ n")
    solver.add_argument("--top", type=_int_at_least(1), default=10, help="configs shown (10)")
    parser.add_argument(
        "--paper", action="store_true", help="reproduce the Param. values of paper Tables 1-3"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _resolve(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """The config to count: the flags given, the rest from :data:`DEFAULT_CONFIG` where the method has that
    hyperparameter (u for prolora, m and n for the PRoLoRA family); and the names of the defaulted flags."""
    method = args.method or DEFAULT_CONFIG["method"]
    given = {"method": args.method, "r": args.r, "u": args.u, "m": args.m, "n": args.n}
    applies = {"method", "r"} | ({"u"} if method == "prolora" else set())
    applies |= {"m", "n"} if method in SOLVER_METHODS else set()
    config = {
        key: given[key] if given[key] is not None else DEFAULT_CONFIG[key] if key in applies else None
        for key in given
    }
    if config["m"] is None:
        config["m"] = 1  # no sharing: what count_parameters takes for LoRA, VeRA and Tied-LoRA
    if args.m is not None and args.n is None:
        config["n"] = None  # n defaults to the m given
    defaulted = [key for key in given if given[key] is None and key in applies and config[key] is not None]
    return config, defaulted


def _count(args: argparse.Namespace, source: Any, targets: Any) -> dict[str, Any] | str:
    config, defaulted = _resolve(args)
    count = count_parameters(
        source, **config, target_modules=targets, overrides=args.overrides, dtype=args.dtype
    )
    result = {
        "model": args.preset or args.model or DEFAULT_MODEL,
        **config,
        "target_modules": targets,
        "overrides": args.overrides,
        "defaulted": defaulted,
        **count.as_dict(),
    }
    if f"{args.preset}-paper" in PRESETS:
        paper = count_parameters(
            f"{args.preset}-paper",
            **config,
            target_modules=targets,
            overrides=args.overrides,
            dtype=args.dtype,
        )
        result["paper_convention"] = {"preset": f"{args.preset}-paper", "params": paper.params}
    return result if args.json else count_text(result, DEFAULT_CONFIG)


def _budget(args: argparse.Namespace, source: Any, targets: Any) -> dict[str, Any] | str:
    method = args.method or "prolora"
    if method not in SOLVER_METHODS:
        raise ValueError(f"--budget searches --method {', '.join(SOLVER_METHODS)}, not {method}")
    fits = solve_budget(
        source,
        args.budget,
        method=method,
        target_modules=targets or PAPER_TARGET_MODULES,
        ranks=range(1, args.max_r + 1),
        shares=range(1, args.max_share + 1),
        tie_mn=not args.untie_mn,
        tolerance=args.tolerance,
        strict=args.strict,
    )
    shown = fits[: args.top]
    default = next((f for f in fits if (f.r, f.u, f.m, f.n) == TRAIN_DEFAULT), None)
    if default is not None and default not in shown:
        shown = [*shown, default]  # always list the configuration `prolora train` uses
    result = {
        "budget": args.budget,
        "method": method,
        "fits": [fit.as_dict() for fit in shown],
        "total_fits": len(fits),
        "cut": len(shown) < len(fits),
        "train_default": None if default is None else default.as_dict(),
    }
    return result if args.json else budget_text(result, args.tolerance, args.strict, args.top)


def _paper(args: argparse.Namespace) -> list[dict[str, Any]] | str:
    rows = reproduce_paper()
    return rows if args.json else paper_text(rows)


def run(args: argparse.Namespace) -> int:
    source = args.preset or args.model
    targets = args.target_regex or args.target_modules
    try:
        if args.paper:
            out = _paper(args)
        elif args.budget:
            out = _budget(args, source, targets)
        else:
            out = _count(args, source, targets)
    except (ValueError, FileNotFoundError, re.error) as e:
        print(f"prolora params: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2) if args.json else out)
    return 0
