"""The adapter bank: a mixed batch of PRoLoRA, dense LoRA and base rows in one forward pass.

Each row is checked against that adapter alone in stock PEFT (``PeftModel.from_pretrained``) and against an
independent dense reference (tests/reference.py: explicit rolls and concatenations, merged into W).
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_llama
from reference import ref_delta, ref_stride
from safetensors.torch import load_file, save_file
from test_tuner import LLAMA_TARGETS, _randomise

from prolora import PRoLoRAConfig, get_prolora_model
from prolora.inference import adapter_bank
from prolora.inference.adapter_bank import EXPANDED_CACHE_BYTES, AdapterBank

CONFIGS = {
    "pro": {"r": 8, "unshared_r": 1, "sharing_rate_a": 5, "sharing_rate_b": 3},
    "pro_u0": {
        "r": 4,
        "unshared_r": 0,
        "sharing_rate_a": 2,
        "sharing_rate_b": 2,
        "rotation": False,
        "overrides": {"mlp\\..*": {"r": 6, "unshared_r": 2}},
    },
    "pro_rank": {"r": 6, "unshared_r": 2, "sharing_rate_a": 2, "sharing_rate_b": 2, "share": "rank"},
}


def save_adapters(root, seed=1):
    """PRoLoRA adapters (CONFIGS) and a dense LoRA adapter (r=4, q/v) with random weights, saved in ``root``."""
    from peft import LoraConfig, get_peft_model

    paths = {}
    for i, (name, kw) in enumerate(CONFIGS.items()):
        pm = get_prolora_model(make_tiny_llama(), PRoLoRAConfig(target_modules=LLAMA_TARGETS, **kw))
        _randomise(pm, seed=seed + i)
        pm.save_pretrained(root / name)
        paths[name] = root / name
    torch.manual_seed(seed + 10)
    get_peft_model(
        make_tiny_llama(),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    ).save_pretrained(root / "lora")
    paths["lora"] = root / "lora"
    return paths


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    return save_adapters(tmp_path_factory.mktemp("bank"))


def _peft_logits(path, ids):
    from peft import PeftModel

    return PeftModel.from_pretrained(make_tiny_llama(), str(path)).eval()(ids).logits


def _dense_reference_logits(path, ids):
    """Base model with W += ref ΔW (independent of the library's gathers) for every module of a PRoLoRA adapter."""
    cfg = json.loads((path / "adapter_config.json").read_text())
    tensors = load_file(str(path / "adapter_model.safetensors"))
    model = make_tiny_llama()
    modules = dict(model.named_modules())
    rotate = cfg["rotate_dim"] if cfg["rotation"] else None
    with torch.no_grad():
        for name, (o, h) in cfg["module_shapes"].items():
            v = {
                "r": cfg["r"],
                "unshared_r": cfg["unshared_r"],
                "m": cfg["sharing_rate_a"],
                "n": cfg["sharing_rate_b"],
            }
            if name.split(".")[-2] == "mlp" and cfg["overrides"]:
                v.update(r=6, unshared_r=2)
            r, u, m, n = v["r"], v["unshared_r"], v["m"], v["n"]
            t = [
                tensors[f"base_model.model.{name}.{k}"]
                for k in ("prolora_A0", "prolora_B0", "prolora_A_u", "prolora_B_u")
            ]
            delta = ref_delta(
                *t,
                h,
                o,
                r,
                m,
                n,
                cfg["lora_alpha"],
                rotate,
                cfg["share"],
                ref_stride(r, u, m),
                ref_stride(r, u, n),
            )
            modules[name].weight += delta
    return model(ids).logits


@pytest.mark.parametrize(
    ("cap", "hot_max"), [(0, 4), (EXPANDED_CACHE_BYTES, 4), (EXPANDED_CACHE_BYTES, 3)]
)  # compact only; the four adapters hot (two matmuls each); more distinct adapters than HOT_ADAPTERS
def test_each_row_of_a_mixed_batch_equals_that_adapter_alone(adapters, cap, hot_max, monkeypatch):
    monkeypatch.setattr(adapter_bank, "HOT_ADAPTERS", hot_max)
    model = make_tiny_llama()
    bank = AdapterBank(model, expanded_cache_bytes=cap)
    for name, path in adapters.items():
        bank.load(name, path)
    rows = ["pro", None, "lora", "pro_u0", "pro", "pro_rank", "lora"]
    ids = torch.randint(0, 128, (len(rows), 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        with bank.batch(rows):
            mixed = model(ids).logits
        base = model(ids).logits  # outside the block: the plain base model
        assert torch.equal(base, make_tiny_llama()(ids).logits)
        for i, name in enumerate(rows):
            if name is None:
                torch.testing.assert_close(mixed[i], base[i], rtol=0, atol=1e-5)
                continue
            alone = _peft_logits(adapters[name], ids[i : i + 1])[0]
            assert (alone - base[i]).abs().max() > 1e-2  # the adapter changes the output
            torch.testing.assert_close(mixed[i], alone, rtol=1e-4, atol=1e-4)
            if name != "lora":
                torch.testing.assert_close(
                    mixed[i], _dense_reference_logits(adapters[name], ids[i : i + 1])[0], rtol=1e-4, atol=1e-4
                )
    hot = {name for name in bank.adapters if bank._views[name].dense}
    assert hot == (set(bank.adapters) if cap and hot_max >= 4 else set())


def test_one_adapter_for_all_rows_and_the_expanded_cache_agree(adapters):
    model = make_tiny_llama()
    ids = torch.randint(0, 128, (4, 5), generator=torch.Generator().manual_seed(4))
    rows = ["pro", "pro_u0", "pro", "pro_u0"]
    expected = torch.cat([_peft_logits(adapters[name], ids[i : i + 1]) for i, name in enumerate(rows)])
    one = sum(
        4 * layer.in_features * 8 + 4 * layer.out_features * 8
        for name, layer in model.named_modules()
        if name.endswith(tuple(LLAMA_TARGETS))
    )  # expanded A and B of "pro" (r = 8 everywhere)
    for cap, pro_dense in (
        (0, False),
        (10**9, True),
        (one, True),
        (one - 1, False),
    ):  # off, all, just fits, not
        bank = AdapterBank(model, expanded_cache_bytes=cap)
        for name in ("pro", "pro_u0"):
            bank.load(name, adapters[name])
        with torch.no_grad(), bank.batch(rows):
            torch.testing.assert_close(model(ids).logits, expected, rtol=1e-4, atol=1e-4)
        with torch.no_grad(), bank.batch(["pro"] * 4):
            torch.testing.assert_close(
                model(ids).logits, _peft_logits(adapters["pro"], ids), rtol=1e-4, atol=1e-4
            )
        assert bank.expanded_bytes <= cap and (bank.expanded_bytes > 0) == (cap > 0)
        assert bank._views["pro"].dense == pro_dense
        bank.close()


def test_resident_bytes_are_the_compact_parameter_bytes(adapters):
    bank = AdapterBank(make_tiny_llama())
    for name, path in adapters.items():
        adapter = bank.load(name, path)
        on_disk = sum(
            t.numel() * t.element_size() for t in load_file(str(path / "adapter_model.safetensors")).values()
        )
        assert adapter.nbytes == on_disk
        assert adapter.kind == ("lora" if name == "lora" else "prolora")
    assert bank.resident_bytes == sum(a.nbytes for a in bank.adapters.values())
    bank.remove("pro")
    assert "pro" not in bank.adapters
    with pytest.raises(KeyError, match="not loaded"):
        bank.plan(["pro"])


def test_bad_adapters_are_refused_with_the_reason(adapters, tmp_path):
    bank = AdapterBank(make_tiny_llama(hidden_size=36, num_attention_heads=6, num_key_value_heads=2))
    with pytest.raises(ValueError, match="another base model"):
        bank.load("pro", adapters["pro"])
    bank = AdapterBank(make_tiny_llama())
    with pytest.raises(FileNotFoundError):
        bank.load("x", tmp_path / "missing")
    bank.load("pro", adapters["pro"])
    with pytest.raises(ValueError, match="already loaded"):
        bank.load("pro", adapters["pro"])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((adapters["pro"] / "adapter_config.json").read_text())
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="safetensors"):
        bank.load("broken", broken)
    tensors = load_file(str(adapters["lora"] / "adapter_model.safetensors"))
    lora_bad = tmp_path / "lora_bad"
    lora_bad.mkdir()
    (lora_bad / "adapter_config.json").write_text((adapters["lora"] / "adapter_config.json").read_text())
    save_file(
        {k: v[:, :3].contiguous() if "lora_A" in k else v for k, v in tensors.items()},
        str(lora_bad / "adapter_model.safetensors"),
    )
    with pytest.raises(ValueError, match="another base model"):
        bank.load("lora_bad", lora_bad)
    assert list(bank.adapters) == ["pro"]


def test_a_recycled_plan_reuses_its_buffers_and_stays_correct(adapters):
    model = make_tiny_llama()
    bank = AdapterBank(model, expanded_cache_bytes=0)  # the compact path stacks the rows' tensors
    for name in ("pro", "pro_u0", "lora"):
        bank.load(name, adapters[name])
    bank.load("pro_copy", adapters["pro"])  # the same configuration: one layout, stacked with "pro"
    ids = torch.randint(0, 128, (4, 6), generator=torch.Generator().manual_seed(5))
    first = bank.plan(["pro", "pro_copy", "pro", "lora"])
    buffers = [b.data_ptr() for b in first.buffers]
    rows = ["pro_copy", "pro", None, "pro_u0"]
    second = bank.plan(rows, recycle=first)
    assert buffers and [b.data_ptr() for b in second.buffers] == buffers  # the same memory, refilled
    with pytest.raises(ValueError, match="recycled"):  # a stale handle is refused, never silently wrong
        bank.batch(first).__enter__()
    with torch.no_grad(), bank.batch(second):
        mixed = model(ids).logits
    for i, name in enumerate(rows):
        path = adapters[name.removesuffix("_copy")] if name else None
        alone = _peft_logits(path, ids[i : i + 1])[0] if name else make_tiny_llama()(ids[i : i + 1]).logits[0]
        torch.testing.assert_close(mixed[i], alone, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["prolora", "lora"])
def test_rslora_adapters_are_served_with_their_own_scaling(kind, tmp_path):
    """use_rslora scales ΔW by lora_alpha/√r: the bank gets it from the one layout builder
    (prolora.tuner.layout), as the layer does (it once used lora_alpha/r: 0.3 off in the logits)."""
    from peft import LoraConfig, get_peft_model

    if kind == "prolora":
        config = PRoLoRAConfig(
            r=8,
            unshared_r=1,
            sharing_rate_a=4,
            sharing_rate_b=4,
            target_modules=["q_proj", "v_proj"],
            use_rslora=True,
        )
        model = get_prolora_model(make_tiny_llama(), config)
        _randomise(model)
    else:
        torch.manual_seed(2)
        config = LoraConfig(
            r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_rslora=True, init_lora_weights=False
        )
        model = get_peft_model(make_tiny_llama(), config)
    model.save_pretrained(tmp_path)
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(6))
    base = make_tiny_llama()
    bank = AdapterBank(base)
    bank.load("a", tmp_path)
    with torch.no_grad(), bank.batch(["a", "a"]):
        served = base(ids).logits
    expected = _peft_logits(tmp_path, ids)
    assert (expected - base(ids).logits).abs().max() > 1e-2
    torch.testing.assert_close(served, expected, rtol=1e-4, atol=1e-4)
