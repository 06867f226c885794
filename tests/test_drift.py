"""Drift cannot go unnoticed: served == peft == dense reference, for every option that decides ΔW.

The matrix is generated from :data:`prolora.tuner.saved.DELTA_W_FIELDS`: each field has at least one case that
sets it away from its default (``test_every_config_field_is_classified`` fails when a field is added to the
config without being placed in ``DELTA_W_FIELDS`` or ``NOT_DELTA_W_FIELDS``, and
``test_every_delta_w_field_has_a_case`` when a ΔW field has no case here), plus dense peft LoRA (plain and
rsLoRA). For each case a saved adapter is run on every path:

* ``peft`` — stock ``PeftModel.from_pretrained`` after ``import prolora`` (what ``generate``/``chat`` load);
* ``served`` — ``prolora serve``'s :class:`~prolora.inference.adapter_bank.AdapterBank` (one adapter for all
  rows, and every case in one mixed batch);
* ``export`` — the vLLM plugin's dense copy (:func:`~prolora.inference.vllm_plugin.dense_lora`, i.e.
  ``prolora export``) loaded by stock peft as a LoRA adapter;

against an independent dense reference: the base model with ``W += s·B·A`` merged, A and B built by
``tests/reference.py`` (explicit rolls and concatenations) and the per-module values (overrides, strides,
scaling) resolved here from the raw ``adapter_config.json``, not by the library. Logits agree within 1e-4
(fp32) and greedy tokens are equal. Tiny random models, one torch thread: the file takes about 21 s of CPU
(74 tests; 57 s wall on a shared, busy 2-core machine).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest
import torch
from conftest import make_tiny_gpt2, make_tiny_llama
from reference import ref_A, ref_B, ref_stride
from safetensors.torch import load_file
from test_tuner import _randomise

from prolora import PRoLoRAConfig, get_prolora_model
from prolora.inference import vllm_plugin
from prolora.inference.adapter_bank import AdapterBank
from prolora.tuner.saved import DELTA_W_FIELDS, NOT_DELTA_W_FIELDS

QV_DOWN = ["q_proj", "v_proj", "down_proj"]
BASE = {"r": 8, "unshared_r": 1, "sharing_rate_a": 4, "sharing_rate_b": 4, "target_modules": QV_DOWN}

# ΔW field → cases (id → PRoLoRAConfig keywords over BASE). "gpt2" cases run on tiny GPT-2 (Conv1D bases).
CASES: dict[str, dict[str, dict]] = {
    "r": {"r4": {"r": 4}},
    "unshared_r": {"u0": {"unshared_r": 0}, "u_eq_r": {"unshared_r": 8}},
    "sharing_rate_a": {"m_non_divisible": {"sharing_rate_a": 7}},  # h = 48, 80: 7 divides neither
    "sharing_rate_b": {"n_non_divisible": {"sharing_rate_b": 5}},  # o = 48, 16: 5 divides neither
    "stride_a": {"stride_a3": {"stride_a": 3}},
    "stride_b": {"stride_b2": {"stride_b": 2, "stride_a": 0}},
    "lora_alpha": {"odd_alpha": {"lora_alpha": 7}, "fractional_alpha": {"lora_alpha": 2.5}},
    "use_rslora": {"rslora": {"use_rslora": True}},
    "rotation": {"rotation_off": {"rotation": False}},
    "share": {"share_rank": {"share": "rank", "sharing_rate_a": 2, "sharing_rate_b": 3}},
    "rotate_dim": {"rotate_hidden": {"rotate_dim": "hidden"}},
    "overrides": {
        "overrides": {
            "overrides": {
                "mlp\\..*": {"r": 6, "unshared_r": 2, "sharing_rate_a": 3, "lora_alpha": 5},
                "v_proj": {"stride_b": 1, "sharing_rate_b": 2},
            },
            "use_rslora": True,
        }
    },
    "module_shapes": {
        "all_seven": {
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        }
    },
    "fan_in_fan_out": {"gpt2": {"target_modules": ["c_attn", "c_proj"], "sharing_rate_a": 5}},
    "target_modules": {"targets_gate_up": {"target_modules": ["gate_proj", "up_proj"]}},
    "exclude_modules": {
        "exclude_k": {"target_modules": ["q_proj", "k_proj", "v_proj"], "exclude_modules": ["k_proj"]}
    },
    "layers_to_transform": {"layer1_only": {"layers_to_transform": [1]}},
    "layers_pattern": {"pattern_layers0": {"layers_to_transform": [0], "layers_pattern": "layers"}},
}
LORA_CASES = {"lora": {"r": 4, "lora_alpha": 8}, "lora_rslora": {"r": 4, "lora_alpha": 8, "use_rslora": True}}
CASE_IDS = [case for cases in CASES.values() for case in cases] + list(LORA_CASES)
PROMPT = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(11))
NEW_TOKENS = 4
pytestmark = pytest.mark.usefixtures("one_thread")


def _kwargs(case: str) -> dict:
    return next({**BASE, **cases[case]} for cases in CASES.values() if case in cases)


def _base(case: str):
    return make_tiny_gpt2() if case == "gpt2" else make_tiny_llama()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Case id → the saved adapter folder (built on first use, shared by every path)."""
    root = tmp_path_factory.mktemp("drift")
    paths: dict = {}

    def get(case: str):
        if case not in paths:
            if case in LORA_CASES:
                from peft import LoraConfig, get_peft_model

                torch.manual_seed(3)
                config = LoraConfig(target_modules=QV_DOWN, init_lora_weights=False, **LORA_CASES[case])
                model = get_peft_model(make_tiny_llama(), config)
                with torch.no_grad():
                    for name, p in model.named_parameters():
                        if "lora_" in name:
                            p.mul_(4)  # visible in the logits
            else:
                model = get_prolora_model(_base(case), PRoLoRAConfig(**_kwargs(case)))
                _randomise(model, seed=len(paths) + 1)
            model.save_pretrained(root / case)
            paths[case] = root / case
        return paths[case]

    return get


# ------------------------------------------------------------------------------- independent reference
def _values(cfg: dict, module: str) -> dict:
    """r, u, m, n, strides, alpha of ``module``: the config's, then the first override whose pattern
    matches the end of the module name (PEFT's rank_pattern rule), written out here."""
    keys = ("r", "unshared_r", "sharing_rate_a", "sharing_rate_b", "stride_a", "stride_b", "lora_alpha")
    values = {k: cfg[k] for k in keys}
    for pattern, override in cfg.get("overrides", {}).items():
        if re.match(rf"(.*\.)?{pattern}$", module):
            values.update(override)
            break
    return values


def _reference_deltas(path) -> dict[str, torch.Tensor]:
    """Module → ΔW (o, h) from the raw files: reference.py's A and B, the scaling written out."""
    cfg = json.loads((path / "adapter_config.json").read_text())
    tensors = load_file(str(path / "adapter_model.safetensors"))
    out = {}
    if cfg["peft_type"] == "LORA":
        for key in (k for k in tensors if k.endswith("lora_A.weight")):
            a, b = tensors[key], tensors[key.replace("lora_A", "lora_B")]
            r = a.shape[0]
            scale = cfg["lora_alpha"] / (math.sqrt(r) if cfg["use_rslora"] else r)
            out[key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")] = scale * b @ a
        return out
    rotate = cfg["rotate_dim"] if cfg["rotation"] else None
    for module, (o, h) in cfg["module_shapes"].items():
        v = _values(cfg, module)
        r, u, m, n = v["r"], v["unshared_r"], v["sharing_rate_a"], v["sharing_rate_b"]
        s_a = ref_stride(r, u, m) if v["stride_a"] is None else v["stride_a"]
        s_b = ref_stride(r, u, n) if v["stride_b"] is None else v["stride_b"]
        key = f"base_model.model.{module}."
        a0, b0, a_u, b_u = (
            tensors[key + t] for t in ("prolora_A0", "prolora_B0", "prolora_A_u", "prolora_B_u")
        )
        a = ref_A(a0, a_u, h, r, m, s_a, rotate, cfg["share"])
        b = ref_B(b0, b_u, o, r, n, s_b, rotate, cfg["share"])
        scale = v["lora_alpha"] / (math.sqrt(r) if cfg.get("use_rslora") else r)
        out[module] = scale * b @ a
    return out


def _reference_model(case, path):
    model = _base(case)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for module, delta in _reference_deltas(path).items():
            layer = modules[module]
            layer.weight += delta.t() if type(layer).__name__ == "Conv1D" else delta
    return model


def _greedy(model):
    kwargs = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        return model.generate(PROMPT, attention_mask=torch.ones_like(PROMPT), **kwargs)[:, PROMPT.shape[1] :]


@pytest.fixture(scope="module")
def reference(saved):
    """Case id → (logits, greedy tokens) of the dense reference."""
    cache: dict = {}

    def get(case: str):
        if case not in cache:
            model = _reference_model(case, saved(case))
            with torch.no_grad():
                logits = model(PROMPT).logits
            base = _base(case)
            with torch.no_grad():
                assert (
                    logits - base(PROMPT).logits
                ).abs().max() > 1e-2  # the adapter shows: the test can fail
            cache[case] = logits, _greedy(model)
        return cache[case]

    return get


# ------------------------------------------------------------------------------------------- the paths
def _peft(case, path):
    from peft import PeftModel

    return PeftModel.from_pretrained(_base(case), str(path)).eval()


def _served(case, path):
    model = _base(case)
    bank = AdapterBank(model)
    bank.load("a", path)
    return model, bank


def _export(case, path, tmp_path):
    """The vLLM plugin's dense copy (prolora export), loaded by stock peft as a LoRA adapter."""
    dense = vllm_plugin.dense_lora(path, tmp_path / "cache")
    assert json.loads((dense / "adapter_config.json").read_text())["peft_type"] == "LORA"
    return _peft(case, dense)


def _check(logits, tokens, expected):
    ref_logits, ref_tokens = expected
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(tokens, ref_tokens)


@pytest.mark.parametrize("case", CASE_IDS)
@pytest.mark.parametrize("route", ["peft", "served", "export"])
def test_every_path_equals_the_dense_reference(case, route, saved, reference, tmp_path):
    path = saved(case)
    if route == "export" and case in LORA_CASES:
        assert vllm_plugin.dense_lora(path, tmp_path / "cache") == path  # dense LoRA passes through as is
        route = "peft"
    if route == "served":
        model, bank = _served(case, path)
        with torch.no_grad(), bank.batch(["a"] * PROMPT.shape[0]):
            logits, tokens = model(PROMPT).logits, _greedy(model)
        bank.close()
    else:
        model = _peft(case, path) if route == "peft" else _export(case, path, tmp_path)
        with torch.no_grad():
            logits = model(PROMPT).logits
        tokens = _greedy(model)
    _check(logits, tokens, reference(case))


def test_every_case_in_one_mixed_served_batch(saved, reference):
    """All Llama cases resident in one bank, one batch row each (plus a base row), one forward."""
    cases = [c for c in CASE_IDS if c != "gpt2"]
    model = make_tiny_llama()
    bank = AdapterBank(model)
    for case in cases:
        bank.load(case, saved(case))
    rows = [*cases, None]
    ids = PROMPT[:1].expand(len(rows), -1)
    with torch.no_grad():
        with bank.batch(rows):
            mixed = model(ids).logits
        base = model(ids[:1]).logits[0]
    for i, case in enumerate(cases):
        torch.testing.assert_close(mixed[i], reference(case)[0][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mixed[-1], base, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- the field lists
def test_every_config_field_is_classified():
    fields = {f.name for f in dataclasses.fields(PRoLoRAConfig)}
    assert not set(DELTA_W_FIELDS) & set(NOT_DELTA_W_FIELDS)
    assert fields == set(DELTA_W_FIELDS) | set(NOT_DELTA_W_FIELDS)


def test_every_delta_w_field_has_a_case():
    assert set(CASES) == set(DELTA_W_FIELDS)
    for field, cases in CASES.items():  # each case really sets its field away from BASE (or the default)
        default = BASE.get(field, getattr(PRoLoRAConfig(), field))
        for case in cases:
            assert field in ("module_shapes", "fan_in_fan_out") or _kwargs(case)[field] != default, case


# ----------------------------------------------------------------- one refusal, the same on every path
def _edit_target_modules(saved, tmp_path):
    import shutil

    edited = tmp_path / "edited"
    shutil.copytree(saved("r4"), edited)
    cfg = json.loads((edited / "adapter_config.json").read_text())
    cfg["target_modules"] = ["q_proj", "v_proj"]  # down_proj dropped by hand; the weights still hold it
    (edited / "adapter_config.json").write_text(json.dumps(cfg))
    return edited


@pytest.mark.parametrize("route", ["reader", "peft", "export", "served", "vllm"])
def test_an_edited_config_is_refused_on_every_path_naming_the_field(route, saved, tmp_path):
    """Before: export and the server's load route accepted it, generate refused it for a wrong reason."""
    from peft import PeftModel

    import prolora

    edited = _edit_target_modules(saved, tmp_path)
    load = {
        "reader": lambda: prolora.format.read_adapter(edited),
        "peft": lambda: PeftModel.from_pretrained(make_tiny_llama(), str(edited)),
        "export": lambda: prolora.export_lora(edited, tmp_path / "out"),
        "served": lambda: AdapterBank(make_tiny_llama()).load("a", edited),
        "vllm": lambda: vllm_plugin.dense_lora(edited, tmp_path / "cache"),
    }[route]
    with pytest.raises(ValueError, match=r"target_modules: adapter_config.json has \['q_proj', 'v_proj'\]"):
        load()
