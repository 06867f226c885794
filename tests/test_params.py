"""Parameter accounting: the paper's Param. values, layer enumeration, the budget solver, the CLI and its errors."""

from __future__ import annotations

import argparse
import json

import pytest
from conftest import make_tiny_gpt2, make_tiny_llama

from prolora import cli
from prolora.cli import params as params_cli
from prolora.equations import trainable_params
from prolora.params import (
    PAPER_TARGET_MODULES,
    count_parameters,
    paper_text,
    reproduce_paper,
    solve_budget,
    target_layers,
)

# Tiny Llama of conftest.make_tiny_llama: hidden 48, intermediate 80, 2 layers, 6 heads, 2 KV heads (k/v out 16).
TINY_SHAPES = [
    (48, 48),
    (48, 16),
    (48, 16),
    (48, 48),
    (48, 80),
    (48, 80),
    (80, 48),
]  # (h, o) of q,k,v,o,gate,up,down


def millions(count) -> float:
    return round(count.params / 1e6, 2)


@pytest.mark.parametrize(
    ("preset", "method", "config", "paper"),
    [
        ("llama2-7b", "lora", {"r": 2}, 5.00),  # Tables 1-2
        ("llama2-7b", "lora", {"r": 8}, 19.99),  # Table 2
        ("llama2-7b", "lora", {"r": 16}, 39.98),  # Table 1 (Table 2 misprints 40.98M)
        ("llama2-7b", "lora", {"r": 64}, 159.91),  # Table 1
        ("llama2-13b-paper", "lora", {"r": 2}, 6.26),  # Tables 1 and 3
        ("llama2-13b-paper", "lora", {"r": 16}, 50.07),
        ("llama2-13b-paper", "lora", {"r": 64}, 200.28),
        ("llama2-70b-paper", "lora", {"r": 2}, 11.27),  # Table 1
        ("llama2-70b-paper", "lora", {"r": 16}, 90.18),
        ("llama2-70b-paper", "lora", {"r": 64}, 360.71),
        ("llama2-7b", "prolora", {"r": 8, "u": 1, "m": 7, "n": 7}, 5.00),  # Table 2, Section 4.2
        ("llama2-7b", "clora", {"r": 32, "m": 4}, 19.99),  # Table 2
        ("llama2-7b", "rolora", {"r": 32, "m": 4}, 19.99),
        ("llama2-7b", "vera", {"r": 256}, 1.42),  # Table 2
        ("llama2-7b", "tied-lora", {"r": 256}, 4.60),
        ("llama2-7b", "tied-lora", {"r": 280}, 4.99),
    ],
)
def test_paper_param_counts(preset, method, config, paper):
    assert millions(count_parameters(preset, method, **config)) == paper


def test_table1_sizes_are_mebibytes():
    count = count_parameters("llama2-7b", "lora", r=64)
    assert count.bytes == 159_907_840 * 4 == 639_631_360
    assert (round(count.megabytes, 1), count.mebibytes) == (639.6, 610.0)  # Table 1 prints 610MB
    assert round(count_parameters("llama2-70b-paper", "lora", r=64).mebibytes) == 1376  # Table 1: 1,376MB
    assert count_parameters("llama2-7b", "lora", r=64, dtype="bf16").bytes == count.bytes // 2


def test_prolora_rank32_is_19_99m_only_with_the_papers_exact_division():
    """u=4, m=n=7: the paper's u(h+o) + (r−u)(h+o)/7 = 8(h+o) is exactly LoRA r=8 (19.99M); chunks of
    ⌈4096/7⌉ = 586 and ⌈11008/7⌉ = 1573 columns add 9,600 parameters, which prints as 20.00M."""
    lora8 = count_parameters("llama2-7b", "lora", r=8)
    prolora = count_parameters("llama2-7b", "prolora", r=32, u=4, m=7)
    assert (lora8.params, millions(lora8)) == (19_988_480, 19.99)
    assert (prolora.params - lora8.params, millions(prolora)) == (9_600, 20.00)
    exact = count_parameters("llama2-7b-paper", "prolora", r=32, u=4, m=7, exact_division=True)
    assert exact.params == lora8.params


def test_real_architectures_differ_from_the_paper_convention():
    assert count_parameters("llama2-13b", "lora", r=2).params == 7_823_360  # 40 layers, not 32
    kv = target_layers("llama2-70b", ["k_proj", "v_proj"])
    assert (len(kv), {layer.o for layer in kv}) == (160, {1024})  # 80 layers, 8 KV heads × 128
    assert count_parameters("llama2-70b", "lora", r=2).params == 25_886_720


def test_reproduction_table_matches_the_paper_except_two_known_rows():
    rows = reproduce_paper()
    mismatches = {(row["source"], row["method"], row["r"]) for row in rows if not row["matches"]}
    assert mismatches == {("Table 2", "lora", 16)}  # misprint: Table 1 prints 39.98M for the same adapter
    assert all(row["size_matches"] for row in rows if row["paper_size"])
    text = paper_text(rows)  # what `prolora params --paper` prints: one line per row, the mismatch marked
    lines = [[cell.strip() for cell in line.split("  ")] for line in text.splitlines()]
    marked = [line for line in lines if "NO" in line]
    assert len(marked) == 1 and marked[0][0] == "Table 2" and "lora r=16" in marked[0]
    assert sum("yes" in line for line in lines) == len(rows) - 1


@pytest.mark.parametrize(
    ("method", "config", "rumn"),
    [
        ("lora", {"r": 4}, (4, 4, 1, 1)),
        ("prolora", {"r": 4, "u": 1, "m": 3}, (4, 1, 3, 3)),
        ("clora", {"r": 6, "m": 2, "n": 4}, (6, 0, 2, 4)),
    ],
)
def test_tiny_llama_matches_a_hand_count(tiny_llama, method, config, rumn):
    expected = 2 * sum(trainable_params(h, o, *rumn) for h, o in TINY_SHAPES)
    assert count_parameters(tiny_llama, method, **config).params == expected
    assert (
        count_parameters(tiny_llama.config, method, **config).params == expected
    )  # built on the meta device


@pytest.mark.parametrize(
    ("make", "targets", "overrides"),
    [
        (make_tiny_llama, list(PAPER_TARGET_MODULES), {"down_proj": {"r": 2, "u": 1}}),
        (make_tiny_gpt2, ["c_attn", "c_fc", "c_proj"], {}),  # Conv1D layers
    ],
)
def test_count_equals_an_instantiated_prolora_model(make, targets, overrides):
    from prolora import PRoLoRAConfig, get_prolora_model

    core_overrides = {
        k: {"unshared_r" if name == "u" else name: v for name, v in o.items()} for k, o in overrides.items()
    }
    config = PRoLoRAConfig(
        r=6,
        unshared_r=1,
        sharing_rate_a=2,
        sharing_rate_b=4,
        target_modules=targets,
        overrides=core_overrides,
    )
    model = get_prolora_model(make(), config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    count = count_parameters(
        make(), "prolora", r=6, u=1, m=2, n=4, target_modules=targets, overrides=overrides
    )
    assert count.params == trainable


def test_lora_hand_count_without_the_equation(tiny_llama):
    assert (
        count_parameters(tiny_llama, "lora", r=4).params == 2 * 4 * sum(h + o for h, o in TINY_SHAPES) == 5632
    )


def test_gpt2_conv1d_weights_are_in_by_out(tiny_gpt2):
    shapes = {
        layer.name.split(".", 3)[-1]: (layer.h, layer.o) for layer in target_layers(tiny_gpt2, "all-linear")
    }
    assert shapes == {
        "attn.c_attn": (48, 144),
        "attn.c_proj": (48, 48),
        "mlp.c_fc": (48, 192),
        "mlp.c_proj": (192, 48),
    }


def test_target_module_forms(tiny_llama):
    names = {layer.name for layer in target_layers(tiny_llama, "all-linear")}
    assert names == {layer.name for layer in target_layers(tiny_llama, PAPER_TARGET_MODULES)}  # no lm_head
    assert len(target_layers(tiny_llama, r".*\.[qv]_proj")) == 4
    assert len(target_layers(tiny_llama, ["model.layers.1.mlp.down_proj"])) == 1


def test_overrides_follow_peft_rank_pattern(tiny_llama):
    base = count_parameters(tiny_llama, "lora", r=4).params
    down = 4 * (80 + 48)
    assert count_parameters(tiny_llama, "lora", r=4, overrides={"down_proj": {"r": 2}}).params == base - down
    one_layer = {"model.layers.0.mlp.down_proj": {"r": 2}}
    assert count_parameters(tiny_llama, "lora", r=4, overrides=one_layer).params == base - down // 2


def test_solver_returns_only_configs_within_the_budget(tiny_llama):
    fits = solve_budget(tiny_llama, "lora:2", ranks=range(1, 17), shares=range(1, 9))
    budget = count_parameters(tiny_llama, "lora", r=2).params
    assert fits and all(abs(f.params - budget) <= 0.01 * budget and f.budget == budget for f in fits)
    assert [abs(f.gap) for f in fits] == sorted(abs(f.gap) for f in fits)
    for f in fits[:3]:
        assert count_parameters(tiny_llama, "prolora", r=f.r, u=f.u, m=f.m, n=f.n).params == f.params
    strict = solve_budget(
        tiny_llama, budget, ranks=range(1, 17), shares=range(1, 9), tie_mn=False, strict=True
    )
    assert strict and all(f.gap <= 0 for f in strict)
    assert all(f.u == 0 for f in solve_budget(tiny_llama, "lora:2", method="rolora", ranks=range(1, 17)))


@pytest.mark.slow
def test_smollm2_from_config_alone():
    """The embedded SmolLM2-135M from its GGUF config only (parsing the header takes a few seconds; cached)."""
    layers = target_layers(None)
    shapes = {layer.name.rsplit(".", 1)[-1]: (layer.h, layer.o) for layer in layers}
    assert len(layers) == 7 * 30
    assert shapes["k_proj"] == (576, 192) and shapes["down_proj"] == (1536, 576)
    assert count_parameters(None, "lora", r=2).params == 610_560
    assert count_parameters(None, "prolora", r=8, u=1, m=7).params == 612_510


@pytest.mark.slow
def test_smollm2_solver_includes_the_papers_lora_r2_match():
    fits = {(f.r, f.u, f.m, f.n): f for f in solve_budget(None, "lora:2")}
    assert fits[(8, 1, 7, 7)].gap == 612_510 - 610_560  # over by 0.32%: inside the default ±1%
    assert (9, 1, 8, 8) in fits and fits[(9, 1, 8, 8)].gap == 0  # 576, 192 and 1536 divide by 8
    assert (8, 1, 7, 7) not in {(f.r, f.u, f.m, f.n) for f in solve_budget(None, "lora:2", strict=True)}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ({"method": "prolora", "r": 8, "u": 9}, r"u=9 is invalid.*0 ≤ u ≤ r=8"),
        ({"method": "lora", "r": 0}, r"r=0 is invalid"),
        ({"method": "prolora", "r": 8, "u": 1, "m": 49}, r"m=49.*use m ≤ 48"),
        ({"method": "prolora", "r": 8, "u": 1, "m": 2, "n": 17}, r"n=17.*n ≤ 16"),
        ({"method": "prolora", "r": 8}, r"prolora needs the unshared rank u"),
        ({"method": "lora", "r": 8, "u": 2}, r"u=2 is invalid for lora"),
        ({"method": "vera", "r": 8, "m": 2}, r"vera takes only r"),
        ({"method": "dora", "r": 8}, r"unknown method 'dora'"),
        ({"method": "lora", "r": 8, "dtype": "fp8"}, r"unknown dtype 'fp8'"),
        (
            {"method": "lora", "r": 8, "target_modules": ["c_attn"]},
            r"matched no layer; its linear layers: .*q_proj",
        ),
        ({"method": "lora", "r": 8, "overrides": {"q_proj": {"rank": 2}}}, r"only r, u, m and n"),
    ],
)
def test_invalid_configs_name_the_value_and_the_fix(tiny_llama, call, message):
    with pytest.raises(ValueError, match=message):
        count_parameters(tiny_llama, **call)


def test_unknown_preset_or_model():
    with pytest.raises(ValueError, match="neither a preset"):
        count_parameters("/nonexistent/llama3", "lora", r=8)


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="prolora params")
    params_cli.add_arguments(parser)
    return params_cli.run(parser.parse_args(argv))


def test_cli_counts_and_reports_both_conventions(capsys):
    assert "params" in cli.COMMANDS
    assert run_cli("--preset", "llama2-13b", "--method", "lora", "--r", "2") == 0
    out = capsys.readouterr().out
    assert "7,823,360 parameters" in out and "llama2-13b-paper gives 6,258,688" in out
    assert (
        run_cli("--preset", "llama2-7b", "--method", "prolora", "--r", "8", "--u", "1", "--m", "7", "--json")
        == 0
    )
    assert json.loads(capsys.readouterr().out)["params"] == 4_999_520


def test_cli_defaults_to_the_library_default_prolora_config_and_says_so(capsys):
    from prolora.tuner.config import PRoLoRAConfig

    library = PRoLoRAConfig()
    assert run_cli("--preset", "llama2-7b", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert {k: result[k] for k in ("method", "r", "u", "m", "n")} == {
        "method": "prolora",
        "r": library.r,
        "u": library.unshared_r,
        "m": library.sharing_rate_a,
        "n": library.sharing_rate_b,
    }
    assert result["params"] == 4_999_520 and result["defaulted"] == ["method", "r", "u", "m", "n"]
    assert run_cli("--preset", "llama2-7b") == 0
    out = capsys.readouterr().out
    assert "prolora r=8 u=1 m=7 n=7" in out and "library's default PRoLoRA config" in out
    assert run_cli("--preset", "llama2-7b", "--method", "lora", "--r", "2") == 0  # everything given: no note
    assert "defaults" not in capsys.readouterr().out
    assert run_cli("--preset", "llama2-7b", "--m", "4", "--json") == 0  # n follows the m given
    result = json.loads(capsys.readouterr().out)
    assert (result["m"], result["n"], result["u"]) == (4, None, library.unshared_r)


def test_cli_budget_json(capsys):
    assert (
        run_cli("--preset", "llama2-7b", "--budget", "lora:2", "--max-r", "8", "--top", "100", "--json") == 0
    )
    fits = json.loads(capsys.readouterr().out)["fits"]
    assert {"r": 8, "u": 1, "m": 7, "n": 7, "params": 4_999_520} in [
        {k: f[k] for k in ("r", "u", "m", "n", "params")} for f in fits
    ]


def test_cli_budget_says_when_it_cuts_the_list_and_keeps_the_train_default(capsys):
    assert run_cli("--budget", "lora:2") == 0  # the embedded SmolLM2-135M's config alone, no download
    out = capsys.readouterr().out
    total = int(out.split()[0])
    rows = [line.split() for line in out.splitlines()[2:]]
    assert total > 10 and "the 10 closest shown (--top N for more)" in out.splitlines()[0]
    assert rows[10] == ["..."] and len(rows) == 12  # 10 closest, a gap, then the default
    assert rows[11][:4] == ["8", "1", "7", "7"] and out.rstrip().endswith("prolora train's default")
    assert run_cli("--budget", "lora:2", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cut"] and result["total_fits"] == total and len(result["fits"]) == 11
    assert {k: result["train_default"][k] for k in ("r", "u", "m", "n", "params")} == {
        "r": 8,
        "u": 1,
        "m": 7,
        "n": 7,
        "params": 612_510,
    }
    assert run_cli("--budget", "lora:2", "--top", "100") == 0
    out = capsys.readouterr().out
    assert "all shown" in out and "..." not in out and len(out.splitlines()) == total + 2


def test_cli_errors_exit_non_zero_without_traceback(capsys):
    assert run_cli("--preset", "llama2-7b", "--method", "prolora", "--r", "8", "--u", "9") == 2
    err = capsys.readouterr().err
    assert "u=9 is invalid" in err and "Traceback" not in err
    for argv in (["--preset", "llama3"], ["--r", "0"], ["--method", "dora"]):
        with pytest.raises(SystemExit) as exc:
            run_cli(*argv)
        assert exc.value.code == 2


def test_every_preset_has_one_counting_family():
    """The one preset → family table (method_presets.COUNTING_FAMILY) covers every preset, into params' families."""
    from prolora import params
    from prolora.method_presets import COUNTING_FAMILY, METHODS, PROLORA_METHODS

    assert set(COUNTING_FAMILY) == set(METHODS)
    assert set(COUNTING_FAMILY.values()) == set(params.METHODS)
    assert {COUNTING_FAMILY[m] for m in PROLORA_METHODS} == set(params.SOLVER_METHODS)
